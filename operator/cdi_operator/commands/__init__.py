"""The `cdi` commands, above the operator and the runner: `common` (exit codes, bad input, logs, progress, the
printed result), `sync` (`cdi sync -f`), `in_cluster` (`cdi sync --in-cluster`) and `demo` (`cdi demo`). The
parser and the dispatch are cli.py; `cdi operator` is cdi_operator.controller.main.run."""

"""The API models: the single source of the CRDs and of what `cdi sync -f` accepts."""

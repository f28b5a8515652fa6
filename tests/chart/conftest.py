"""The chart tests render charts/cdi-operator with the helm of hack/controlplane (tests/e2e/harness/helm.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # the e2e harness package, `harness`

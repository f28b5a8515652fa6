"""Test harness for the e2e tests: a local Kubernetes control plane and a local kubelet.

See README-controlplane.md at the repository root.
"""

from .controlplane import Cluster, ControlPlaneError, LocalControlPlane, find_binaries
from .kubelet import KubeletConfig, LocalKubelet

__all__ = [
    "Cluster",
    "ControlPlaneError",
    "KubeletConfig",
    "LocalControlPlane",
    "LocalKubelet",
    "find_binaries",
]

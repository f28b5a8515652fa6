"""The Kubernetes layer: client configuration (`config`), its own errors (`errors`), Secret values (`secrets`), the
blocking client (`client.Kube`, the runner's) and the asyncio one (`aio.KubeApi`, the operator's).

Nothing above this package imports `kubernetes.client` or looks at an HTTP status: it catches `NotFound`,
`Conflict`, `Forbidden`, … from `errors`, as kopf's users do with kopf's.
"""

from cdi_operator.kube.client import Kube
from cdi_operator.kube.config import KubeConfig, load_config
from cdi_operator.kube.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InvalidSecret,
    KubeError,
    NotFound,
    Unanswered,
    Unauthorized,
)

__all__ = [
    "ConfigError",
    "Conflict",
    "Forbidden",
    "InvalidSecret",
    "Kube",
    "KubeConfig",
    "KubeError",
    "NotFound",
    "Unanswered",
    "Unauthorized",
    "load_config",
]

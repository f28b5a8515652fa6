"""The one JSON type alias: a JSON object as Python holds it (a Kubernetes object, manifest, patch or schema)."""

from typing import Any, TypeAlias

JSON: TypeAlias = dict[str, Any]

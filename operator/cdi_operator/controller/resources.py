"""Requests and limits of the runner container: the chart's `runner.resources`, then the integration's own.

`$CDI_RUNNER_RESOURCES` (JSON, as the chart renders `runner.resources`) is the default; a key of
`spec.runner.resources.requests` or `.limits` replaces the same key of the default, the others stay.
"""

from __future__ import annotations

import json

from pydantic import ValidationError

from cdi_operator.api.json import JSON
from cdi_operator.api.models import ResourceRequirements

ENV_RUNNER_RESOURCES = "CDI_RUNNER_RESOURCES"


class ResourcesError(ValueError):
    """$CDI_RUNNER_RESOURCES is not a resources object; the message names the fix."""


def parse_default(raw: str | None) -> ResourceRequirements | None:
    if raw is None or not raw.strip():
        return None
    try:
        return ResourceRequirements.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise ResourcesError(f"${ENV_RUNNER_RESOURCES} is not JSON ({exc.msg}); give e.g. {_EXAMPLE}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ResourcesError(f"${ENV_RUNNER_RESOURCES}: {where}: {error['msg']}; give e.g. {_EXAMPLE}") from None


_EXAMPLE = '{"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}'


def merged(default: ResourceRequirements | None, override: ResourceRequirements | None) -> JSON:
    """The container's `resources`: empty when neither sets anything."""
    result: JSON = {}
    for part in ("requests", "limits"):
        values: dict[str, str] = {}
        for source in (default, override):
            chosen = getattr(source, part, None) if source is not None else None
            if chosen is not None:
                values.update(chosen.model_dump(by_alias=True, exclude_none=True))
        if values:
            result[part] = values
    return result

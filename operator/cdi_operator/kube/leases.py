"""The timing rules of a coordination.k8s.io Lease, shared by the operator's leader election and a run's claim.

Times are the Lease's own fields (`renewTime` + `leaseDurationSeconds`), compared to this machine's clock, as
client-go's leader election does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cdi_operator.api.json import JSON


def lease_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def micro_time(moment: datetime) -> str:
    """A Lease MicroTime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def available(spec: JSON, identity: str, now: datetime) -> bool:
    """May `identity` take (or keep) a Lease whose spec is `spec`?"""
    holder = spec.get("holderIdentity")
    if not holder or holder == identity:
        return True
    renewed = lease_time(spec.get("renewTime")) or lease_time(spec.get("acquireTime"))
    duration = int(spec.get("leaseDurationSeconds") or 0)
    return renewed is None or renewed + timedelta(seconds=duration) < now

"""Who may take the operator's leader Lease."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cdi_operator.controller.leader import available

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def held_by(holder: str | None, renewed_ago: float, duration: int = 15) -> dict[str, object]:
    renewed = (NOW - timedelta(seconds=renewed_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": duration}


def test_a_lease_renewed_within_its_duration_belongs_to_its_holder() -> None:
    assert not available(held_by("other", renewed_ago=5), "me", NOW)
    assert available(held_by("me", renewed_ago=5), "me", NOW)


def test_an_expired_or_released_lease_can_be_taken() -> None:
    assert available(held_by("other", renewed_ago=16), "me", NOW)
    assert available(held_by(None, renewed_ago=1), "me", NOW)
    assert available({}, "me", NOW)

"""The pure parts of Braze's CDI management API as the operator serves it: cursors and pages, the JSON shapes, the
next scheduled run from schedule and time zone, the per-caller rate limits and the bearer token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cdi_operator.api.schedule import next_run
from cdi_operator.controller import management_views as views
from cdi_operator.controller.management_api import ApiError, RateLimiter, bearer_token

UID = "0b6f3c2e-4d5a-4b7e-9c1d-2e3f4a5b6c7d"


def integration(namespace: str, name: str, **status: object) -> dict[str, object]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": UID},
        "spec": {
            "dataType": "customAttributes",
            "schedule": "0 * * * *",
            "timeZone": "UTC",
            "contactEmails": ["a@example.com", "b@example.com"],
            "credentialRef": {"name": "whc"},
        },
        "status": status,
    }


def run(minute: int, result: str = "Success", **extra: object) -> dict[str, object]:
    start = datetime(2026, 12, 1, 10, minute, 0, 5000, tzinfo=UTC)
    return {
        "trigger": "schedule",
        "job": f"job-{minute:02d}",
        "startedAt": start.isoformat(),
        "finishedAt": (start + timedelta(seconds=30)).isoformat(),
        "result": result,
        "rowsSynced": minute,
        "rowsFailed": 1,
        "watermark": "2026-12-01T09:00:00Z",
        **extra,
    }


def walk(items: list[str], newest_first: bool = False) -> list[views.Page[str]]:
    pages = [views.page(items, lambda s: (s,), None, "t", "scope", newest_first=newest_first)]
    while pages[-1].next:
        pages.append(views.page(items, lambda s: (s,), pages[-1].next, "t", "scope", newest_first=newest_first))
    return pages


def test_pages_of_ten_forward_and_back() -> None:
    items = [f"i{n:02d}" for n in range(23)]
    pages = walk(items)
    assert [len(p.items) for p in pages] == [10, 10, 3]
    assert [i for p in pages for i in p.items] == items
    assert pages[0].prev is None and pages[-1].next is None
    back = views.page(items, lambda s: (s,), pages[2].prev, "t", "scope", newest_first=False)
    assert back.items == pages[1].items
    first = views.page(items, lambda s: (s,), back.prev, "t", "scope", newest_first=False)
    assert first.items == pages[0].items and first.prev is None


def test_newest_first_pages_do_not_repeat_when_items_arrive() -> None:
    items = [f"r{n:02d}" for n in range(15, 0, -1)]  # newest first
    first = views.page(items, lambda s: (s,), None, "t", "scope", newest_first=True)
    newer = ["r17", "r16", *items]  # two runs started since
    second = views.page(newer, lambda s: (s,), first.next, "t", "scope", newest_first=True)
    assert first.items == items[:10] and second.items == items[10:]


def test_one_page_has_no_link() -> None:
    result = views.page(["a", "b"], lambda s: (s,), None, "t", "", newest_first=False)
    assert views.link_header("/cdi/integrations", result) is None
    two = walk([f"i{n:02d}" for n in range(12)])
    assert views.link_header("/cdi/integrations", two[0]) == f'</cdi/integrations?cursor={two[0].next}>; rel="next"'
    link = views.link_header("/x", two[1])
    assert link == f'</x?cursor={two[1].prev}>; rel="prev"'


@pytest.mark.parametrize(
    "cursor", ["", "!!!", "bm90IGpzb24", "W10", views.encode_cursor("t", "other", "after", ("a",))]
)
def test_invalid_cursor(cursor: str) -> None:
    with pytest.raises(views.InvalidCursor):
        views.page(["a"], lambda s: (s,), cursor, "t", "scope", newest_first=False)


def test_cursor_of_another_list_is_invalid() -> None:
    cursor = views.encode_cursor(views.KIND_INTEGRATIONS, "", "after", ("ns", "a"))
    with pytest.raises(views.InvalidCursor):
        views.decode_cursor(cursor, views.KIND_RUNS, UID)
    assert views.decode_cursor(cursor, views.KIND_INTEGRATIONS, "") == ("after", ("ns", "a"))


def test_wire_time_has_six_fractional_digits_and_z() -> None:
    assert views.wire_time("2026-12-01T21:17:49Z") == "2026-12-01T21:17:49.000000Z"
    assert views.wire_time("2026-12-01T22:17:49.19+01:00") == "2026-12-01T21:17:49.190000Z"
    assert views.wire_time(datetime(2026, 12, 1, 21, 17, 49, 190000)) == "2026-12-01T21:17:49.190000Z"
    assert views.wire_time(None) is None and views.wire_time("yesterday") is None


def test_runs_newest_first_with_the_run_in_progress() -> None:
    running = run(50, "Running", finishedAt=None, job="job-now")
    status = {"runs": [run(40), run(30, "Partial"), run(20, "LimitExceeded")], "lastSync": running}
    results = [views.job_result(r) for r in views.runs_newest_first(status)]
    assert [r["job_status"] for r in results] == ["running", "success", "partial", "error"]
    assert results[0]["sync_finish_time"] is None
    assert results[1] == {
        "job_status": "success",
        "sync_start_time": "2026-12-01T10:40:00.005000Z",
        "sync_finish_time": "2026-12-01T10:40:30.005000Z",
        "last_timestamp_synced": "2026-12-01T09:00:00.000000Z",
        "rows_synced": 40,
        "rows_failed_with_errors": 1,
    }
    # a Skipped record (another run held the integration) is no sync: not listed
    skipped = {**run(45, "Skipped"), "runId": "skip"}
    assert [r["job"] for r in views.runs_newest_first({"runs": [skipped, run(40)]})] == ["job-40"]
    # a finished lastSync already recorded in runs is not shown twice
    assert len(views.runs_newest_first({"runs": [run(40)], "lastSync": run(40)})) == 1


def test_integration_shape() -> None:
    now = datetime(2026, 12, 1, 10, 41, tzinfo=UTC)
    obj = integration(
        "data",
        "users",
        phase="Active",
        watermark={"updatedAt": "2026-12-01T09:00:00Z"},
        runs=[run(30), run(40, "Partial")],
    )
    assert views.integration_result(obj, "redshift", now) == {
        "integration_id": UID,
        "app_group_id": "data",
        "integration_name": "users",
        "integration_type": "customAttributes",
        "integration_status": "active",
        "contact_emails": "a@example.com,b@example.com",
        "last_updated_at": "2026-12-01T09:00:00.000000Z",
        "warehouse_type": "redshift",
        "last_job_start_time": "2026-12-01T10:40:00.005000Z",
        "last_job_status": "partial",
        "next_scheduled_run": "2026-12-01T11:00:00.000000Z",
    }
    paused = views.integration_result(integration("data", "users", phase="Suspended"), None, now)
    assert paused["integration_status"] == "paused" and paused["next_scheduled_run"] is None
    assert paused["last_job_status"] is None and paused["last_job_start_time"] is None
    draft = views.integration_result(integration("data", "users"), None, now)
    assert draft["integration_status"] == "draft"


def test_next_run_follows_the_time_zone_and_summer_time() -> None:
    # 02:30 in Berlin does not exist on 29 March 2026 (clocks jump from 02:00 to 03:00): no run that day
    after = datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
    assert next_run("30 2 * * *", "Europe/Berlin", after) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    assert next_run("*/15 * * * *", "Europe/Berlin", datetime(2026, 3, 29, 0, 50, tzinfo=UTC)) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    assert next_run("0 9 * * *", "America/New_York", datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) == datetime(
        2026, 7, 1, 13, 0, tzinfo=UTC
    )
    assert next_run("@daily", "Asia/Tokyo", datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) == datetime(
        2026, 7, 1, 15, 0, tzinfo=UTC
    )


def test_integration_ids_are_uids() -> None:
    assert views.valid_integration_id(UID)
    assert not views.valid_integration_id("users") and not views.valid_integration_id(UID.upper())


def test_rate_limits_per_caller_and_endpoint() -> None:
    now = [1000.0]
    limiter = RateLimiter(clock=lambda: now[0])
    for _ in range(20):
        headers = limiter.check("sync", "system:serviceaccount:a:bot")
    assert headers["X-RateLimit-Remaining"] == "0" and headers["X-RateLimit-Limit"] == "20"
    with pytest.raises(ApiError) as refused:
        limiter.check("sync", "system:serviceaccount:a:bot")
    assert refused.value.status == 429 and refused.value.headers["X-RateLimit-Reset"] == "1060"
    limiter.check("sync", "system:serviceaccount:b:bot")  # another caller has its own budget
    limiter.check("status", "system:serviceaccount:a:bot")  # and so has another endpoint
    now[0] += 60
    assert limiter.check("sync", "system:serviceaccount:a:bot")["X-RateLimit-Remaining"] == "19"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        bearer_token(header)
    assert refused.value.status == 401


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def" and bearer_token("bearer  abc ") == "abc"

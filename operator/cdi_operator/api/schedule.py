"""Checks on a CronJob schedule that the apiserver cannot make: syntax Kubernetes accepts, and spacing.

Braze lets a sync run at most every 15 minutes and at least once a month; we hold schedules to the same bounds
so that a schedule that works here also means the same to someone coming from Braze.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

MIN_INTERVAL = timedelta(minutes=15)
MAX_INTERVAL = timedelta(days=31)

# The macros Kubernetes' CronJob accepts (robfig/cron's standard parser).
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_NAMES = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC|SUN|MON|TUE|WED|THU|FRI|SAT"
_FIELD = re.compile(rf"^(?:[0-9*?/,\-]|{_NAMES})+$", re.IGNORECASE)
# The bounds of robfig/cron (Kubernetes' parser), which are narrower than croniter's: day-of-week is 0-6 only.
_BOUNDS = ((0, 59, "minute"), (0, 23, "hour"), (1, 31, "day-of-month"), (1, 12, "month"), (0, 6, "day-of-week"))
_MONTH_NAMES = {n: i for i, n in enumerate(_NAMES.split("|")[:12], start=1)}
_DAY_NAMES = {n: i for i, n in enumerate(_NAMES.split("|")[12:])}
# Enough days to see every gap of a schedule that fires at least monthly, leap days included.
_HORIZON_DAYS = 366 * 4 + 62


class ScheduleError(ValueError):
    """The schedule is not one Kubernetes would run, or runs too often or too rarely."""


def validate_time_zone(name: str) -> str:
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise ScheduleError(f"timeZone {name!r} is not an IANA time zone name; use e.g. 'UTC' or 'Europe/Berlin'")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: a directory such as 'Europe'
        raise ScheduleError(
            f"timeZone {name!r} is not in the IANA time zone database; use e.g. 'UTC' or 'America/New_York'"
        ) from exc
    return name


def _expand(schedule: str) -> tuple[list[int], list[int], set[int], set[int], set[int], bool, bool]:
    text = schedule.strip()
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError("schedule must not set TZ= or CRON_TZ=; put the zone in spec.timeZone instead")
    text = _MACROS.get(text.lower(), text)
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(
            f"schedule {schedule!r} has {len(fields)} fields; write five: minute hour day-of-month month "
            "day-of-week, e.g. '0 */6 * * *'"
        )
    for field in fields:
        if not _FIELD.match(field):
            raise ScheduleError(
                f"schedule field {field!r} uses syntax Kubernetes' CronJob does not accept "
                "(no L, W or #); use numbers, names, '*', ',', '-' and '/'"
            )
    for index, field in enumerate(fields):
        _check_kubernetes_ranges(schedule, field, index)
    try:
        expanded, _ = croniter.expand(text.replace("?", "*"))
    except (CroniterError, ValueError) as exc:
        raise ScheduleError(f"schedule {schedule!r} is not a valid cron expression: {exc}") from exc

    def values(index: int, low: int, high: int) -> list[int]:
        field = expanded[index]
        return list(range(low, high + 1)) if field == ["*"] else sorted({int(v) for v in field})

    minutes = values(0, 0, 59)
    hours = values(1, 0, 23)
    days = set(values(2, 1, 31))
    months = set(values(3, 1, 12))
    weekdays = {v % 7 for v in values(4, 0, 7)}
    # robfig/cron ANDs the two day fields when either is written as '*' or '?' (without a step > 1), else ORs them;
    # croniter's expansion cannot tell '1-31' from '*', so look at the text.
    dom_any = _is_star(fields[2])
    dow_any = _is_star(fields[4])
    return minutes, hours, days, months, weekdays, dom_any, dow_any


def _is_star(field: str) -> bool:
    for part in field.split(","):
        low, _, step = part.partition("/")
        if low.split("-")[0] in ("*", "?") and (not step or step == "1"):
            return True
    return False


def _check_kubernetes_ranges(schedule: str, field: str, index: int) -> None:
    """Reject what croniter accepts but Kubernetes does not: day-of-week 7 and backwards ranges like 'FRI-MON'."""
    low_bound, high_bound, what = _BOUNDS[index]
    names = _MONTH_NAMES if index == 3 else _DAY_NAMES if index == 4 else {}
    for part in field.split(","):
        bounds = part.partition("/")[0].split("-")
        if bounds[0] in ("*", "?"):
            continue
        values = [names.get(b.upper(), int(b) if b.isdigit() else None) for b in bounds]
        if any(v is not None and not low_bound <= v <= high_bound for v in values):
            hint = " (Sunday is 0; 7 is not accepted)" if index == 4 else ""
            raise ScheduleError(
                f"schedule {schedule!r}: {what} {part!r} is out of range; Kubernetes accepts "
                f"{low_bound}-{high_bound}{hint}"
            )
        low, high = values[0], values[-1]
        if low is not None and high is not None and low > high:
            raise ScheduleError(
                f"schedule {schedule!r}: the range {part!r} runs backwards, which Kubernetes does not accept; "
                "split it, e.g. 'FRI-SAT,SUN-MON' or '22-23,0-2'"
            )


@functools.lru_cache(maxsize=4096)  # every reconcile validates its spec, and most integrations share a few schedules
def firing_gaps(schedule: str) -> tuple[timedelta, timedelta]:
    """The shortest and the longest time between two consecutive runs of `schedule` (wall-clock)."""
    minutes, hours, days, months, weekdays, dom_any, dow_any = _expand(schedule)
    times = [h * 60 + m for h in hours for m in minutes]
    within_day = [b - a for a, b in pairwise(times)]

    def fires_on(day: date) -> bool:
        if day.month not in months:
            return False
        dom_ok = day.day in days
        dow_ok = (day.isoweekday() % 7) in weekdays
        # Vixie cron: when both day fields are restricted, either one matching is enough.
        if not dom_any and not dow_any:
            return dom_ok or dow_ok
        return dom_ok and dow_ok

    start = date(2024, 1, 1)  # a leap year, so 29 February schedules are seen at their rarest
    firing_days = [offset for offset in range(_HORIZON_DAYS) if fires_on(start + timedelta(days=offset))]
    if len(firing_days) < 2:
        raise ScheduleError(f"schedule {schedule!r} runs less than once a month; runs must be at most a month apart")
    day_gaps = [(b - a) * 1440 + times[0] - times[-1] for a, b in pairwise(firing_days)]
    shortest = min(day_gaps + within_day)
    longest = max(day_gaps + within_day)
    return timedelta(minutes=shortest), timedelta(minutes=longest)


def validate_schedule(schedule: str) -> str:
    shortest, longest = firing_gaps(schedule)
    if shortest < MIN_INTERVAL:
        raise ScheduleError(
            f"schedule {schedule!r} runs {_minutes(shortest)} apart at the closest; runs must be at least 15 minutes "
            "apart, e.g. '*/15 * * * *'"
        )
    if longest > MAX_INTERVAL:
        raise ScheduleError(
            f"schedule {schedule!r} leaves {longest.days} days between two runs; runs must be at most a month apart, "
            "e.g. '0 0 1 * *'"
        )
    return schedule


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return "1 minute" if minutes == 1 else f"{minutes} minutes"


def next_run(schedule: str, time_zone: str, after: datetime) -> datetime:
    """When the CronJob of `schedule` in `time_zone` next fires after `after` (aware), in UTC. A wall-clock time
    that the change to summer time skips does not fire that day, as with Kubernetes' CronJob controller."""
    text = _MACROS.get(schedule.strip().lower(), schedule.strip()).replace("?", "*")
    zone = ZoneInfo(time_zone)
    try:
        times = croniter(text, after.astimezone(zone).replace(tzinfo=None))
        for _ in range(_HORIZON_DAYS):
            local: datetime = times.get_next(datetime)
            fire = local.replace(tzinfo=zone)
            if fire.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local and fire > after:
                return fire.astimezone(UTC)
    except (CroniterError, ValueError) as exc:
        raise ScheduleError(f"schedule {schedule!r} is not a valid cron expression: {exc}") from exc
    raise ScheduleError(f"schedule {schedule!r} does not fire in the next four years")

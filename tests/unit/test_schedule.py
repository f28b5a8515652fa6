"""Schedules: the cron syntax Kubernetes' CronJob accepts, runs 15 minutes to a month apart, IANA time zones."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cdi_operator.api.schedule import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    ScheduleError,
    firing_gaps,
    validate_schedule,
    validate_time_zone,
)


def test_bounds_are_braze_bounds() -> None:
    assert timedelta(minutes=15) == MIN_INTERVAL
    assert timedelta(days=31) == MAX_INTERVAL


@pytest.mark.parametrize(
    "schedule",
    [
        "*/15 * * * *",
        "0,15,30,45 * * * *",
        "*/20 * * * *",
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "0 */6 * * *",
        "0 9 * * 1-5",
        "0 9 * * MON-FRI",
        "0 9 * * mon-fri",
        "30 2 * * SUN",
        "0 0 1 * *",
        "0 0 1,15 * *",
        "0 9 ? * MON",
        "0 0 * * ?",
        "0 0 * * 0-6",
        "0 0 1 JAN-DEC *",
        "  0 0 * * *  ",
    ],
)
def test_accepted_schedules_are_returned_unchanged(schedule: str) -> None:
    assert validate_schedule(schedule) == schedule


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "* * * * *", "0,10 * * * *", "0,50 * * * *"])
def test_too_frequent_schedule_names_15_minutes(schedule: str) -> None:
    with pytest.raises(ScheduleError, match="at least 15 minutes apart") as info:
        validate_schedule(schedule)
    assert schedule in str(info.value)
    assert "*/15 * * * *" in str(info.value)  # the fix


def test_too_frequent_message_says_how_close() -> None:
    with pytest.raises(ScheduleError, match="runs 5 minutes apart"):
        validate_schedule("*/5 * * * *")
    with pytest.raises(ScheduleError, match="runs 1 minute apart"):
        validate_schedule("* * * * *")


def test_gap_across_midnight_counts() -> None:
    # 23:50 then 00:05 the next day: 15 minutes, allowed; 23:55 then 00:05: 10 minutes, not.
    assert validate_schedule("50 23 * * *") == "50 23 * * *"
    shortest, _ = firing_gaps("55,5 0,23 * * *")
    assert shortest == timedelta(minutes=10)
    with pytest.raises(ScheduleError, match="15 minutes"):
        validate_schedule("55,5 0,23 * * *")


@pytest.mark.parametrize(
    ("schedule", "days"),
    [
        ("0 0 31 * *", 61),  # skips the months without a 31st
        ("0 0 29 2 *", 1461),  # leap years only
        ("0 0 1 */2 *", 62),
        ("0 0 1 1 *", 366),
        ("@yearly", 366),
        ("0 0 * JAN *", 336),
    ],
)
def test_schedules_more_than_a_month_apart_are_rejected(schedule: str, days: int) -> None:
    with pytest.raises(ScheduleError, match="at most a month apart") as info:
        validate_schedule(schedule)
    assert f"{days} days" in str(info.value)
    assert "0 0 1 * *" in str(info.value)  # the fix


def test_monthly_is_exactly_within_the_bound() -> None:
    shortest, longest = firing_gaps("0 0 1 * *")
    assert shortest == timedelta(days=28)
    assert longest == timedelta(days=31)


def test_weekday_gaps() -> None:
    assert firing_gaps("0 9 * * 1-5") == (timedelta(days=1), timedelta(days=3))


@pytest.mark.parametrize("schedule", ["TZ=UTC 0 0 * * *", "CRON_TZ=Europe/Berlin 0 0 * * *", "tz=UTC 0 0 * * *"])
def test_time_zone_prefix_rejected_with_fix(schedule: str) -> None:
    with pytest.raises(ScheduleError, match=r"spec\.timeZone"):
        validate_schedule(schedule)


@pytest.mark.parametrize(("schedule", "count"), [("0 0 0 * * *", 6), ("0 0 * *", 4), ("@every 1h", 2)])
def test_wrong_field_count_asks_for_five(schedule: str, count: int) -> None:
    with pytest.raises(ScheduleError, match=f"has {count} fields; write five"):
        validate_schedule(schedule)


@pytest.mark.parametrize("schedule", ["0 0 L * *", "0 0 15W * *", "0 0 * * 1#2", "0 0 * * 5L", "H * * * *"])
def test_quartz_and_jenkins_syntax_rejected_with_fix(schedule: str) -> None:
    with pytest.raises(ScheduleError, match="no L, W or #") as info:
        validate_schedule(schedule)
    assert "use numbers, names" in str(info.value)


@pytest.mark.parametrize("schedule", ["0 0 * * 7", "0 0 * * 1-7", "0 0 * * 5,7"])
def test_day_of_week_7_rejected_like_kubernetes(schedule: str) -> None:
    # Kubernetes (robfig/cron) accepts 0-6 only; croniter would map 7 to Sunday and let it through.
    with pytest.raises(ScheduleError, match="Sunday is 0"):
        validate_schedule(schedule)


@pytest.mark.parametrize("schedule", ["0 0 * * FRI-MON", "0 22-2 * * *", "0 0 * * 5-1"])
def test_backwards_ranges_rejected_like_kubernetes(schedule: str) -> None:
    with pytest.raises(ScheduleError, match="runs backwards"):
        validate_schedule(schedule)


@pytest.mark.parametrize("schedule", ["60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 1 13 *"])
def test_out_of_range_values_rejected(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        validate_schedule(schedule)


@pytest.mark.parametrize("schedule", ["0 0 * * */0", "0 0 MON * *", "0 0 * * JAN", "nonsense", "", "0 0 * * -1"])
def test_invalid_expressions_raise_schedule_error_not_crash(schedule: str) -> None:
    with pytest.raises(ScheduleError):
        validate_schedule(schedule)


def test_day_fields_combine_like_kubernetes() -> None:
    # Both restricted: either matching is enough (every Monday or the 1st): at most 7 days apart.
    assert firing_gaps("0 0 1 * 1")[1] == timedelta(days=7)
    # '?' or '*' in one day field: the other alone decides.
    assert firing_gaps("0 0 ? * 1") == (timedelta(days=7), timedelta(days=7))
    assert firing_gaps("0 0 1 * ?")[1] == timedelta(days=31)
    # A full range written out is not '*' for Kubernetes: '31 OR any weekday' runs daily.
    assert firing_gaps("0 0 31 * 0-6") == (timedelta(days=1), timedelta(days=1))
    # '*/2' has a step, so Kubernetes ORs it with the weekday too.
    assert firing_gaps("0 0 */2 * 1")[1] <= timedelta(days=2)


def test_macro_names_are_case_insensitive() -> None:
    assert validate_schedule("@HOURLY") == "@HOURLY"


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Etc/GMT+5"])
def test_valid_time_zones(zone: str) -> None:
    assert validate_time_zone(zone) == zone


@pytest.mark.parametrize("zone", ["Nope/Zone", "Mars/Olympus", "utc", "Europe/", "a\x00b", "zone.tab"])
def test_unknown_time_zones_rejected_with_example(zone: str) -> None:
    with pytest.raises(ScheduleError, match="IANA") as info:
        validate_time_zone(zone)
    assert "e.g." in str(info.value)


def test_time_zone_directory_is_a_schedule_error_not_an_os_error() -> None:
    # 'Europe' is a directory of the zone database; it must be reported, not crash with IsADirectoryError.
    with pytest.raises(ScheduleError, match="IANA"):
        validate_time_zone("Europe")


@pytest.mark.parametrize("zone", ["../etc/passwd", "../etc", "Europe/../../etc/passwd", "/etc/localtime", "./UTC", ""])
def test_path_traversal_is_not_a_time_zone(zone: str) -> None:
    with pytest.raises(ScheduleError, match="not an IANA time zone name"):
        validate_time_zone(zone)


def test_schedule_error_is_a_value_error() -> None:
    # pydantic turns ValueErrors into validation errors; the models rely on it.
    assert issubclass(ScheduleError, ValueError)

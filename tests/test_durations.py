from datetime import datetime, timedelta, timezone

import pytest

from pyworkflow.durations import parse_duration, wake_time

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("3d", 259200),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("500ms", 0.5),
        (" 2H ", 7200),
        (5, 5),
        (2.5, 2.5),
        (0, 0),
        (timedelta(minutes=3), 180),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value).total_seconds() == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["", "5", "5x", "h", "-5s", "1h-30m", "5 seconds", -1, float("nan"), None, [], True])
def test_bad_durations_name_the_value(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


def test_wake_times() -> None:
    assert wake_time("1h", NOW) == NOW + timedelta(hours=1)
    naive = datetime(2030, 1, 2, 3, 4)
    assert wake_time(naive, NOW) == naive.replace(tzinfo=timezone.utc)
    past = datetime(2020, 1, 1, tzinfo=timezone.utc)
    assert wake_time(past, NOW) == past

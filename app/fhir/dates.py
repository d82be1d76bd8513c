"""FHIR date, dateTime and instant values as the time ranges their precision covers."""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

from app.fhir.outcome import BadRequest

_DATE_TIME = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def parse_range(value: str, name: str) -> tuple[datetime, datetime]:
    """The inclusive [low, high] instants covered by a FHIR date/dateTime/instant value.

    A value without a time zone is read as UTC (R4 leaves it to the server).
    """
    match = _DATE_TIME.fullmatch(value.strip())
    if match is None:
        raise BadRequest(f"'{value[:40]}' is not a valid FHIR date or dateTime", expression=[name])
    parts = match.groupdict()
    try:
        tz = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            hours, minutes = int(parts["tz"][1:3]), int(parts["tz"][4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        year = int(parts["year"])
        if parts["month"] is None:
            low = datetime(year, 1, 1, tzinfo=tz)
            return low, datetime(year, 12, 31, 23, 59, 59, 999000, tzinfo=tz)
        month = int(parts["month"])
        if parts["day"] is None:
            last = calendar.monthrange(year, month)[1]
            low = datetime(year, month, 1, tzinfo=tz)
            return low, datetime(year, month, last, 23, 59, 59, 999000, tzinfo=tz)
        day = int(parts["day"])
        if parts["hour"] is None:
            low = datetime(year, month, day, tzinfo=tz)
            return low, low + timedelta(days=1) - timedelta(milliseconds=1)
        hour, minute = int(parts["hour"]), int(parts["minute"])
        if parts["second"] is None:
            low = datetime(year, month, day, hour, minute, tzinfo=tz)
            return low, low + timedelta(minutes=1) - timedelta(milliseconds=1)
        second = int(parts["second"])
        if parts["fraction"] is None:
            low = datetime(year, month, day, hour, minute, second, tzinfo=tz)
            return low, low + timedelta(seconds=1) - timedelta(milliseconds=1)
        millis = int((parts["fraction"] + "00")[:3])
        low = datetime(year, month, day, hour, minute, second, millis * 1000, tzinfo=tz)
        return low, low
    except ValueError:
        raise BadRequest(f"'{value[:40]}' is not a valid date", expression=[name]) from None


def parse_instant_range(value: str, name: str) -> tuple[datetime, datetime]:
    low, high = parse_range(value, name)
    return low.astimezone(UTC), high.astimezone(UTC)

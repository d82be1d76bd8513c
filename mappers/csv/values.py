"""Cell parsers: raw CSV text → FHIR primitive values, or a reason for rejection.

Each parser returns the FHIR value or raises `CellError` with a reason a data manager can
act on. They are called once per cell, so they avoid anything slower than a regex.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import date, datetime

from app.fhir.numbers import is_fhir_integer

# Fixed namespace: the same feed row gives the same resource id on every server and upload.
ID_NAMESPACE = uuid.UUID("6f1c4a52-3b0e-5e8c-9a57-0e3f2d1b7c44")

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DECIMAL = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
_PARTIAL_DATE = re.compile(r"^\d{4}(-\d{2})?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?$")


class CellError(ValueError):
    """A cell that cannot be turned into the declared type."""


def deterministic_id(namespace: str, values: list[str]) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, namespace + "|" + "|".join(values)))


def parse_id(raw: str) -> str:
    if not _FHIR_ID.match(raw):
        raise CellError(f"'{raw}' is not a valid id (1-64 of A-Z a-z 0-9 - .)")
    return raw


def parse_decimal(raw: str) -> float | int:
    if not _DECIMAL.match(raw):
        raise CellError(f"'{raw}' is not a number")
    value = float(raw)
    if not math.isfinite(value):
        raise CellError(f"'{raw}' is not a finite number")
    return value


def parse_integer(raw: str) -> int:
    if not _INTEGER.match(raw):
        raise CellError(f"'{raw}' is not an integer")
    value = int(raw)
    if not is_fhir_integer(value):
        raise CellError(f"'{raw}' is out of range for a FHIR integer (32 bits)")
    return value


def parse_date(raw: str) -> str:
    if _PARTIAL_DATE.match(raw):
        if raw.startswith("0000"):
            raise CellError(f"'{raw}' has year 0000: FHIR dates start at year 0001")
        if len(raw) == 7 and not 1 <= int(raw[5:7]) <= 12:
            raise CellError(f"'{raw}' has no month {raw[5:7]}")
        return raw
    if not _DATE.match(raw):
        raise CellError(f"'{raw}' is not a date (YYYY-MM-DD)")
    try:
        date.fromisoformat(raw)
    except ValueError as exc:
        raise CellError(f"'{raw}' is not a calendar date") from exc
    return raw


def parse_date_time(raw: str, default_zone: str | None = None) -> str:
    """A FHIR dateTime: a (partial) date, or date and time with a zone.

    FHIR requires a zone once a time is given; a map may name a default zone for feeds
    that write local times, otherwise such a value is rejected rather than guessed.
    """
    if "T" not in raw:
        return parse_date(raw)
    if not _DATE_TIME.match(raw):
        raise CellError(f"'{raw}' is not a dateTime (YYYY-MM-DDThh:mm:ss with zone)")
    has_zone = raw.endswith("Z") or raw[-6] in "+-"
    if not has_zone:
        if default_zone is None:
            raise CellError(f"'{raw}' has a time but no time zone")
        raw = raw + default_zone
    try:
        datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CellError(f"'{raw}' is not a valid date and time") from exc
    return raw


def parse_instant(raw: str, default_zone: str | None = None) -> str:
    """A FHIR instant: date and time to the second, with a zone (or the map's default zone).
    For columns that also fill instant elements such as Observation.issued, where a partial
    date that a dateTime allows would be invalid."""
    if "T" not in raw:
        raise CellError(f"'{raw}' is not an instant (YYYY-MM-DDThh:mm:ss with a time zone)")
    return parse_date_time(raw, default_zone)

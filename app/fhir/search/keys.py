"""Value normalisations shared by index extraction (write time) and query compiling (read time).

Both sides must turn a value into exactly the same key, so every normalisation lives here.
"""

from __future__ import annotations

import calendar
import re
import struct
import unicodedata
from decimal import Decimal, InvalidOperation

# Longest prefix stored for string starts-with search; longer queries add a range on the full
# value (see compile.py).
PREFIX_MAX = 32
# Grams of 1..GRAM_MAX characters are stored for `:contains`.
GRAM_MAX = 3
# Strings longer than this are not cut into grams (narratives, long descriptions).
GRAM_SOURCE_MAX = 256

# Open Period ends and unknown bounds: the ends of the representable FHIR date range.
EPOCH_MS_MIN = calendar.timegm((1, 1, 1, 0, 0, 0)) * 1000
EPOCH_MS_MAX = calendar.timegm((9999, 12, 31, 23, 59, 59)) * 1000 + 999

_WHITESPACE = re.compile(r"\s+")
# The Unicode combining-mark blocks: what is left of accents after NFKD decomposition.
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")


def fold(text: str) -> str:
    """Lower-case, accent-free, single-spaced: 'Émile  Zola' → 'emile zola'."""
    if text.isascii():
        folded = text.lower()
    else:
        folded = _COMBINING.sub("", unicodedata.normalize("NFKD", text)).casefold()
    return _WHITESPACE.sub(" ", folded).strip()


def prefixes(folded: str) -> list[str]:
    return [folded[:i] for i in range(1, min(len(folded), PREFIX_MAX) + 1)]


def grams(folded: str) -> set[str]:
    if len(folded) > GRAM_SOURCE_MAX:
        return set()
    out: set[str] = set()
    for size in range(1, GRAM_MAX + 1):
        out.update(folded[i : i + size] for i in range(len(folded) - size + 1))
    return out


def sortable_number(value: float) -> str:
    """A fixed-width string whose lexical order is the numeric order of `value`.

    Used where a number must be compared inside a string key (quantities with units,
    composites), so one range condition on one field decides the match.
    """
    value = float(value) + 0.0  # folds -0.0 into 0.0
    (bits,) = struct.unpack(">Q", struct.pack(">d", value))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 0x8000000000000000
    return f"{bits:016x}"


# --- dates -----------------------------------------------------------------------------------

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})"
    r"(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def date_range(value: str) -> tuple[int, int] | None:
    """The inclusive [low, high] epoch-millisecond range a FHIR date/dateTime/instant covers.

    A time without a zone is read as UTC (R4 leaves the choice to the server). Returns None for
    text that is not a FHIR date.
    """
    match = _DATE.fullmatch(value.strip())
    if match is None:
        return None
    year_s, month_s, day_s, hour_s, minute_s, second_s, fraction, zone = match.groups()
    try:
        year = int(year_s)
        offset_ms = 0
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            offset_ms = sign * (int(zone[1:3]) * 60 + int(zone[4:6])) * 60_000
        if month_s is None:
            low = calendar.timegm((year, 1, 1, 0, 0, 0)) * 1000
            # Not "next 1 January minus 1 ms": year 9999 has no next year in a datetime.
            high = calendar.timegm((year, 12, 31, 23, 59, 59)) * 1000 + 999
            return low, high
        month = int(month_s)
        if not 1 <= month <= 12:
            return None
        if day_s is None:
            last = calendar.monthrange(year, month)[1]
            low = calendar.timegm((year, month, 1, 0, 0, 0)) * 1000
            return low, low + last * 86_400_000 - 1
        day = int(day_s)
        if not 1 <= day <= calendar.monthrange(year, month)[1]:
            return None
        if hour_s is None:
            low = calendar.timegm((year, month, day, 0, 0, 0)) * 1000
            return low, low + 86_400_000 - 1
        hour, minute = int(hour_s), int(minute_s)
        second = int(second_s) if second_s is not None else 0
        if hour > 24 or minute > 59 or second > 60:
            return None
        low = calendar.timegm((year, month, day, hour, minute, second)) * 1000 - offset_ms
        if second_s is None:
            return low, low + 60_000 - 1
        if fraction is None:
            return low, low + 1000 - 1
        low += int((fraction + "00")[:3])
        return low, low
    except (ValueError, OverflowError):
        return None


# --- numbers ---------------------------------------------------------------------------------


def decimal_range(text: str) -> tuple[Decimal, Decimal, Decimal] | None:
    """(value, low, high) of a decimal as R4 reads it: '100' covers [99.5, 100.5).

    Exponent forms keep their significant digits: '1e2' covers [50, 150).
    """
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return value, value - half, value + half


# --- references ------------------------------------------------------------------------------


def reference_keys(reference: str) -> list[str]:
    """Keys for a literal reference: `Patient/1` → ['Patient/1', '1']; versions dropped."""
    if not reference or reference.startswith("#"):
        return []
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
        reference = "/".join(parts)
    if "://" not in reference and not reference.startswith("urn:") and len(parts) == 2:
        return [reference, parts[1]]
    # Absolute URLs and canonicals: as given, plus without a `|version` suffix.
    bare = reference.split("|", 1)[0]
    return [reference] if bare == reference else [reference, bare]


def uri_prefixes(uri: str) -> list[str]:
    """Every path prefix of a URI ('http://a/b/c' → 'http://a', 'http://a/b', 'http://a/b/c').

    `:below=X` is then an equality on this list; `:above=X` is an `$in` over X's own prefixes.
    """
    uri = uri.rstrip("/")
    scheme_end = uri.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    out: list[str] = []
    pos = uri.find("/", start)
    while pos >= 0:
        out.append(uri[:pos])
        pos = uri.find("/", pos + 1)
    out.append(uri)
    return out

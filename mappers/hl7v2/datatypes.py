"""HL7 v2 datatypes → FHIR datatypes (TS, CX, XPN, XAD, XTN, CWE, XCN, NM, SN, ED).

Each reader takes one raw field repetition (still escaped) and the message `Encoding`, and
returns a FHIR JSON fragment, or None when the repetition carries nothing. Code translations
go through the ConceptMaps in `terminology/conceptmaps`, never through if-chains here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from app.fhir.numbers import is_storable
from mappers.hl7v2.parse import Encoding, component_text, components
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
UCUM = "http://unitsofmeasure.org"
CODING_SYSTEMS = "v2-0396-to-uri"
LOCAL_SYSTEM_BASE = "urn:hestia:hl7v2:"
UNITS_SOURCE = "urn:hestia:hl7v2:units"

_TS = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?)?\s*(?:([+-])(\d{2})(\d{2}))?"
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
_V2_TABLE = re.compile(r"HL7?(\d{4})")
_OID = re.compile(r"[0-2](\.\d+)+")


@lru_cache(maxsize=4096)  # a message repeats the same few times across its segments
def parse_ts(value: str, assume_tz: tzinfo) -> str:
    """HL7 DTM/TS/DT → FHIR date or dateTime at the precision the sender gave.

    FHIR requires a time zone whenever hours are given; a time without one is read in
    `assume_tz` (the sender's configured zone). Raises ValueError on an impossible value.
    """
    value = value.strip()
    m = _TS.fullmatch(value)
    if not m:
        raise ValueError(f"{value!r} is not an HL7 date/time")
    year, month, day, hour, minute, second, fraction, sign, tzh, tzm = m.groups()
    if hour is None:
        # Date precision: validate the calendar date, keep the precision.
        datetime(int(year), int(month or 1), int(day or 1))
        if day and not month:
            raise ValueError(f"{value!r} is not an HL7 date/time")
        return "-".join(p for p in (year, month, day) if p)
    if not (month and day):
        raise ValueError(f"{value!r} has a time but no full date")
    tz: tzinfo = assume_tz
    if sign:
        offset = timedelta(hours=int(tzh), minutes=int(tzm))
        if offset >= timedelta(hours=24):
            raise ValueError(f"{value!r} has an impossible UTC offset")
        tz = timezone(-offset if sign == "-" else offset)
    moment = datetime(
        int(year), int(month), int(day), int(hour), int(minute or 0), int(second or 0), tzinfo=tz
    )
    text = moment.isoformat()
    if fraction:
        text = text[:19] + "." + fraction + text[19:]
    return text.replace("+00:00", "Z") if sign is None and tz is UTC else text


@lru_cache(maxsize=1024)
def coding_system(name: str) -> str | None:
    """A v2 coding system name (table 0396: LN, SCT, HL70078…) → FHIR system URI."""
    name = name.strip()
    if not name:
        return None
    mapped = translate(CODING_SYSTEMS, "HL70396", name.upper())
    if mapped:
        return mapped.code
    table = _V2_TABLE.fullmatch(name.upper())
    if table:
        return f"http://terminology.hl7.org/CodeSystem/v2-{table.group(1)}"
    # Local (99zzz) and unknown systems get a stable URN so the code is never orphaned.
    return f"{LOCAL_SYSTEM_BASE}cs:{quote(name, safe='')}"


def _coding(code: str, display: str, system_name: str) -> JsonDict | None:
    if not code:
        return None
    out: JsonDict = {}
    system = coding_system(system_name)
    if system:
        out["system"] = system
    out["code"] = code
    if display:
        out["display"] = display
    return out


def codeable_concept(raw: str, enc: Encoding) -> JsonDict | None:
    """CWE/CE/CNE → CodeableConcept: primary and alternate codings, original text."""
    if not raw:
        return None
    t = components(raw, 9, enc)
    codings = [c for c in (_coding(t[0], t[1], t[2]), _coding(t[3], t[4], t[5])) if c]
    out: JsonDict = {}
    if codings:
        out["coding"] = codings
    text = t[8] or (t[1] if not codings else "")
    if text:
        out["text"] = text
    return out or None


def table_coding(code: str, table: str, conceptmap: str | None = None) -> JsonDict | None:
    """A code from a v2 table: translated through its ConceptMap, else kept as a v2 coding."""
    code = code.strip()
    if not code:
        return None
    if conceptmap:
        mapped = translate(conceptmap, f"HL7{table}", code)
        if mapped:
            return mapped.as_dict()
    return {"system": f"http://terminology.hl7.org/CodeSystem/v2-{table}", "code": code}


def _hd_parts(raw_hd: str, enc: Encoding) -> tuple[str, str, str]:
    """(namespace, universal id, universal id type) of an HD.

    An HD is a component inside CX-4 (parts separated by `&`) but a whole field in MSH-3/4
    (parts separated by `^`); both shapes are accepted.
    """
    sep = enc.subcomponent if enc.subcomponent in raw_hd else enc.component
    parts = [enc.unescape(p) for p in raw_hd.split(sep, 3)[:3]]
    parts += [""] * (3 - len(parts))
    return parts[0].strip(), parts[1].strip(), parts[2].strip().upper()


def hd_system(raw_hd: str, enc: Encoding) -> str | None:
    """HD → a URI for Identifier.system: the universal id when there is one, else a URN."""
    namespace, universal, kind = _hd_parts(raw_hd, enc)
    if universal:
        if _OID.fullmatch(universal):  # ISO-typed or not, only a real OID makes a urn:oid
            return f"urn:oid:{universal}"
        if kind in ("URI", "URL") or universal.startswith(("http:", "https:", "urn:")):
            return universal
        return f"{LOCAL_SYSTEM_BASE}id:{quote(universal, safe='')}"
    if not namespace:
        return None
    return f"{LOCAL_SYSTEM_BASE}id:{quote(namespace, safe='')}"


def hd_key(raw_hd: str, enc: Encoding) -> str:
    """The part of an HD that identifies the authority: universal id, else namespace."""
    namespace, universal, _ = _hd_parts(raw_hd, enc)
    return universal or namespace


def identifier(raw: str, enc: Encoding, default_system: str | None = None) -> JsonDict | None:
    """CX → Identifier with system (assigning authority), type (table 0203) and assigner."""
    value = component_text(raw, 1, enc)
    if not value:
        return None
    out: JsonDict = {"value": value}
    parts = raw.split(enc.component)
    authority = parts[3] if len(parts) > 3 else ""
    system = hd_system(authority, enc) if authority else default_system
    if system:
        out["system"] = system
    id_type = component_text(raw, 5, enc)
    if id_type:
        out["type"] = {"coding": [table_coding(id_type, "0203", "v2-0203-to-fhir")]}
    if authority:
        display = _hd_parts(authority, enc)[0] or hd_key(authority, enc)
        if display:
            out["assigner"] = {"display": display}
    return out


def human_name(raw: str, enc: Encoding) -> JsonDict | None:
    """XPN (and the name part of XCN when `offset` is used) → HumanName."""
    return _name_from(raw, enc, 0)


def _name_from(raw: str, enc: Encoding, offset: int) -> JsonDict | None:
    """XPN components (shifted by `offset` inside XCN, where the id comes first)."""
    comps = components(raw, 14 + offset, enc)[offset:]
    family, given, middle, suffix, prefix, degree, use = comps[:7]
    out: JsonDict = {}
    if family:
        out["family"] = family
    given_names = [g for g in (given, middle) if g]
    if given_names:
        out["given"] = given_names
    if prefix:
        out["prefix"] = [prefix]
    suffixes = [s for s in (suffix, degree, comps[13]) if s]  # XPN-14 professional suffix
    if suffixes:
        out["suffix"] = suffixes
    if not out:
        return None
    if use:
        mapped = translate("v2-0200-to-name-use", "HL70200", use)
        if mapped:
            out["use"] = mapped.code
    return out


def name_text(name: JsonDict) -> str:
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    return " ".join(p for p in parts if p)


def practitioner_reference(raw: str, enc: Encoding) -> JsonDict | None:
    """XCN → a logical Reference (identifier + display); no Practitioner resource is minted."""
    ident = component_text(raw, 1, enc)
    name = _name_from(raw, enc, 1)
    out: JsonDict = {}
    if ident:
        out["identifier"] = {"value": ident}
        authority = raw.split(enc.component)[8] if raw.count(enc.component) >= 8 else ""
        system = hd_system(authority, enc) if authority else None
        if system:
            out["identifier"]["system"] = system
    if name:
        out["display"] = name_text(name)
    elif ident:
        out["display"] = ident
    if out:
        out["type"] = "Practitioner"
    return out or None


def address(raw: str, enc: Encoding) -> JsonDict | None:
    """XAD → Address."""
    t = components(raw, 9, enc)
    lines = [line for line in (t[0], t[1]) if line]
    out: JsonDict = {}
    if lines:
        out["line"] = lines
    for key, value in (("city", t[2]), ("state", t[3]), ("postalCode", t[4]), ("country", t[5])):
        if value:
            out[key] = value
    if t[8]:
        out["district"] = t[8]
    if not out:
        return None
    if t[6]:
        mapped = translate("v2-0190-to-address-use", "HL70190", t[6])
        if mapped:
            out["use"] = mapped.code
    return out


def contact_point(raw: str, enc: Encoding, default_use: str | None = None) -> JsonDict | None:
    """XTN → ContactPoint (phone number assembled from its parts when unformatted is absent)."""
    t = components(raw, 12, enc)
    equipment = t[2]
    if t[3]:
        value, system = t[3], "email"
    else:
        value = t[0] or t[11]
        if not value and t[6]:
            country = f"+{t[4]} " if t[4] else ""
            area = f"({t[5]}) " if t[5] else ""
            value = f"{country}{area}{t[6]}" + (f" ext. {t[7]}" if t[7] else "")
        system = "phone"
    if not value:
        return None
    out: JsonDict = {}
    if equipment:
        mapped = translate("v2-0202-to-contact-point-system", "HL70202", equipment)
        if mapped:
            system = mapped.code
    out["system"] = system
    out["value"] = value
    use = None
    if t[1]:
        mapped = translate("v2-0201-to-contact-point-use", "HL70201", t[1])
        use = mapped.code if mapped else None
    if equipment == "CP":
        use = "mobile"
    use = use or default_use
    if use:
        out["use"] = use
    return out


def number(text: str) -> float | int:
    """An NM value as int when it has no fraction (keeps `5` from becoming `5.0`)."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    if "." in text:
        return float(text)
    value = int(text)
    if not is_storable(value):
        raise ValueError(f"{text[:40]!r} is out of range (more than 64 bits)")
    return value


@lru_cache(maxsize=1024)
def _unit(unit_raw: str, enc: Encoding) -> tuple[tuple[str, str], ...]:
    code, text, system = components(unit_raw, 3, enc) if unit_raw else ("", "", "")
    out: list[tuple[str, str]] = []
    if code or text:
        out.append(("unit", text or code))
    if code:
        ucum = code if system.upper() in ("UCUM", "UCUM-1") else None
        if ucum is None:
            mapped = translate("v2-units-to-ucum", UNITS_SOURCE, code)
            ucum = mapped.code if mapped else None
        if ucum is not None:
            out += [("system", UCUM), ("code", ucum)]
    return tuple(out)


def quantity(value: float | int, unit_raw: str, enc: Encoding) -> JsonDict:
    """NM + CWE unit → Quantity, coded in UCUM when the unit is (or maps to) a UCUM code."""
    out: JsonDict = {"value": value}
    out.update(_unit(unit_raw, enc))
    return out

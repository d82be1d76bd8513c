"""Recognise an uploaded payload's format from its first bytes (and its content type).

The bytes decide; the declared content type is only a fallback when the bytes are not
recognisable, because senders mislabel payloads far more often than formats lie.
Give `detect` at least the first 4 KiB: a DICOM file needs 132 bytes, a CSV its header.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mappers.csv import match_map
from mappers.dicom.read import is_part10, looks_like_dicom_json

Kind = Literal["hl7v2", "csv", "dicom", "dicom-json", "fhir-bundle", "fhir-resource", "unknown"]

_BOM = b"\xef\xbb\xbf"
_MLLP_START = b"\x0b"
_HL7_HEADERS = (b"MSH", b"FHS", b"BHS")
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:\s*"([A-Za-z]+)"')
_CONTENT_TYPES: dict[str, Kind] = {
    "application/dicom": "dicom",
    "application/dicom+json": "dicom-json",
    "x-application/hl7-v2+er7": "hl7v2",
    "application/hl7-v2": "hl7v2",
    "application/edi-hl7": "hl7v2",
    "text/csv": "csv",
    "application/csv": "csv",
}


@dataclass(frozen=True)
class Detected:
    kind: Kind
    reason: str
    csv_map: str | None = None
    resource_type: str | None = None
    # False when only the declared content type pointed this way.
    from_content: bool = True

    @property
    def known(self) -> bool:
        return self.kind != "unknown"


def detect(head: bytes, content_type: str | None = None) -> Detected:
    if is_part10(head):
        return Detected("dicom", "DICM marker after the 128-byte preamble")
    text = head[len(_BOM) :] if head.startswith(_BOM) else head
    text = text.lstrip(b" \t\r\n")
    if text.startswith(_MLLP_START):
        text = text[1:]
    found = _sniff_hl7(text) or _sniff_json(text) or _sniff_csv(text)
    if found is not None:
        return found
    return _from_content_type(content_type, text)


def _sniff_hl7(text: bytes) -> Detected | None:
    # MSH|^~\&: the 4th byte is the field separator, never alphanumeric.
    if text[:3] in _HL7_HEADERS and len(text) > 4 and not chr(text[3]).isalnum():
        return Detected("hl7v2", f"starts with an {text[:3].decode()} segment")
    return None


def _sniff_json(text: bytes) -> Detected | None:
    if not text.startswith((b"{", b"[")):
        return None
    if looks_like_dicom_json(text):
        return Detected("dicom-json", "JSON keyed by DICOM tags")
    match = _RESOURCE_TYPE.search(text)
    if match is None:
        return None
    resource_type = match.group(1).decode()
    if resource_type == "Bundle":
        return Detected("fhir-bundle", "FHIR JSON with resourceType Bundle", resource_type="Bundle")
    return Detected(
        "fhir-resource", f"FHIR JSON with resourceType {resource_type}", resource_type=resource_type
    )


def _sniff_csv(text: bytes) -> Detected | None:
    end = text.find(b"\n")
    first = text if end < 0 else text[:end]
    if b"," not in first:
        return None
    name = match_map(first.decode("utf-8", errors="replace").rstrip("\r"))
    if name is None:
        return None
    return Detected("csv", f"CSV header matches map {name}", csv_map=name)


def _from_content_type(content_type: str | None, text: bytes) -> Detected:
    media = (content_type or "").split(";")[0].strip().lower()
    kind = _CONTENT_TYPES.get(media)
    if kind == "csv":
        return Detected(
            "csv", "declared text/csv, but the header matches no CSV map", from_content=False
        )
    if kind is not None:
        return Detected(kind, f"declared content type {media}", from_content=False)
    if text.startswith(b"<"):
        return Detected("unknown", "XML payloads are not supported; send FHIR JSON")
    return Detected("unknown", "cannot tell the format from the first bytes or the content type")

"""Which patch format a PATCH request carries, from its Content-Type and body."""

from __future__ import annotations

from typing import Any, Literal

from app.fhir.outcome import BadRequest, UnsupportedMediaType

PatchKind = Literal["json-patch", "fhirpath-patch"]

JSON_PATCH_MEDIA_TYPE = "application/json-patch+json"
FHIR_JSON_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})
XML_MEDIA_TYPES = frozenset(
    {"application/xml-patch+xml", "application/fhir+xml", "application/xml", "text/xml"}
)


def media_type(content_type: str) -> str:
    """'Application/FHIR+JSON; charset=utf-8' → 'application/fhir+json'."""
    return content_type.split(";", 1)[0].strip().lower()


def detect_patch_kind(content_type: str, body: Any) -> PatchKind:
    """JSON Patch for application/json-patch+json; FHIRPath Patch for a Parameters body.

    XML Patch and FHIRPath Patch in XML are refused: Hestia accepts JSON only.
    """
    kind = media_type(content_type)
    if kind == JSON_PATCH_MEDIA_TYPE:
        return "json-patch"
    if kind in FHIR_JSON_MEDIA_TYPES:
        if isinstance(body, dict) and body.get("resourceType") == "Parameters":
            return "fhirpath-patch"
        raise BadRequest(
            f"A PATCH with Content-Type {kind} must carry a FHIRPath Patch Parameters resource; "
            f"send JSON Patch as {JSON_PATCH_MEDIA_TYPE}"
        )
    if kind in XML_MEDIA_TYPES or kind.endswith("+xml"):
        raise UnsupportedMediaType(
            f"PATCH in XML ({kind}) is not supported: use JSON Patch ({JSON_PATCH_MEDIA_TYPE}) "
            "or FHIRPath Patch as application/fhir+json"
        )
    raise UnsupportedMediaType(
        f"PATCH does not accept Content-Type {kind or '(none)'}: use {JSON_PATCH_MEDIA_TYPE} "
        "or application/fhir+json"
    )

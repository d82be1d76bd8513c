"""PATCH for FHIR resources: JSON Patch (RFC 6902) and FHIRPath Patch (R4 fhirpatch.html).

Pure functions on JSON dicts: they return a new resource and never change their input.
The caller validates the result (app.fhir.model) and stores it as a new version.
"""

from typing import Any

from app.fhir.patch.fhirpath_patch import apply_fhirpath_patch
from app.fhir.patch.json_patch import apply_json_patch
from app.fhir.patch.kind import PatchKind, detect_patch_kind

__all__ = [
    "PatchKind",
    "apply_fhirpath_patch",
    "apply_json_patch",
    "apply_patch",
    "detect_patch_kind",
]


def apply_patch(resource: dict[str, Any], content_type: str, body: Any) -> dict[str, Any]:
    """Apply a PATCH body of either format, chosen by its Content-Type (and body)."""
    if detect_patch_kind(content_type, body) == "json-patch":
        return apply_json_patch(resource, body)
    return apply_fhirpath_patch(resource, body)

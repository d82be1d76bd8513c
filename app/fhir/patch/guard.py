"""Rules every patch result must keep, whichever patch format produced it."""

from __future__ import annotations

from typing import Any

from app.fhir.outcome import Unprocessable

# A patch edits one resource in place: it may not turn it into another type or another
# logical resource (FHIR http.html#patch: the id is set by the URL, not the body).
IDENTITY_ELEMENTS = ("resourceType", "id")


def check_identity_kept(original: dict[str, Any], patched: dict[str, Any]) -> None:
    for name in IDENTITY_ELEMENTS:
        if original.get(name) != patched.get(name):
            raise Unprocessable(
                f"A patch may not change the resource's {name} "
                f"(from {original.get(name)!r} to {patched.get(name)!r})",
                expression=[name],
            )

"""Deterministic resource ids from business identifiers.

Re-sending a message must produce the same PUTs, and two messages about the same patient must
land on the same Patient, so no id is random: each is a hash of the identifiers that make the
thing unique (e.g. assigning authority + MRN). 32 hex characters (128 bits) fits FHIR's id
rules and makes collisions a non-issue.
"""

from __future__ import annotations

from hashlib import sha256

_SEP = "\x1f"  # unit separator: cannot occur in decoded HL7 text used as a key


def stable_id(kind: str, *parts: str) -> str:
    key = _SEP.join((kind, *(p.strip().upper() for p in parts)))
    return sha256(key.encode("utf-8")).hexdigest()[:32]

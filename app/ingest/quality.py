"""Data-quality findings on ingested data, as OperationOutcome issues kept on the raw payload.

The pure mappers already flag what one row or file shows on its own (a value outside its
plausible physiological range, an expected identifier left empty). What needs the server's
data is checked here, after the resources are written:
- a possible duplicate patient: another Patient with the same family name, given name and
  birth date whose identifiers share nothing with this one (a different MRN), found through
  an ordinary FHIR search on the store;
- a Patient with no identifier at all, which no later feed can ever match.

Findings never block a write: they point a data manager at records to review.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.fhir.outcome import FhirError, issue
from app.store.versions import Store, Version

JsonDict = dict[str, Any]
Matcher = Callable[[str, list[tuple[str, str]]], Awaitable[list[str]]]
# Findings kept on one payload; beyond this they are counted by code only.
MAX_FINDINGS = 1000


@dataclass
class Findings:
    """Issues collected while one payload is ingested, bounded, with counts by issue code."""

    issues: list[JsonDict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, found: JsonDict) -> None:
        code = str(found.get("code", "informational"))
        self.counts[code] = self.counts.get(code, 0) + 1
        if len(self.issues) < MAX_FINDINGS:
            self.issues.append(found)

    def extend(self, found: Iterable[JsonDict]) -> None:
        for item in found:
            self.add(item)

    @property
    def warnings(self) -> list[JsonDict]:
        return [i for i in self.issues if i.get("severity") in ("warning", "error")]


def _identifiers(patient: JsonDict) -> set[tuple[str, str]]:
    return {
        (str(i.get("system", "")), str(i["value"]))
        for i in patient.get("identifier") or ()
        if isinstance(i, dict) and i.get("value")
    }


def _official_name(patient: JsonDict) -> tuple[str, str] | None:
    for name in patient.get("name") or ():
        if not isinstance(name, dict) or name.get("use") in ("maiden", "old"):
            continue
        family = name.get("family")
        given = (name.get("given") or [None])[0]
        if family and given:
            return str(family), str(given)
    return None


def missing_identifier(patient: JsonDict, where: str = "") -> JsonDict | None:
    if _identifiers(patient):
        return None
    prefix = f"{where}: " if where else ""
    return issue(
        "warning",
        "required",
        f"{prefix}Patient/{patient.get('id')} has no identifier (no MRN): later records "
        "cannot be matched to it",
        expression=["Patient.identifier"],
    )


async def duplicate_patients(
    store: Store,
    matcher: Matcher,
    patient: JsonDict,
    where: str = "",
    seen: set[frozenset[str]] | None = None,
) -> list[JsonDict]:
    """Issues naming stored Patients that look like the same person under another MRN.

    `seen` holds the pairs already reported (for one payload), so a pair is reported once.
    """
    name = _official_name(patient)
    birth = patient.get("birthDate")
    if name is None or not isinstance(birth, str):
        return []
    family, given = name
    criteria = [("family:exact", family), ("given:exact", given), ("birthdate", birth)]
    try:
        candidates = await matcher("Patient", criteria)
    except FhirError:
        return []  # a name the search grammar cannot express is no finding
    mine = _identifiers(patient)
    found = []
    for candidate_id in candidates:
        pair = frozenset((str(patient.get("id")), candidate_id))
        if candidate_id == patient.get("id") or (seen is not None and pair in seen):
            continue
        doc = await store.read_current("Patient", candidate_id)
        if doc is None or doc.get("deleted"):
            continue
        theirs = _identifiers(doc["resource"])
        if mine & theirs:
            continue  # the same person already linked by a shared identifier
        if seen is not None:
            seen.add(pair)
        prefix = f"{where}: " if where else ""
        found.append(
            issue(
                "warning",
                "duplicate",
                f"{prefix}possible duplicate patient: Patient/{patient.get('id')} and "
                f"Patient/{candidate_id} have the same name and birth date "
                f"({family}, {given}, {birth}) but different identifiers (MRN)",
                expression=["Patient.identifier"],
            )
        )
    return found


async def check_patients(
    store: Store,
    matcher: Matcher,
    written: Iterable[Version],
    where: str = "",
    seen: set[frozenset[str]] | None = None,
) -> list[JsonDict]:
    """Findings for the Patients among `written` versions."""
    out: list[JsonDict] = []
    for version in written:
        if version.resource_type != "Patient" or version.resource is None:
            continue
        missing = missing_identifier(version.resource, where)
        if missing is not None:
            out.append(missing)
        out.extend(await duplicate_patients(store, matcher, version.resource, where, seen))
    return out


__all__ = [
    "MAX_FINDINGS",
    "Findings",
    "Matcher",
    "check_patients",
    "duplicate_patients",
    "missing_identifier",
]

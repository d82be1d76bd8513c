"""State shared by the segment mappers while one message is mapped."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from typing import Any

from mappers.hl7v2.datatypes import parse_ts
from mappers.hl7v2.errors import DATA_TYPE_ERROR, SEGMENT_SEQUENCE_ERROR, Hl7v2Error
from mappers.hl7v2.parse import Message, Segment
from mappers.hl7v2.result import MergePlan

JsonDict = dict[str, Any]

# Entry order in the Bundle: a resource comes after everything it references.
_TYPE_ORDER = {
    name: rank
    for rank, name in enumerate(
        (
            "Patient",
            "Encounter",
            "ServiceRequest",
            "Specimen",
            "Observation",
            "DiagnosticReport",
            "Immunization",
            "DocumentReference",
            "Appointment",
            "AllergyIntolerance",
            "Condition",
            "Provenance",
        )
    )
}


@dataclass(frozen=True, slots=True)
class MappingOptions:
    """Per-sender settings. `assume_tz` reads HL7 times that carry no UTC offset."""

    assume_tz: tzinfo = UTC


@dataclass
class MappingContext:
    message: Message
    options: MappingOptions
    sender: str  # MSH-3 + MSH-4: namespace for ids that are only unique per sender
    resources: dict[str, JsonDict] = field(default_factory=dict)  # "Type/id" → resource
    plans: dict[str, MergePlan] = field(default_factory=dict)
    warnings: list[Hl7v2Error] = field(default_factory=list)
    patient_ref: str | None = None
    encounter_ref: str | None = None

    def put(self, resource: JsonDict, plan: MergePlan | None = None) -> str:
        """Add (or replace) a resource; returns its `Type/id` reference."""
        ref = f"{resource['resourceType']}/{resource['id']}"
        self.resources[ref] = resource
        if plan is not None:
            self.plans[ref] = plan
        return ref

    def get(self, ref: str) -> JsonDict | None:
        return self.resources.get(ref)

    def ts(self, seg: Segment, n: int, component: int = 1) -> str | None:
        """Field n as FHIR date/dateTime; malformed → AE naming the field."""
        raw = seg.text(n, component)
        if not raw:
            return None
        try:
            return parse_ts(raw, self.options.assume_tz)
        except ValueError as exc:
            raise Hl7v2Error(
                f"{seg.location}-{n}: {exc}",
                segment=seg.name,
                occurrence=seg.occurrence,
                field=n,
                error_code=DATA_TYPE_ERROR,
            ) from None

    def instant(self, seg: Segment, n: int, component: int = 1) -> str | None:
        """Like `ts`, but only a value precise to the second qualifies for an FHIR instant."""
        value = self.ts(seg, n, component)
        return value if value and "T" in value else None

    def subject(self) -> JsonDict:
        if self.patient_ref is None:
            raise Hl7v2Error(
                "the message has no PID segment to say whom it is about",
                segment="PID",
                error_code=SEGMENT_SEQUENCE_ERROR,
            )
        return {"reference": self.patient_ref}

    def ordered_entries(self) -> list[JsonDict]:
        refs = sorted(
            self.resources,
            key=lambda r: _TYPE_ORDER.get(self.resources[r]["resourceType"], len(_TYPE_ORDER)),
        )
        return [
            {"resource": self.resources[ref], "request": {"method": "PUT", "url": ref}}
            for ref in refs
        ]

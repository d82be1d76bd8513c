"""PV1 / PV2 → Encounter, with the visit state implied by the ADT trigger event.

The Encounter id is a hash of the visit number (PV1-19, scoped to its authority or the sender);
without one, of the patient and admit time (PV1-44); failing both, of the message itself.
"""

from __future__ import annotations

from typing import Any

from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import (
    codeable_concept,
    hd_key,
    identifier,
    practitioner_reference,
    table_coding,
)
from mappers.hl7v2.ids import stable_id
from mappers.hl7v2.parse import Segment, component_text
from mappers.hl7v2.result import MergePlan
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"

# ADT trigger → (Encounter.status, paths the event removes). None: the message does not say.
EVENT_STATUS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "A01": ("in-progress", ()),
    "A02": ("in-progress", ()),
    "A03": ("finished", ()),
    "A04": ("in-progress", ()),
    "A05": ("planned", ()),
    "A06": ("in-progress", ()),
    "A07": ("in-progress", ()),
    "A08": (None, ()),
    "A11": ("cancelled", ()),
    "A12": ("in-progress", ()),
    "A13": ("in-progress", ("period.end",)),
}

_PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
)


def _location_display(raw: str, seg: Segment) -> str:
    enc = seg.encoding
    parts = [component_text(raw, i, enc) for i in (4, 7, 8, 1, 2, 3)]
    labels = ("", "Building ", "Floor ", "", "Room ", "Bed ")
    return ", ".join(f"{label}{p}" for label, p in zip(labels, parts, strict=True) if p)


def map_encounter(
    ctx: MappingContext, pv1: Segment, pv2: Segment | None, event: str | None
) -> str | None:
    """Map PV1/PV2; returns `Encounter/<id>`, or None when PV1 carries no visit."""
    enc = pv1.encoding
    subject = ctx.subject()
    patient_class = pv1.text(2).upper()
    visit = pv1.reps(19)
    admit = ctx.ts(pv1, 44)
    discharge = ctx.ts(pv1, 45)
    if not (patient_class or visit or admit or pv1.text(3)):
        return None
    if visit:
        parts = visit[0].split(enc.component)
        authority = hd_key(parts[3], enc) if len(parts) > 3 else ""
        encounter_id = stable_id(
            "Encounter", authority or ctx.sender, component_text(visit[0], 1, enc)
        )
    elif admit:
        encounter_id = stable_id("Encounter", subject["reference"], admit)
    else:
        encounter_id = stable_id(
            "Encounter", ctx.sender, ctx.message.control_id, str(pv1.occurrence)
        )

    status, removed = EVENT_STATUS.get(event or "", (None, ()))
    fill_only: set[str] = set()
    if status is None:
        status = "finished" if discharge else "in-progress"
        fill_only.add("status")
    encounter: JsonDict = {"resourceType": "Encounter", "id": encounter_id, "status": status}
    mapped = (
        translate("v2-0004-to-encounter-class", "HL70004", patient_class) if patient_class else None
    )
    if mapped:
        encounter["class"] = mapped.as_dict()
    elif patient_class:
        encounter["class"] = table_coding(patient_class, "0004")
    else:
        encounter["class"] = {
            "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
            "code": "UNK",
            "display": "unknown",
        }
        fill_only.add("class")
    identifiers = [i for i in (identifier(cx, enc) for cx in visit) if i]
    if identifiers:
        encounter["identifier"] = identifiers
    admission_type = pv1.text(4)
    if admission_type:
        encounter["type"] = [{"coding": [table_coding(admission_type, "0007")]}]
    service = pv1.text(10)
    if service:
        encounter["serviceType"] = {"coding": [table_coding(service, "0069")]}
    encounter["subject"] = subject
    period: JsonDict = {}
    if admit:
        period["start"] = admit
    if discharge and "period.end" not in removed:
        period["end"] = discharge
    if period:
        encounter["period"] = period
    participants = []
    for field_no, code, display in _PARTICIPANTS:
        for rep in pv1.reps(field_no):
            who = practitioner_reference(rep, enc)
            if who:
                participants.append(
                    {
                        "type": [
                            {
                                "coding": [
                                    {"system": V3_PARTICIPATION, "code": code, "display": display}
                                ]
                            }
                        ],
                        "individual": who,
                    }
                )
    if participants:
        encounter["participant"] = participants
    locations = []
    for field_no, loc_status in ((3, "active"), (6, "completed"), (11, "active")):
        raw = pv1.field(field_no).split(enc.repetition)[0] if pv1.field(field_no) != '""' else ""
        display = _location_display(raw, pv1) if raw else ""
        if display:
            locations.append({"location": {"display": display}, "status": loc_status})
    if locations:
        encounter["location"] = locations
    hospitalization = _hospitalization(pv1)
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    if pv2 is not None:
        reason = codeable_concept(pv2.reps(3)[0], enc) if pv2.reps(3) else None
        if reason:
            encounter["reasonCode"] = [reason]
    plan = MergePlan(cleared=frozenset(removed), fill_only=frozenset(fill_only))
    ref = ctx.put(encounter, plan)
    ctx.encounter_ref = ref
    return ref


def _hospitalization(pv1: Segment) -> JsonDict:
    enc = pv1.encoding
    out: JsonDict = {}
    pre_admit = identifier(pv1.reps(5)[0], enc) if pv1.reps(5) else None
    if pre_admit:
        out["preAdmissionIdentifier"] = pre_admit
    for field_no, table, key in (
        (13, "0092", "reAdmission"),
        (14, "0023", "admitSource"),
        (36, "0112", "dischargeDisposition"),
    ):
        code = pv1.text(field_no)
        if code:
            out[key] = {"coding": [table_coding(code, table)]}
    diet = pv1.text(38)
    if diet:
        out["dietPreference"] = [{"coding": [table_coding(diet, "0114")]}]
    return out

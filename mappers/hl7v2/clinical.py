"""AL1, DG1, RXA/RXR, TXA and SCH/AIS → AllergyIntolerance, Condition, Immunization,
DocumentReference and Appointment."""

from __future__ import annotations

import base64
from typing import Any

from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import (
    codeable_concept,
    number,
    practitioner_reference,
    quantity,
    table_coding,
)
from mappers.hl7v2.errors import DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, Hl7v2Error
from mappers.hl7v2.ids import stable_id
from mappers.hl7v2.orders import ed_attachment
from mappers.hl7v2.parse import Segment, component_text
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"


def _required(seg: Segment, n: int, what: str) -> Hl7v2Error:
    return Hl7v2Error(
        f"{seg.location}-{n} ({what}) is required",
        segment=seg.name,
        occurrence=seg.occurrence,
        field=n,
        error_code=REQUIRED_FIELD_MISSING,
    )


def _concept(seg: Segment, n: int) -> JsonDict | None:
    reps = seg.reps(n)
    return codeable_concept(reps[0], seg.encoding) if reps else None


def _concept_key(concept: JsonDict) -> str:
    coding = (concept.get("coding") or [{}])[0]
    return f"{coding.get('system', '')}|{coding.get('code', '')}|{concept.get('text', '')}"


def map_allergy(ctx: MappingContext, al1: Segment) -> None:
    """AL1 → AllergyIntolerance, one per patient and allergen (re-sent lists update in place)."""
    code = _concept(al1, 3)
    if not code:
        raise _required(al1, 3, "allergen code")
    subject = ctx.subject()
    allergy: JsonDict = {
        "resourceType": "AllergyIntolerance",
        "id": stable_id("AllergyIntolerance", subject["reference"], _concept_key(code)),
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
        "code": code,
        "patient": subject,
    }
    kind = al1.text(2).upper()
    category = translate("v2-0127-to-allergy-category", "HL70127", kind) if kind else None
    if category:
        allergy["category"] = [category.code]
    onset = ctx.ts(al1, 6)
    if onset:
        allergy["onsetDateTime"] = onset
    reactions = [
        r
        for r in (
            component_text(rep, 1, al1.encoding) or component_text(rep, 2, al1.encoding)
            for rep in al1.reps(5)
        )
        if r
    ]
    if reactions:
        reaction: JsonDict = {"manifestation": [{"text": text} for text in reactions]}
        severity_code = al1.text(4).upper()
        severity = (
            translate("v2-0128-to-reaction-severity", "HL70128", severity_code)
            if severity_code
            else None
        )
        if severity:
            reaction["severity"] = severity.code
        allergy["reaction"] = [reaction]
    ctx.put(allergy)


def map_diagnosis(ctx: MappingContext, dg1: Segment) -> None:
    """DG1 → Condition (encounter-diagnosis), keyed on the visit (or patient) and the code."""
    code = _concept(dg1, 3)
    if not code and dg1.text(4):
        code = {"text": dg1.text(4)}
    if not code:
        raise _required(dg1, 3, "diagnosis code")
    scope = ctx.encounter_ref or ctx.subject()["reference"]
    condition: JsonDict = {
        "resourceType": "Condition",
        "id": stable_id("Condition", scope, _concept_key(code)),
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": code,
        "subject": ctx.subject(),
    }
    if ctx.encounter_ref:
        condition["encounter"] = {"reference": ctx.encounter_ref}
    onset = ctx.ts(dg1, 5)
    if onset:
        condition["onsetDateTime"] = onset
    recorded = ctx.ts(dg1, 19)
    if recorded:
        condition["recordedDate"] = recorded
    ctx.put(condition)


def map_immunization(
    ctx: MappingContext, rxa: Segment, orc: Segment | None, rxr: Segment | None
) -> str:
    """RXA (+ORC filler number, +RXR route/site) → Immunization."""
    enc = rxa.encoding
    vaccine = _concept(rxa, 5)
    if not vaccine:
        raise _required(rxa, 5, "administered code")
    occurred = ctx.ts(rxa, 3)
    if not occurred:
        raise _required(rxa, 3, "date/time start of administration")
    subject = ctx.subject()
    filler = component_text(orc.field(3), 1, enc) if orc is not None and orc.field(3) else ""
    if filler:
        authority = component_text(orc.field(3), 2, enc) if orc is not None else ""
        immunization_id = stable_id("Immunization", authority or ctx.sender, filler)
    else:
        immunization_id = stable_id(
            "Immunization", subject["reference"], _concept_key(vaccine), occurred
        )
    completion = rxa.text(20).upper()
    status = (
        translate("v2-0322-to-immunization-status", "HL70322", completion) if completion else None
    )
    immunization: JsonDict = {
        "resourceType": "Immunization",
        "id": immunization_id,
        "status": status.code if status else "completed",
        "vaccineCode": vaccine,
        "patient": subject,
        "occurrenceDateTime": occurred,
    }
    if ctx.encounter_ref:
        immunization["encounter"] = {"reference": ctx.encounter_ref}
    if filler:
        immunization["identifier"] = [{"value": filler}]
    amount = rxa.text(6)
    if amount and amount != "999":
        try:
            immunization["doseQuantity"] = quantity(number(amount), rxa.field(7), enc)
        except ValueError:
            raise Hl7v2Error(
                f"{rxa.location}-6: {amount!r} is not a number",
                segment="RXA",
                occurrence=rxa.occurrence,
                field=6,
                error_code=DATA_TYPE_ERROR,
            ) from None
    source = rxa.text(9)
    if source in ("00", "01"):
        immunization["primarySource"] = source == "00"
    performers = [p for p in (practitioner_reference(r, enc) for r in rxa.reps(10)) if p]
    if performers:
        immunization["performer"] = [{"actor": p} for p in performers]
    lot = rxa.text(15)
    if lot:
        immunization["lotNumber"] = lot
    expiry = ctx.ts(rxa, 16)
    if expiry:
        immunization["expirationDate"] = expiry[:10]
    manufacturer = rxa.text(17, 2) or rxa.text(17, 1)
    if manufacturer:
        immunization["manufacturer"] = {"display": manufacturer}
    reason = _concept(rxa, 18)
    if reason and immunization["status"] == "not-done":
        immunization["statusReason"] = reason
    if rxr is not None:
        route = _concept(rxr, 1)
        if route:
            immunization["route"] = route
        site = _concept(rxr, 2)
        if site:
            immunization["site"] = site
    return ctx.put(immunization)


def map_document(ctx: MappingContext, txa: Segment, observations: list[Segment]) -> None:
    """TXA + its OBX (TX/ST/FT lines or ED payloads) → DocumentReference."""
    enc = txa.encoding
    number_raw = txa.field(12).split(enc.repetition)[0] if txa.field(12) else ""
    unique = component_text(number_raw, 1, enc)
    if unique:
        document_id = stable_id(
            "DocumentReference", component_text(number_raw, 2, enc) or ctx.sender, unique
        )
    else:
        document_id = stable_id(
            "DocumentReference", ctx.sender, ctx.message.control_id, str(txa.occurrence)
        )
    attachments: list[JsonDict] = []
    lines: list[str] = []
    for obx in observations:
        if obx.text(2).upper() == "ED":
            attachment = ed_attachment(obx)
            if attachment:
                attachments.append(attachment)
        else:
            lines.extend(obx.encoding.unescape(r.replace(enc.component, " ")) for r in obx.reps(5))
    if lines:
        text = "\n".join(lines).encode("utf-8")
        attachments.insert(
            0,
            {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(text).decode("ascii"),
            },
        )
    if not attachments:
        raise Hl7v2Error(
            f"{txa.location}: the document has no OBX content",
            segment="OBX",
            error_code=REQUIRED_FIELD_MISSING,
        )
    document: JsonDict = {
        "resourceType": "DocumentReference",
        "id": document_id,
        "status": "current",
        "subject": ctx.subject(),
        "content": [{"attachment": a} for a in attachments],
    }
    if unique:
        document["masterIdentifier"] = {"value": unique}
    completion = txa.text(17).upper()
    doc_status = (
        translate("v2-0271-to-composition-status", "HL70271", completion) if completion else None
    )
    if doc_status:
        document["docStatus"] = doc_status.code
    kind = txa.text(2)
    if kind:
        document["type"] = {"coding": [table_coding(kind, "0270")]}
    created = ctx.instant(txa, 4) or ctx.instant(txa, 6)
    if created:
        document["date"] = created
    authors = [a for a in (practitioner_reference(r, enc) for r in txa.reps(9) or txa.reps(5)) if a]
    if authors:
        document["author"] = authors
    if ctx.encounter_ref:
        document["context"] = {"encounter": [{"reference": ctx.encounter_ref}]}
    ctx.put(document)


def map_appointment(
    ctx: MappingContext, sch: Segment, services: list[Segment], resources: list[Segment]
) -> None:
    """SCH + AIS (+AIG/AIL/AIP) → Appointment."""
    enc = sch.encoding
    placer = component_text(sch.field(1), 1, enc) if sch.field(1) else ""
    filler = component_text(sch.field(2), 1, enc) if sch.field(2) else ""
    if filler:
        appointment_id = stable_id(
            "Appointment", component_text(sch.field(2), 2, enc) or ctx.sender, "F", filler
        )
    elif placer:
        appointment_id = stable_id(
            "Appointment", component_text(sch.field(1), 2, enc) or ctx.sender, "P", placer
        )
    else:
        raise _required(sch, 2, "filler appointment id")
    status_code = sch.text(25)
    status = (
        translate("v2-0278-to-appointment-status", "HL70278", status_code) if status_code else None
    )
    appointment: JsonDict = {
        "resourceType": "Appointment",
        "id": appointment_id,
        "status": status.code if status else "booked",
        "identifier": [{"value": v} for v in (placer, filler) if v],
    }
    reason = _concept(sch, 7)
    if reason:
        appointment["reasonCode"] = [reason]
    kind = _concept(sch, 8)
    if kind:
        appointment["appointmentType"] = kind
    start = ctx.instant(sch, 11, 4)
    end = ctx.instant(sch, 11, 5)
    service_types = []
    for ais in services:
        service = _concept(ais, 3)
        if service:
            service_types.append(service)
        start = start or ctx.instant(ais, 4)
    if service_types:
        appointment["serviceType"] = service_types
    if start:
        appointment["start"] = start
    if end:
        appointment["end"] = end
    participants: list[JsonDict] = []
    if ctx.patient_ref:
        participants.append({"actor": {"reference": ctx.patient_ref}, "status": "accepted"})
    for seg in resources:
        field_no = 3 if seg.name in ("AIG", "AIL", "AIP") else 0
        raw = seg.field(field_no).split(enc.repetition)[0] if field_no else ""
        who = practitioner_reference(raw, enc) if seg.name == "AIP" else None
        display = (
            (who or {}).get("display") or component_text(raw, 2, enc) or component_text(raw, 1, enc)
        )
        if display:
            participants.append({"actor": {"display": display}, "status": "accepted"})
    if not participants:
        raise Hl7v2Error(
            "the appointment has no patient (PID) or resource",
            segment="PID",
            error_code=REQUIRED_FIELD_MISSING,
        )
    appointment["participant"] = participants
    ctx.put(appointment)

"""ORC / OBR / OBX / NTE / SPM → ServiceRequest, DiagnosticReport, Observation, Specimen.

Order ids come from the filler order number (else placer), scoped to its assigning namespace or
the sender, so a corrected result (same order, OBX-11 = C) overwrites the first one. An OBX is
identified by its order and its position in the order group.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import codeable_concept, practitioner_reference
from mappers.hl7v2.errors import DATA_TYPE_ERROR, REQUIRED_FIELD_MISSING, Hl7v2Error
from mappers.hl7v2.ids import stable_id
from mappers.hl7v2.observations import map_observation
from mappers.hl7v2.parse import Segment, component_text
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ED_MEDIA_TYPES = {"AP": "application", "IM": "image", "AU": "audio", "TEXT": "text", "TX": "text"}


@dataclass
class OrderGroup:
    key: str
    request: JsonDict
    report: JsonDict | None = None
    observations: list[JsonDict] = field(default_factory=list)
    obx_count: int = 0


@dataclass
class OrderState:
    """Where the walker is inside the order/result structure of the message."""

    orc: Segment | None = None
    group: OrderGroup | None = None
    note_target: JsonDict | None = None
    loose_obx: int = 0
    attachments: list[JsonDict] = field(default_factory=list)


def _ei(raw: str, seg: Segment) -> tuple[str, str]:
    """(entity id, namespace) of an EI field (universal id preferred over namespace)."""
    enc = seg.encoding
    return component_text(raw, 1, enc), component_text(raw, 3, enc) or component_text(raw, 2, enc)


def _order_identifiers(placer: tuple[str, str], filler: tuple[str, str]) -> list[JsonDict]:
    out = []
    for (value, namespace), code in ((placer, "PLAC"), (filler, "FILL")):
        if value:
            ident: JsonDict = {
                "type": {"coding": [{"system": V2_0203, "code": code}]},
                "value": value,
            }
            if namespace:
                ident["assigner"] = {"display": namespace}
            out.append(ident)
    return out


def _order_number(obr: Segment | None, orc: Segment | None, n: int) -> str:
    """Placer (2) or filler (3) number: OBR's when given, else the ORC's (same positions)."""
    if obr is not None and obr.field(n):
        return obr.field(n)
    return orc.field(n) if orc is not None else ""


def _request_status(orc: Segment | None) -> str:
    if orc is None:
        return "unknown"
    order_status = orc.text(5).upper()
    if order_status:
        mapped = translate("v2-0038-to-request-status", "HL70038", order_status)
        if mapped:
            return mapped.code
    control = orc.text(1).upper()
    mapped = translate("v2-0119-to-request-status", "HL70119", control) if control else None
    return mapped.code if mapped else "unknown"


def start_order(
    ctx: MappingContext, state: OrderState, obr: Segment | None, with_report: bool
) -> OrderGroup:
    """ORC (+ OBR) → ServiceRequest, and DiagnosticReport for results messages."""
    orc = state.orc
    anchor = obr or orc
    assert anchor is not None, "an order starts at an ORC or an OBR"
    placer = _ei(_order_number(obr, orc, 2), anchor)
    filler = _ei(_order_number(obr, orc, 3), anchor)
    if filler[0]:
        key = stable_id("order", filler[1] or ctx.sender, "F", filler[0])
    elif placer[0]:
        key = stable_id("order", placer[1] or ctx.sender, "P", placer[0])
    else:
        key = stable_id(
            "order", ctx.sender, ctx.message.control_id, anchor.name, str(anchor.occurrence)
        )
    # An OBR group needs its own key even when several OBRs share one ORC's numbers.
    if obr is not None and ctx.get(f"ServiceRequest/{key}") is not None and obr.field(4):
        key = stable_id("order", key, obr.text(4, 1), str(obr.occurrence))
    request: JsonDict = ctx.get(f"ServiceRequest/{key}") or {
        "resourceType": "ServiceRequest",
        "id": key,
        "status": _request_status(orc),
        "intent": "order",
    }
    identifiers = _order_identifiers(placer, filler)
    if identifiers:
        request["identifier"] = identifiers
    enc = anchor.encoding
    code = (
        codeable_concept(obr.field(4).split(enc.repetition)[0], enc)
        if obr and obr.field(4)
        else None
    )
    if code:
        request["code"] = code
    request["subject"] = ctx.subject()
    if ctx.encounter_ref:
        request["encounter"] = {"reference": ctx.encounter_ref}
    if orc is not None:
        authored = ctx.ts(orc, 9)
        if authored:
            request["authoredOn"] = authored
    requester_raw = (orc.reps(12) if orc else []) or (obr.reps(16) if obr else [])
    requester = practitioner_reference(requester_raw[0], enc) if requester_raw else None
    if requester:
        request["requester"] = requester
    reasons = [c for c in (codeable_concept(r, enc) for r in (obr.reps(31) if obr else [])) if c]
    if reasons:
        request["reasonCode"] = reasons
    ctx.put(request)
    group = OrderGroup(key=key, request=request)
    if with_report and obr is not None:
        group.report = _report(ctx, obr, key)
    state.group = group
    state.note_target = request
    return group


def _report(ctx: MappingContext, obr: Segment, key: str) -> JsonDict:
    enc = obr.encoding
    code = codeable_concept(obr.field(4).split(enc.repetition)[0], enc) if obr.field(4) else None
    if not code:
        raise Hl7v2Error(
            f"{obr.location}-4 (universal service identifier) is required for a result",
            segment="OBR",
            occurrence=obr.occurrence,
            field=4,
            error_code=REQUIRED_FIELD_MISSING,
        )
    status_code = obr.text(25).upper()
    mapped = (
        translate("v2-0123-to-diagnostic-report-status", "HL70123", status_code)
        if status_code
        else None
    )
    report: JsonDict = {
        "resourceType": "DiagnosticReport",
        "id": key,
        "status": mapped.code if mapped else "unknown",
        "code": code,
        "subject": ctx.subject(),
        "basedOn": [{"reference": f"ServiceRequest/{key}"}],
    }
    if ctx.encounter_ref:
        report["encounter"] = {"reference": ctx.encounter_ref}
    effective = ctx.ts(obr, 7)
    if effective:
        report["effectiveDateTime"] = effective
    issued = ctx.instant(obr, 22)
    if issued:
        report["issued"] = issued
    interpreters = [p for p in (practitioner_reference(r, enc) for r in obr.reps(32)) if p]
    if interpreters:
        report["resultsInterpreter"] = interpreters
    ctx.put(report)
    return report


def _narrative_only(ctx: MappingContext, state: OrderState, obx: Segment) -> bool:
    """An OBX with no OBX-3 that is report narrative (TX/FT/ST) or an ED payload.

    Text reports often send their narrative as uncoded OBX lines, and documents as an uncoded
    ED: those become DiagnosticReport.conclusion / presentedForm, not Observations.
    """
    if obx.field(3):
        return False
    value_type = obx.text(2).upper()
    report = state.group.report if state.group is not None else None
    if value_type == "ED":
        attachment = ed_attachment(obx)
        if report is not None and attachment:
            report.setdefault("presentedForm", []).append(attachment)
        elif attachment:
            ctx.warnings.append(
                Hl7v2Error(
                    "ED value outside a result group was not kept",
                    segment="OBX",
                    occurrence=obx.occurrence,
                    field=5,
                )
            )
        return True
    if value_type in ("TX", "FT", "ST") and report is not None:
        enc = obx.encoding
        lines = [enc.unescape(r.replace(enc.component, " ")).strip() for r in obx.reps(5)]
        text = "\n".join(line for line in lines if line)
        if text:
            previous = report.get("conclusion")
            report["conclusion"] = f"{previous}\n{text}" if previous else text
        return True
    return False


def add_observation(
    ctx: MappingContext, state: OrderState, obx: Segment, part_of: str | None = None
) -> JsonDict | None:
    if _narrative_only(ctx, state, obx):
        return None
    group = state.group
    if group is not None:
        group.obx_count += 1
        observation_id = stable_id("Observation", group.key, str(group.obx_count))
        fallback = group.report.get("effectiveDateTime") if group.report else None
    else:
        state.loose_obx += 1
        scope = part_of or ctx.sender + "\x1f" + ctx.message.control_id
        observation_id = stable_id("Observation", scope, str(state.loose_obx))
        fallback = None
    observation = map_observation(ctx, obx, observation_id, fallback)
    if group is not None:
        observation["basedOn"] = [{"reference": f"ServiceRequest/{group.key}"}]
        group.observations.append(observation)
        if group.report is not None:
            group.report.setdefault("result", []).append(
                {"reference": f"Observation/{observation_id}"}
            )
    if part_of:
        observation["partOf"] = [{"reference": part_of}]
    if obx.text(2).upper() == "ED":
        attachment = ed_attachment(obx)
        if attachment:
            state.attachments.append(attachment)
            if group is not None and group.report is not None:
                group.report.setdefault("presentedForm", []).append(attachment)
    ctx.put(observation)
    state.note_target = observation
    return observation


def ed_attachment(obx: Segment) -> JsonDict | None:
    """OBX-5 of type ED (source^type^subtype^encoding^data) → Attachment."""
    enc = obx.encoding
    reps = obx.reps(5)
    if not reps:
        return None
    media = _ED_MEDIA_TYPES.get(component_text(reps[0], 2, enc).upper(), "application")
    subtype = component_text(reps[0], 3, enc).lower() or "octet-stream"
    encoding = component_text(reps[0], 4, enc).upper()
    data = component_text(reps[0], 5, enc)
    if not data:
        return None
    if encoding != "BASE64":
        data = base64.b64encode(data.encode("utf-8")).decode("ascii")
    else:
        data = "".join(data.split())
        try:
            base64.b64decode(data, validate=True)
        except ValueError:  # binascii.Error, or a character outside ASCII
            raise Hl7v2Error(
                f"{obx.location}-5: ED data declared Base64 is not valid Base64",
                segment="OBX",
                occurrence=obx.occurrence,
                field=5,
                component=5,
                error_code=DATA_TYPE_ERROR,
            ) from None
    return {"contentType": f"{media}/{subtype}", "data": data}


def add_note(state: OrderState, nte: Segment) -> None:
    text = "\n".join(
        nte.encoding.unescape(r.replace(nte.encoding.component, " ")).strip() for r in nte.reps(3)
    ).strip()
    target = state.note_target
    if (
        not text
        or target is None
        or target["resourceType"] not in ("Observation", "ServiceRequest")
    ):
        return
    target.setdefault("note", []).append({"text": text})


def add_specimen(ctx: MappingContext, state: OrderState, spm: Segment) -> None:
    enc = spm.encoding
    ids = spm.field(2).split(enc.component) if spm.field(2) else []
    # SPM-2 is EIP: placer EI ^ filler EI, each with subcomponents.
    specimen_ident = ""
    namespace = ""
    for part in ids:
        subs = part.split(enc.subcomponent)
        if subs and subs[0]:
            specimen_ident = enc.unescape(subs[0])
            namespace = enc.unescape(
                subs[2] if len(subs) > 2 and subs[2] else (subs[1] if len(subs) > 1 else "")
            )
    group = state.group
    if specimen_ident:
        specimen_id = stable_id("Specimen", namespace or ctx.sender, specimen_ident)
        if group is not None and ctx.get(f"Specimen/{specimen_id}") is not None:
            specimen_id = stable_id("Specimen", specimen_id, group.key)
    else:
        scope = group.key if group else ctx.sender + ctx.message.control_id
        specimen_id = stable_id("Specimen", scope, str(spm.occurrence))
    specimen: JsonDict = {"resourceType": "Specimen", "id": specimen_id, "subject": ctx.subject()}
    if specimen_ident:
        specimen["identifier"] = [{"value": specimen_ident}]
    kind = codeable_concept(spm.field(4).split(enc.repetition)[0], enc) if spm.field(4) else None
    if kind:
        specimen["type"] = kind
    collected = ctx.ts(spm, 17)
    if collected:
        specimen["collection"] = {"collectedDateTime": collected}
    received = ctx.ts(spm, 18)
    if received:
        specimen["receivedTime"] = received
    ref = f"Specimen/{specimen_id}"
    if group is not None:
        specimen["request"] = [{"reference": f"ServiceRequest/{group.key}"}]
        if group.report is not None:
            group.report.setdefault("specimen", []).append({"reference": ref})
        for observation in group.observations:
            observation.setdefault("specimen", {"reference": ref})
    ctx.put(specimen)

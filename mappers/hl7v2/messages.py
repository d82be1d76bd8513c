"""`map_message`: one HL7 v2 message → a FHIR transaction Bundle (pure, no I/O).

A single pass over the segments, each handed to its segment mapper; the message type only
decides which segments are expected (PID for ADT, MRG for merges) and what an ADT event means
for the visit. Z-segments are not interpreted: they are kept verbatim in the Provenance's source
entity (`extension` HL7V2_Z_SEGMENT) and in `MappingResult.z_segments`, next to the raw payload
(Binary) that holds them byte for byte.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from mappers.hl7v2.clinical import (
    map_allergy,
    map_appointment,
    map_diagnosis,
    map_document,
    map_immunization,
)
from mappers.hl7v2.context import MappingContext, MappingOptions
from mappers.hl7v2.datatypes import hd_system, parse_ts
from mappers.hl7v2.encounter import map_encounter
from mappers.hl7v2.errors import (
    APPLICATION_INTERNAL_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    UNSUPPORTED_EVENT_CODE,
    Hl7v2Error,
    UnparseableMessage,
    UnsupportedMessage,
)
from mappers.hl7v2.ids import stable_id
from mappers.hl7v2.orders import OrderState, add_note, add_observation, add_specimen, start_order
from mappers.hl7v2.parse import Message, Segment, parse_message
from mappers.hl7v2.patient import map_merge, map_patient
from mappers.hl7v2.result import MappingResult, MergeInstruction

JsonDict = dict[str, Any]
log = logging.getLogger(__name__)

HL7V2_Z_SEGMENT = "urn:hestia:fhir:StructureDefinition:hl7v2-z-segment"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

SUPPORTED: dict[str, frozenset[str]] = {
    "ADT": frozenset(
        {
            "A01",
            "A02",
            "A03",
            "A04",
            "A05",
            "A06",
            "A07",
            "A08",
            "A11",
            "A12",
            "A13",
            "A28",
            "A31",
            "A34",
            "A40",
        }
    ),
    "ORU": frozenset({"R01"}),
    "ORM": frozenset({"O01"}),
    "OML": frozenset({"O21"}),
    "VXU": frozenset({"V04"}),
    "MDM": frozenset({"T02"}),
    "SIU": frozenset({"S12"}),
}
_PERSON_ONLY = frozenset({"A28", "A31", "A34", "A40"})
_MERGES = frozenset({"A34", "A40"})


class InternalMappingError(Hl7v2Error):
    """A defect in this mapper, not in the message. Tests assert it never happens."""


def supported_message_types() -> list[str]:
    return sorted(f"{code}^{event}" for code, events in SUPPORTED.items() for event in events)


def _event_of(message: Message) -> tuple[str, str]:
    code = message.message_code
    event = message.trigger_event
    if not event:
        evn = message.first("EVN")
        event = evn.text(1).upper() if evn else ""
    if not code:
        raise UnparseableMessage("MSH-9 (message type) is empty", field=9)
    if code not in SUPPORTED:
        raise UnsupportedMessage(f"message type {code} is not supported")
    if event not in SUPPORTED[code]:
        raise UnsupportedMessage(
            f"trigger event {code}^{event or '(none)'} is not supported",
            error_code=UNSUPPORTED_EVENT_CODE,
        )
    return code, event


def _next(segments: list[Segment], i: int, name: str) -> Segment | None:
    return segments[i + 1] if i + 1 < len(segments) and segments[i + 1].name == name else None


def _walk(ctx: MappingContext, code: str, event: str) -> tuple[list[MergeInstruction], list[str]]:
    segments = ctx.message.segments
    state = OrderState()
    merges: list[MergeInstruction] = []
    z_segments: list[str] = []
    immunization_ref: str | None = None
    txa: Segment | None = None
    document_obx: list[Segment] = []
    sch: Segment | None = None
    services: list[Segment] = []
    resources: list[Segment] = []
    for i, seg in enumerate(segments):
        name = seg.name
        if name == "PID":
            ctx.encounter_ref = None
            state = OrderState()
            map_patient(ctx, seg)
        elif name == "MRG" and event in _MERGES:
            if ctx.patient_ref is None:
                raise Hl7v2Error(
                    "MRG without a preceding PID", segment="MRG", error_code=SEGMENT_SEQUENCE_ERROR
                )
            merges.append(map_merge(ctx, seg, ctx.patient_ref))
        elif name == "PV1" and not (code == "ADT" and event in _PERSON_ONLY):
            map_encounter(ctx, seg, _next(segments, i, "PV2"), event if code == "ADT" else None)
        elif name == "ORC":
            state.orc, state.group = seg, None
            if code in ("ORM", "OML") and _next(segments, i, "OBR") is None:
                start_order(ctx, state, None, with_report=False)
        elif name == "OBR":
            start_order(ctx, state, seg, with_report=code == "ORU")
        elif name == "OBX":
            if code == "MDM":
                document_obx.append(seg)
            else:
                add_observation(ctx, state, seg, part_of=immunization_ref)
        elif name == "NTE":
            add_note(state, seg)
        elif name == "SPM":
            add_specimen(ctx, state, seg)
        elif name == "AL1":
            map_allergy(ctx, seg)
        elif name == "DG1":
            map_diagnosis(ctx, seg)
        elif name == "RXA":
            immunization_ref = map_immunization(ctx, seg, state.orc, _next(segments, i, "RXR"))
        elif name == "TXA":
            txa = seg
        elif name == "SCH":
            sch = seg
        elif name == "AIS":
            services.append(seg)
        elif name in ("AIG", "AIL", "AIP"):
            resources.append(seg)
        elif name.startswith("Z"):
            z_segments.append(ctx.message.encoding.field.join(seg.fields))
    if code == "ADT" and ctx.patient_ref is None:
        raise Hl7v2Error(
            "ADT message without a PID segment", segment="PID", error_code=SEGMENT_SEQUENCE_ERROR
        )
    if event in _MERGES and not merges:
        raise Hl7v2Error(
            f"{code}^{event} needs an MRG segment",
            segment="MRG",
            field=1,
            error_code=REQUIRED_FIELD_MISSING,
        )
    if code == "MDM":
        if txa is None:
            raise Hl7v2Error(
                "MDM message without a TXA segment",
                segment="TXA",
                error_code=SEGMENT_SEQUENCE_ERROR,
            )
        map_document(ctx, txa, document_obx)
    if code == "SIU":
        if sch is None:
            raise Hl7v2Error(
                "SIU message without an SCH segment",
                segment="SCH",
                error_code=SEGMENT_SEQUENCE_ERROR,
            )
        map_appointment(ctx, sch, services, resources)
    return merges, z_segments


def _provenance(
    ctx: MappingContext, event: str, raw_id: str, received_at: datetime, z_segments: list[str]
) -> JsonDict:
    msh = ctx.message.msh
    app, facility = msh.text(3), msh.text(4)
    who: JsonDict = {
        "type": "Device",
        "display": " @ ".join(p for p in (app, facility) if p) or "unknown sender",
    }
    if app:
        system = hd_system(msh.field(4), msh.encoding) if facility else None
        who["identifier"] = {"value": app, **({"system": system} if system else {})}
    agent: JsonDict = {
        "type": {
            "coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "author", "display": "Author"}]
        },
        "who": who,
    }
    if facility:
        agent["onBehalfOf"] = {"type": "Organization", "display": facility}
    entity: JsonDict = {"role": "source", "what": {"reference": f"Binary/{raw_id}"}}
    if z_segments:
        entity["extension"] = [{"url": HL7V2_Z_SEGMENT, "valueString": z} for z in z_segments]
    recorded = received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC)
    provenance: JsonDict = {
        "resourceType": "Provenance",
        "id": stable_id("Provenance", ctx.sender, ctx.message.control_id or raw_id),
        "target": [{"reference": ref} for ref in ctx.resources],
        "recorded": recorded.isoformat(),
        "activity": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0003", "code": event}]
        },
        "agent": [agent],
        "entity": [entity],
    }
    sent = msh.text(7)
    if sent:
        try:
            provenance["occurredDateTime"] = parse_ts(sent, ctx.options.assume_tz)
        except ValueError:
            ctx.warnings.append(
                Hl7v2Error(f"MSH-7 {sent!r} is not a valid date/time", segment="MSH", field=7)
            )
    return provenance


def map_parsed(
    message: Message, *, raw_id: str, received_at: datetime, options: MappingOptions | None = None
) -> MappingResult:
    code, event = _event_of(message)
    msh = message.msh
    ctx = MappingContext(
        message=message,
        options=options or MappingOptions(),
        sender=f"{msh.text(3)}\x1f{msh.text(4)}",
    )
    merges, z_segments = _walk(ctx, code, event)
    if not ctx.resources:
        raise Hl7v2Error(
            f"{code}^{event} carried nothing to map",
            segment="MSH",
            field=9,
            error_code=REQUIRED_FIELD_MISSING,
        )
    provenance = _provenance(ctx, event, raw_id, received_at, z_segments)
    ctx.put(provenance)
    bundle: JsonDict = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": ctx.ordered_entries(),
    }
    warnings = ctx.warnings + [Hl7v2Error(note, segment=None) for note in message.warnings]
    return MappingResult(
        bundle=bundle,
        message_type=f"{code}^{event}",
        control_id=message.control_id,
        merge_plans=dict(ctx.plans),
        patient_merges=merges,
        z_segments=z_segments,
        warnings=warnings,
    )


def map_message(
    raw: bytes, *, raw_id: str, received_at: datetime, options: MappingOptions | None = None
) -> MappingResult:
    """Map one HL7 v2 message. Raises only `Hl7v2Error` (its `ack_code` is AE or AR)."""
    try:
        return map_parsed(
            parse_message(raw), raw_id=raw_id, received_at=received_at, options=options
        )
    except Hl7v2Error:
        raise
    except Exception as exc:  # a mapper defect must still become an answer to the sender
        log.exception("HL7 v2 mapping failed unexpectedly")
        raise InternalMappingError(
            f"internal error while mapping: {type(exc).__name__}",
            error_code=APPLICATION_INTERNAL_ERROR,
        ) from exc

"""PID / PD1 / NK1 / MRG → Patient, with the merge plan for partial updates.

The Patient id is a hash of (assigning authority, MRN), so every message about the same person
updates the same resource. The MRN is the first PID-3 repetition typed MR, else the first
PID-3 repetition, else PID-2 or PID-4 (older senders). An identifier without an assigning
authority is scoped to the sending facility (MSH-4), which is what it means in practice.
"""

from __future__ import annotations

from typing import Any

from app.fhir.numbers import is_fhir_integer
from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import (
    address,
    codeable_concept,
    contact_point,
    hd_key,
    hd_system,
    human_name,
    identifier,
    table_coding,
)
from mappers.hl7v2.errors import REQUIRED_FIELD_MISSING, Hl7v2Error
from mappers.hl7v2.ids import stable_id
from mappers.hl7v2.parse import Encoding, Segment, component_text
from mappers.hl7v2.result import MergeInstruction, MergePlan
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
US_SSN = "http://hl7.org/fhir/sid/us-ssn"
CDCREC = "urn:oid:2.16.840.1.113883.6.238"
_OMB_RACE = frozenset({"1002-5", "2028-9", "2054-5", "2076-8", "2106-3", "UNK", "ASKU"})
_OMB_ETHNICITY = frozenset({"2135-2", "2186-5", "UNK", "ASKU"})
_CDCREC_NAMES = frozenset({"CDCREC", "HL70005", "HL70189", "2.16.840.1.113883.6.238"})

# PID field → the Patient paths an explicit `""` clears.
_CLEARABLE: dict[int, tuple[str, ...]] = {
    5: ("name",),
    20: ("identifier[type=DL]",),
    6: (f"extension[url={MOTHERS_MAIDEN_NAME}]",),
    7: ("birthDate",),
    8: ("gender",),
    10: (f"extension[url={US_CORE_RACE}]",),
    11: ("address",),
    13: ("telecom[use=home]", "telecom[use=mobile]"),
    14: ("telecom[use=work]",),
    15: ("communication",),
    16: ("maritalStatus",),
    19: (f"identifier[system={US_SSN}]",),
    22: (f"extension[url={US_CORE_ETHNICITY}]",),
    24: ("multipleBirthBoolean",),
    25: ("multipleBirthInteger",),
    29: ("deceasedDateTime",),
    30: ("deceasedBoolean",),
}


def _mrn(pid: Segment, facility: str) -> tuple[str, str, str] | None:
    """(authority, value, raw CX) of the identifier that keys the Patient."""
    enc = pid.encoding
    candidates = pid.reps(3)
    typed_mr = [cx for cx in candidates if component_text(cx, 5, enc).upper() == "MR"]
    for cx in [*typed_mr, *candidates, *pid.reps(2), *pid.reps(4)]:
        value = component_text(cx, 1, enc)
        if value:
            parts = cx.split(enc.component)
            authority = hd_key(parts[3], enc) if len(parts) > 3 else ""
            return authority or facility, value, cx
    return None


def patient_id_for(cx: str, enc: Encoding, facility: str) -> str:
    parts = cx.split(enc.component)
    authority = hd_key(parts[3], enc) if len(parts) > 3 else ""
    return stable_id("Patient", authority or facility, component_text(cx, 1, enc))


def _race_or_ethnicity(
    reps: list[str], enc: Encoding, url: str, omb: frozenset[str]
) -> JsonDict | None:
    parts: list[JsonDict] = []
    texts: list[str] = []
    for rep in reps:
        code = component_text(rep, 1, enc)
        text = component_text(rep, 2, enc)
        system = component_text(rep, 3, enc).upper()
        if code and system in _CDCREC_NAMES:
            coding = {"system": CDCREC, "code": code}
            if text:
                coding["display"] = text
            kind = "ombCategory" if code in omb else "detailed"
            parts.append({"url": kind, "valueCoding": coding})
        if text or code:
            texts.append(text or code)
    if not texts:
        return None
    parts.append({"url": "text", "valueString": ", ".join(texts)})
    return {"url": url, "extension": parts}


def map_patient(ctx: MappingContext, pid: Segment) -> str:
    """Map PID (and the PD1/NK1 that follow it) to a Patient entry; returns `Patient/<id>`."""
    enc = pid.encoding
    facility_raw = ctx.message.msh.field(4) or ctx.message.msh.field(3)
    facility = hd_key(facility_raw, enc)
    key = _mrn(pid, facility)
    if key is None:
        raise Hl7v2Error(
            "PID-3 has no patient identifier",
            segment="PID",
            occurrence=pid.occurrence,
            field=3,
            error_code=REQUIRED_FIELD_MISSING,
        )
    authority, value, _ = key
    default_system = hd_system(facility_raw, enc)
    patient: JsonDict = {"resourceType": "Patient", "id": stable_id("Patient", authority, value)}

    # PID-3 first (it holds the MRN), then the older external (PID-2) and alternate (PID-4) ids.
    identifiers: list[JsonDict] = []
    for field_no in (3, 2, 4):
        for cx in pid.reps(field_no):
            ident = identifier(cx, enc, default_system)
            if ident and ident not in identifiers:
                identifiers.append(ident)
    ssn = pid.text(19)
    if ssn:
        identifiers.append(
            {
                "system": US_SSN,
                "value": ssn,
                "type": {"coding": [table_coding("SS", "0203", "v2-0203-to-fhir")]},
            }
        )
    licence = pid.text(20)
    if licence:
        dl: JsonDict = {
            "value": licence,
            "type": {"coding": [table_coding("DL", "0203", "v2-0203-to-fhir")]},
        }
        issuer = pid.text(20, 2)
        if issuer:
            dl["assigner"] = {"display": issuer}
        identifiers.append(dl)
    patient["identifier"] = identifiers

    names = [n for n in (human_name(r, enc) for r in pid.reps(5)) if n]
    names += [n for n in (human_name(r, enc) for r in pid.reps(9)) if n]  # aliases
    if names:
        patient["name"] = names
    maiden = pid.text(6)
    extensions: list[JsonDict] = []
    if maiden:
        extensions.append({"url": MOTHERS_MAIDEN_NAME, "valueString": maiden})
    birth = ctx.ts(pid, 7)
    if birth:
        patient["birthDate"] = birth[:10]
    sex = pid.text(8)
    if sex:
        gender = translate("v2-0001-to-administrative-gender", "HL70001", sex.upper())
        patient["gender"] = gender.code if gender else "unknown"
    race = _race_or_ethnicity(pid.reps(10), enc, US_CORE_RACE, _OMB_RACE)
    if race:
        extensions.append(race)
    ethnicity = _race_or_ethnicity(pid.reps(22), enc, US_CORE_ETHNICITY, _OMB_ETHNICITY)
    if ethnicity:
        extensions.append(ethnicity)
    if extensions:
        patient["extension"] = extensions
    addresses = [a for a in (address(r, enc) for r in pid.reps(11)) if a]
    if addresses:
        patient["address"] = addresses
    telecom = [t for t in (contact_point(r, enc, "home") for r in pid.reps(13)) if t]
    telecom += [t for t in (contact_point(r, enc, "work") for r in pid.reps(14)) if t]
    if telecom:
        patient["telecom"] = telecom
    language = codeable_concept(pid.reps(15)[0], enc) if pid.reps(15) else None
    if language:
        patient["communication"] = [{"language": language, "preferred": True}]
    marital = pid.text(16)
    if marital:
        mapped = translate("v2-0002-to-marital-status", "HL70002", marital.upper())
        coding = mapped.as_dict() if mapped else table_coding(marital, "0002")
        patient["maritalStatus"] = {"coding": [coding]}
    multiple = pid.text(24).upper()
    order = pid.text(25)
    if order.isdigit() and is_fhir_integer(int(order)):
        patient["multipleBirthInteger"] = int(order)
    elif multiple in ("Y", "N"):
        patient["multipleBirthBoolean"] = multiple == "Y"
    deceased_at = ctx.ts(pid, 29)
    if deceased_at:
        patient["deceasedDateTime"] = deceased_at
    elif pid.text(30).upper() in ("Y", "N"):
        patient["deceasedBoolean"] = pid.text(30).upper() == "Y"

    contacts = [c for c in (_contact(seg) for seg in _following(ctx, pid, "NK1")) if c]
    if contacts:
        patient["contact"] = contacts

    cleared = {path for n, paths in _CLEARABLE.items() if pid.is_null(n) for path in paths}
    plan = MergePlan(cleared=frozenset(cleared))
    ref = ctx.put(patient, plan)
    ctx.patient_ref = ref
    return ref


def _following(ctx: MappingContext, anchor: Segment, name: str) -> list[Segment]:
    """Segments named `name` after `anchor` and before the next PID."""
    out: list[Segment] = []
    seen = False
    for seg in ctx.message.segments:
        if seg is anchor:
            seen = True
        elif seen and seg.name == "PID":
            break
        elif seen and seg.name == name:
            out.append(seg)
    return out


def _contact(nk1: Segment) -> JsonDict | None:
    enc = nk1.encoding
    contact: JsonDict = {}
    name = human_name(nk1.reps(2)[0], enc) if nk1.reps(2) else None
    if name:
        contact["name"] = name
    relationships = [c for c in (codeable_concept(r, enc) for r in nk1.reps(3)) if c]
    role = nk1.text(7)
    if role:
        relationships.append({"coding": [table_coding(role, "0131")]})
    if relationships:
        contact["relationship"] = relationships
    addresses = [a for a in (address(r, enc) for r in nk1.reps(4)) if a]
    if addresses:
        contact["address"] = addresses[0]
    telecom = [t for t in (contact_point(r, enc, "home") for r in nk1.reps(5)) if t]
    telecom += [t for t in (contact_point(r, enc, "work") for r in nk1.reps(6)) if t]
    if telecom:
        contact["telecom"] = telecom
    return contact or None


def map_merge(ctx: MappingContext, mrg: Segment, survivor_ref: str) -> MergeInstruction:
    """MRG (A40/A34): retire the prior Patient and link both ways."""
    enc = mrg.encoding
    prior = mrg.reps(1)
    if not prior or not component_text(prior[0], 1, enc):
        raise Hl7v2Error(
            "MRG-1 (prior patient identifier) is required for a merge",
            segment="MRG",
            occurrence=mrg.occurrence,
            field=1,
            error_code=REQUIRED_FIELD_MISSING,
        )
    facility_raw = ctx.message.msh.field(4) or ctx.message.msh.field(3)
    facility = hd_key(facility_raw, enc)
    old_id = patient_id_for(prior[0], enc, facility)
    old_ref = f"Patient/{old_id}"
    if old_ref == survivor_ref:
        raise Hl7v2Error(
            "MRG-1 names the same patient as PID-3: nothing to merge",
            segment="MRG",
            occurrence=mrg.occurrence,
            field=1,
        )
    old_identifiers = [
        i for i in (identifier(cx, enc, hd_system(facility_raw, enc)) for cx in prior) if i
    ]
    ctx.put(
        {
            "resourceType": "Patient",
            "id": old_id,
            "identifier": old_identifiers,
            "active": False,
            "link": [{"other": {"reference": survivor_ref}, "type": "replaced-by"}],
        },
        MergePlan(),
    )
    survivor = ctx.get(survivor_ref)
    assert survivor is not None  # map_patient ran first
    survivor["active"] = True
    survivor.setdefault("link", []).append({"other": {"reference": old_ref}, "type": "replaces"})
    return MergeInstruction(old=old_ref, new=survivor_ref)

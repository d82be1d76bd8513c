"""DICOM dataset → Patient, ImagingStudy and Endpoint (FHIR R4).

One dataset is one SOP instance, so each dataset yields a study holding one series with
one instance; `merge_imaging_study` folds instances of the same study together, whether
they come in one upload or many.

Mapping choices worth knowing (see also tests/mappers/test_dicom.py):
- Ids are deterministic: ImagingStudy from StudyInstanceUID, Patient from PatientID +
  issuer (or, with no PatientID, from the StudyInstanceUID: R4 requires a subject, and
  an anonymous study still belongs to one unknown person), Endpoint from its address.
- Date and time become a dateTime only with Timezone Offset From UTC (0008,0201): FHIR
  requires a zone once a time is given, and guessing the modality's clock is worse than
  keeping the date alone.
- Issuer of accession number (0008,0051): a local id is used as the system as is; a
  universal id becomes "urn:oid:" for ISO and "urn:uuid:" for UUID types.
- Person names keep the alphabetic group as the main HumanName and add the ideographic and
  phonetic groups as further HumanNames tagged with the iso21090-EN-representation
  extension, so Japanese, Korean and Chinese names survive.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from app.fhir.numbers import INTEGER_MAX
from app.fhir.outcome import Unprocessable

JsonDict = dict[str, Any]

DICOM_UID_SYSTEM = "urn:dicom:uid"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
RFC3986 = "urn:ietf:rfc:3986"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"

# Fixed namespace so that the same StudyInstanceUID gives the same id on every server.
ID_NAMESPACE = uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427")

_BODY = json.loads(
    (Path(__file__).parents[2] / "terminology" / "data" / "dicom_bodypart_snomed.json").read_text(
        encoding="utf-8"
    )
)
_SNOMED = _BODY["system"]
_GENDER = {"M": "male", "F": "female", "O": "other"}


def deterministic_id(*parts: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, "|".join(parts)))


@dataclass(frozen=True)
class StudyResources:
    """What one DICOM instance contributes: its patient, study and the WADO-RS endpoint."""

    patient: JsonDict
    imaging_study: JsonDict
    endpoint: JsonDict | None


# --- value helpers ----------------------------------------------------------------------


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip()
    return text or None


def _values(ds: Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, MultiValue | Sequence | list) else [value]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None  # an IS that is not an integer is dropped, not fatal
    # Where they go (series.number, instance.number) is a FHIR unsignedInt.
    return number if 0 <= number <= INTEGER_MAX else None


def _date(raw: str | None) -> str | None:
    if raw is None or len(raw) != 8 or not raw.isdigit():
        return None
    return f"{raw[0:4]}-{raw[4:6]}-{raw[6:8]}"


def _time(raw: str | None) -> str | None:
    if raw is None:
        return None
    raw = raw.replace(":", "")
    whole, _, fraction = raw.partition(".")
    if len(whole) < 2 or not whole.isdigit() or len(whole) % 2:
        return None
    whole = whole.ljust(6, "0")
    out = f"{whole[0:2]}:{whole[2:4]}:{whole[4:6]}"
    return f"{out}.{fraction}" if fraction.isdigit() else out


def _tz(raw: str | None) -> str | None:
    if raw is None or len(raw) != 5 or raw[0] not in "+-" or not raw[1:].isdigit():
        return None
    return f"{raw[0:3]}:{raw[3:5]}"


def _date_time(ds: Dataset, date_kw: str, time_kw: str) -> str | None:
    date = _date(_text(ds, date_kw))
    if date is None:
        return None
    time = _time(_text(ds, time_kw))
    zone = _tz(_text(ds, "TimezoneOffsetFromUTC"))
    if time is None or zone is None:
        return date
    return f"{date}T{time}{zone}"


def _person_names(value: Any) -> list[JsonDict]:
    if not isinstance(value, PersonName):
        value = PersonName(str(value))
    names = []
    for index, group in enumerate(value.components):
        name = _human_name(group)
        if name is None:
            continue
        if index > 0:
            # 0 alphabetic, 1 ideographic, 2 phonetic (PS3.5 6.2.1.1)
            code = ("ABC", "IDE", "SYL")[index]
            name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": code}]
        names.append(name)
    return names


def _human_name(group: str) -> JsonDict | None:
    parts = [p.strip() for p in group.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    name: JsonDict = {}
    if family:
        name["family"] = family
    givens = [g for g in (given, *middle.split(" ")) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    # No HumanName.text: its word order depends on the culture of the name, which the
    # DICOM value does not say; the parts carry everything.
    return name or None


def _display_name(value: Any) -> str | None:
    """The alphabetic group as written, which is what reference displays carry."""
    if value is None:
        return None
    if isinstance(value, PersonName):
        first = value.components[0] if value.components else ""
    else:
        first = str(value)
    return first if first.strip("^ ") else None


def _code_item(item: Dataset) -> JsonDict | None:
    code = _text(item, "CodeValue")
    if code is None:
        return None
    coding: JsonDict = {"code": code}
    scheme = _text(item, "CodingSchemeDesignator")
    if scheme:
        coding["system"] = _coding_scheme(scheme)
    meaning = _text(item, "CodeMeaning")
    if meaning:
        coding["display"] = meaning
    return coding


def _coding_scheme(designator: str) -> str:
    known = {
        "DCM": DCM_SYSTEM,
        "SCT": "http://snomed.info/sct",
        "LN": "http://loinc.org",
        "UCUM": "http://unitsofmeasure.org",
    }
    return known.get(designator, designator)


def _codeable_concepts(ds: Dataset, keyword: str) -> list[JsonDict]:
    out = []
    for item in _values(ds, keyword):
        coding = _code_item(item)
        if coding is not None:
            out.append({"coding": [coding]})
    return out


def _person_identifier(ds: Dataset, keyword: str) -> list[JsonDict | None]:
    """Identifiers from a *IdentificationSequence (0040,1101 Person Identification Code)."""
    out: list[JsonDict | None] = []
    for item in _values(ds, keyword):
        codes = _values(item, "PersonIdentificationCodeSequence")
        coding = _code_item(codes[0]) if codes else None
        if coding is None:
            out.append(None)
            continue
        identifier: JsonDict = {"value": coding["code"]}
        if "system" in coding:
            identifier["system"] = coding["system"]
        out.append(identifier)
    return out


def _issuer_system(item: Dataset) -> str | None:
    """System URI from an HL7v2 HD-like issuer (Issuer of Accession Number, etc.)."""
    universal = _text(item, "UniversalEntityID")
    if universal:
        kind = (_text(item, "UniversalEntityIDType") or "").upper()
        if kind == "ISO":
            return f"urn:oid:{universal}"
        if kind == "UUID":
            return f"urn:uuid:{universal}"
        return universal
    return _text(item, "LocalNamespaceEntityID")


def _patient_system(ds: Dataset) -> str | None:
    qualifiers = _values(ds, "IssuerOfPatientIDQualifiersSequence")
    if qualifiers:
        system = _issuer_system(qualifiers[0])
        if system:
            return system
    return _text(ds, "IssuerOfPatientID")


# --- resources --------------------------------------------------------------------------


def map_dataset(ds: Dataset, *, wado_base_url: str | None = None) -> StudyResources:
    """Map one DICOM instance; raises Unprocessable when a required UID is missing."""
    study_uid = _required_uid(ds, "StudyInstanceUID", "(0020,000D)")
    patient = _patient(ds, study_uid)
    endpoint = _endpoint(wado_base_url) if wado_base_url else None
    study = _imaging_study(ds, study_uid, patient, endpoint)
    return StudyResources(patient=patient, imaging_study=study, endpoint=endpoint)


def _required_uid(ds: Dataset, keyword: str, tag: str) -> str:
    """A UID the resources are keyed by. It becomes a FHIR id (ImagingStudy.series.uid …), so
    one that is not digits and dots (PS3.5 9.1; leading zeros, which real devices write, are
    let through) is refused rather than copied into resources the store would reject."""
    uid = _text(ds, keyword)
    if uid is None:
        raise Unprocessable(f"DICOM dataset has no {keyword} {tag}", expression=[keyword])
    if len(uid) > MAX_UID_LENGTH or not _UID.match(uid):
        raise Unprocessable(
            f"DICOM {keyword} {tag} is not a UID (digits and dots, at most 64): {uid[:80]!a}",
            expression=[keyword],
        )
    return uid


def _patient(ds: Dataset, study_uid: str) -> JsonDict:
    patient_id = _text(ds, "PatientID")
    system = _patient_system(ds)
    patient: JsonDict = {"resourceType": "Patient"}
    if patient_id:
        patient["id"] = deterministic_id("Patient", system or "", patient_id)
        identifier: JsonDict = {"value": patient_id}
        if system:
            identifier["system"] = system
        patient["identifier"] = [identifier]
    else:
        patient["id"] = deterministic_id("Patient", "study", study_uid)
    if ds.get("PatientName"):
        names = _person_names(ds.PatientName)
        if names:
            patient["name"] = names
    gender = _GENDER.get((_text(ds, "PatientSex") or "").upper())
    if gender:
        patient["gender"] = gender
    birth = _date(_text(ds, "PatientBirthDate"))
    if birth:
        patient["birthDate"] = birth
    return patient


def _endpoint(address: str) -> JsonDict:
    return {
        "resourceType": "Endpoint",
        "id": deterministic_id("Endpoint", address),
        "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": address,
    }


def _imaging_study(
    ds: Dataset, study_uid: str, patient: JsonDict, endpoint: JsonDict | None
) -> JsonDict:
    study: JsonDict = {
        "resourceType": "ImagingStudy",
        "id": deterministic_id("ImagingStudy", study_uid),
        "status": "available",
        "identifier": _study_identifiers(ds, study_uid),
    }
    subject: JsonDict = {"reference": f"Patient/{patient['id']}"}
    display = _display_name(ds.get("PatientName"))
    if display:
        subject["display"] = display
    study["subject"] = subject
    started = _date_time(ds, "StudyDate", "StudyTime")
    if started:
        study["started"] = started
    if endpoint:
        study["endpoint"] = [{"reference": f"Endpoint/{endpoint['id']}"}]
    referrer = _referrer(ds)
    if referrer:
        study["referrer"] = referrer
    interpreters = _interpreters(ds)
    if interpreters:
        study["interpreter"] = interpreters
    location = _text(ds, "PerformedLocation") or _text(ds, "InstitutionalDepartmentName")
    if location:
        study["location"] = {"identifier": {"value": location}}
    procedure = _codeable_concepts(ds, "ProcedureCodeSequence")
    if procedure:
        study["procedureCode"] = procedure
    reasons = [
        concept
        for request in _values(ds, "RequestAttributesSequence")
        for concept in _codeable_concepts(request, "ReasonForRequestedProcedureCodeSequence")
    ]
    if reasons:
        study["reasonCode"] = reasons
    description = _text(ds, "StudyDescription")
    if description:
        study["description"] = description
    study["series"] = [_series(ds)]
    return recount(study)


def _study_identifiers(ds: Dataset, study_uid: str) -> list[JsonDict]:
    identifiers: list[JsonDict] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}]
    accession = _text(ds, "AccessionNumber")
    if accession:
        identifier: JsonDict = {
            "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
            "value": accession,
        }
        issuers = _values(ds, "IssuerOfAccessionNumberSequence")
        system = _issuer_system(issuers[0]) if issuers else None
        if system:
            identifier["system"] = system
        identifiers.append(identifier)
    study_id = _text(ds, "StudyID")
    if study_id:
        identifiers.append({"value": study_id})
    return identifiers


def _referrer(ds: Dataset) -> JsonDict | None:
    reference: JsonDict = {}
    display = _display_name(ds.get("ReferringPhysicianName"))
    if display:
        reference["display"] = display
    ids = _person_identifier(ds, "ReferringPhysicianIdentificationSequence")
    if ids and ids[0]:
        reference["identifier"] = ids[0]
    return reference or None


def _interpreters(ds: Dataset) -> list[JsonDict]:
    names = _values(ds, "NameOfPhysiciansReadingStudy")
    ids = _person_identifier(ds, "PhysiciansReadingStudyIdentificationSequence")
    out = []
    for index in range(max(len(names), len(ids))):
        reference: JsonDict = {}
        display = _display_name(names[index]) if index < len(names) else None
        if display:
            reference["display"] = display
        identifier = ids[index] if index < len(ids) else None
        if identifier:
            reference["identifier"] = identifier
        if reference:
            out.append(reference)
    return out


def _series(ds: Dataset) -> JsonDict:
    series: JsonDict = {"uid": _required_uid(ds, "SeriesInstanceUID", "(0020,000E)")}
    number = _int(ds, "SeriesNumber")
    if number is not None:
        series["number"] = number
    # Modality is Type 1 in DICOM and 1..1 in R4; "OT" (Other) when a producer omits it.
    modality = _text(ds, "Modality") or "OT"
    series["modality"] = {"system": DCM_SYSTEM, "code": modality}
    description = _text(ds, "SeriesDescription")
    if description:
        series["description"] = description
    body_site = _body_site(_text(ds, "BodyPartExamined"))
    if body_site:
        series["bodySite"] = body_site
    laterality = _laterality(_text(ds, "Laterality") or _text(ds, "ImageLaterality"))
    if laterality:
        series["laterality"] = laterality
    started = _date_time(ds, "SeriesDate", "SeriesTime")
    if started:
        series["started"] = started
    specimens = _specimens(ds)
    if specimens:
        series["specimen"] = specimens
    series["instance"] = [_instance(ds)]
    return series


def _specimens(ds: Dataset) -> list[JsonDict]:
    """Specimen Description Sequence (0040,0560) as logical references by identifier."""
    out = []
    for item in _values(ds, "SpecimenDescriptionSequence"):
        value = _text(item, "SpecimenIdentifier")
        if value is None:
            continue
        identifier: JsonDict = {"value": value}
        issuers = _values(item, "IssuerOfTheSpecimenIdentifierSequence")
        system = _issuer_system(issuers[0]) if issuers else None
        if system:
            identifier["system"] = system
        out.append({"identifier": identifier})
    return out


def _body_site(value: str | None) -> JsonDict | None:
    if value is None:
        return None
    if value.isdigit():
        # Some producers already put a SNOMED concept id here; keep it as one.
        return {"system": _SNOMED, "code": value}
    entry = _BODY["body_parts"].get(value.upper())
    if entry is None:
        return None  # unknown defined term: dropped rather than sent with a wrong system
    return {"system": _SNOMED, "code": entry[0], "display": entry[1]}


def _laterality(value: str | None) -> JsonDict | None:
    entry = _BODY["laterality"].get((value or "").upper())
    if entry is None:
        return None
    return {"system": _SNOMED, "code": entry[0], "display": entry[1]}


def _instance(ds: Dataset) -> JsonDict:
    instance: JsonDict = {"uid": _required_uid(ds, "SOPInstanceUID", "(0008,0018)")}
    sop_class = _required_uid(ds, "SOPClassUID", "(0008,0016)")
    instance["sopClass"] = {"system": RFC3986, "code": f"urn:oid:{sop_class}"}
    number = _int(ds, "InstanceNumber")
    if number is not None:
        instance["number"] = number
    title = _instance_title(ds)
    if title:
        instance["title"] = title
    return instance


def _instance_title(ds: Dataset) -> str | None:
    parts = []
    image_type = _values(ds, "ImageType")
    if image_type:
        parts.append("Image Type: " + " ".join(str(v) for v in image_type))
    label = _text(ds, "ContentLabel")
    if label:
        parts.append(f"Presentation Label: {label}")
    concept = _values(ds, "ConceptNameCodeSequence")
    meaning = _text(concept[0], "CodeMeaning") if concept else None
    if meaning:
        parts.append(f"Concept Name Code Meaning: {meaning}")
    document_title = _text(ds, "DocumentTitle")
    if document_title:
        parts.append(f"Document Title: {document_title}")
    return ", ".join(parts) or None


# --- merging ----------------------------------------------------------------------------


def recount(study: JsonDict) -> JsonDict:
    """Set numberOfSeries/numberOfInstances and the modality list from the series."""
    series = study.get("series", [])
    modalities: list[JsonDict] = []
    for s in series:
        s["numberOfInstances"] = len(s.get("instance", []))
        modality = s.get("modality")
        if modality and modality not in modalities:
            modalities.append(modality)
    study["numberOfSeries"] = len(series)
    study["numberOfInstances"] = sum(s["numberOfInstances"] for s in series)
    if modalities:
        study["modality"] = modalities
    return study


_RECOMPUTED = ("series", "numberOfSeries", "numberOfInstances", "modality")
# Lists that differ per instance (each file may name other requests or readers).
_UNIONED = ("identifier", "procedureCode", "reasonCode", "interpreter")


def merge_imaging_study(existing: JsonDict | None, incoming: JsonDict) -> JsonDict:
    """Union of two ImagingStudy versions of the same study; pure, order-independent.

    Series are matched by uid, instances by uid; for a repeated instance the incoming
    copy wins (a re-sent file may carry corrections). Study-level elements missing from
    `existing` are filled from `incoming`; identifiers are unioned. Series and instances
    are sorted by number then uid, so the result does not depend on arrival order.
    """
    if existing is None:
        return recount(json.loads(json.dumps(incoming)))
    if existing.get("id") != incoming.get("id"):
        raise Unprocessable(
            f"cannot merge ImagingStudy/{incoming.get('id')} into "
            f"ImagingStudy/{existing.get('id')}: they are different studies",
            expression=["ImagingStudy.id"],
        )
    merged: JsonDict = json.loads(json.dumps(existing))
    for key, value in incoming.items():
        if key in _RECOMPUTED or key in _UNIONED:
            continue
        merged.setdefault(key, value)
    for key in _UNIONED:
        values = merged.get(key, [])
        values.extend(v for v in incoming.get(key, []) if v not in values)
        if values:
            merged[key] = values
    by_uid: dict[str, JsonDict] = {s["uid"]: s for s in merged.get("series", [])}
    for series in incoming.get("series", []):
        target = by_uid.get(series["uid"])
        if target is None:
            by_uid[series["uid"]] = json.loads(json.dumps(series))
            continue
        for key, value in series.items():
            if key not in ("instance", "numberOfInstances", "specimen"):
                target.setdefault(key, value)
        specimens = target.setdefault("specimen", [])
        specimens.extend(s for s in series.get("specimen", []) if s not in specimens)
        if not specimens:
            del target["specimen"]
        instances = {i["uid"]: i for i in target.get("instance", [])}
        for instance in series.get("instance", []):
            instances[instance["uid"]] = instance
        target["instance"] = sorted(instances.values(), key=_order_key)
    merged["series"] = sorted(by_uid.values(), key=_order_key)
    merged.pop("modality", None)
    return recount(merged)


def _order_key(item: JsonDict) -> tuple[int, str]:
    number = item.get("number")
    return (number if isinstance(number, int) else 2**31, item.get("uid", ""))

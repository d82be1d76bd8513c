"""Parse and validate FHIR R4 JSON: body decoding, id rules, resource types, meta handling.

Validation uses fhir.resources' R4B models, which accept R4 JSON for every type R4B kept.
The 18 R4 types that R4B dropped or renamed get a structural check only (see `R4_ONLY_TYPES`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import ValidationError

from app.fhir.numbers import is_storable
from app.fhir.outcome import BadRequest, FhirError, NotFound, Unprocessable, issue

JsonDict = dict[str, Any]

ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")

# Every R4 (4.0.1) resource type (fhir/resourcelist.html).
R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    [
        "Account",
        "ActivityDefinition",
        "AdverseEvent",
        "AllergyIntolerance",
        "Appointment",
        "AppointmentResponse",
        "AuditEvent",
        "Basic",
        "Binary",
        "BiologicallyDerivedProduct",
        "BodyStructure",
        "Bundle",
        "CapabilityStatement",
        "CarePlan",
        "CareTeam",
        "CatalogEntry",
        "ChargeItem",
        "ChargeItemDefinition",
        "Claim",
        "ClaimResponse",
        "ClinicalImpression",
        "CodeSystem",
        "Communication",
        "CommunicationRequest",
        "CompartmentDefinition",
        "Composition",
        "ConceptMap",
        "Condition",
        "Consent",
        "Contract",
        "Coverage",
        "CoverageEligibilityRequest",
        "CoverageEligibilityResponse",
        "DetectedIssue",
        "Device",
        "DeviceDefinition",
        "DeviceMetric",
        "DeviceRequest",
        "DeviceUseStatement",
        "DiagnosticReport",
        "DocumentManifest",
        "DocumentReference",
        "EffectEvidenceSynthesis",
        "Encounter",
        "Endpoint",
        "EnrollmentRequest",
        "EnrollmentResponse",
        "EpisodeOfCare",
        "EventDefinition",
        "Evidence",
        "EvidenceVariable",
        "ExampleScenario",
        "ExplanationOfBenefit",
        "FamilyMemberHistory",
        "Flag",
        "Goal",
        "GraphDefinition",
        "Group",
        "GuidanceResponse",
        "HealthcareService",
        "ImagingStudy",
        "Immunization",
        "ImmunizationEvaluation",
        "ImmunizationRecommendation",
        "ImplementationGuide",
        "InsurancePlan",
        "Invoice",
        "Library",
        "Linkage",
        "List",
        "Location",
        "Measure",
        "MeasureReport",
        "Media",
        "Medication",
        "MedicationAdministration",
        "MedicationDispense",
        "MedicationKnowledge",
        "MedicationRequest",
        "MedicationStatement",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "MessageDefinition",
        "MessageHeader",
        "MolecularSequence",
        "NamingSystem",
        "NutritionOrder",
        "Observation",
        "ObservationDefinition",
        "OperationDefinition",
        "OperationOutcome",
        "Organization",
        "OrganizationAffiliation",
        "Parameters",
        "Patient",
        "PaymentNotice",
        "PaymentReconciliation",
        "Person",
        "PlanDefinition",
        "Practitioner",
        "PractitionerRole",
        "Procedure",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "RelatedPerson",
        "RequestGroup",
        "ResearchDefinition",
        "ResearchElementDefinition",
        "ResearchStudy",
        "ResearchSubject",
        "RiskAssessment",
        "RiskEvidenceSynthesis",
        "Schedule",
        "SearchParameter",
        "ServiceRequest",
        "Slot",
        "Specimen",
        "SpecimenDefinition",
        "StructureDefinition",
        "StructureMap",
        "Subscription",
        "Substance",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
        "SupplyDelivery",
        "SupplyRequest",
        "Task",
        "TerminologyCapabilities",
        "TestReport",
        "TestScript",
        "ValueSet",
        "VerificationResult",
        "VisionPrescription",
    ]
)

# R4 types with no R4B model (R4B replaced them with the MedicinalProductDefinition family,
# Citation/Evidence rework and the Substance* redesign). They are stored after a structural
# check; the CapabilityStatement documents this.
R4_ONLY_TYPES: frozenset[str] = frozenset(
    [
        "EffectEvidenceSynthesis",
        "MedicinalProduct",
        "MedicinalProductAuthorization",
        "MedicinalProductContraindication",
        "MedicinalProductIndication",
        "MedicinalProductIngredient",
        "MedicinalProductInteraction",
        "MedicinalProductManufactured",
        "MedicinalProductPackaged",
        "MedicinalProductPharmaceutical",
        "MedicinalProductUndesirableEffect",
        "RiskEvidenceSynthesis",
        "SubstanceNucleicAcid",
        "SubstancePolymer",
        "SubstanceProtein",
        "SubstanceReferenceInformation",
        "SubstanceSourceMaterial",
        "SubstanceSpecification",
    ]
)

# Types a client may not store through the REST API (they only exist as operation payloads).
NOT_STORABLE: frozenset[str] = frozenset({"Parameters", "OperationOutcome"})

STORABLE_TYPES: frozenset[str] = R4_RESOURCE_TYPES - NOT_STORABLE


def check_type(resource_type: str) -> str:
    if resource_type not in STORABLE_TYPES:
        raise NotFound(
            f"Unknown resource type '{resource_type}': this server supports the FHIR R4 "
            "resource types",
            code="not-supported",
        )
    return resource_type


def check_id(resource_id: str, expression: str = "id") -> str:
    if not ID_PATTERN.fullmatch(resource_id):
        raise BadRequest(
            f"Invalid id '{resource_id[:80]}': ids are 1-64 characters of [A-Za-z0-9-.]",
            expression=[expression],
        )
    return resource_id


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> JsonDict:
    out: JsonDict = {}
    for key, value in pairs:
        if key in out:
            raise BadRequest(f"Duplicate JSON property '{key[:80]}'", code="structure")
        out[key] = value
    return out


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return False


def parse_json(body: bytes, *, max_depth: int) -> Any:
    """Decode a request body: strict JSON, no duplicate keys, bounded nesting."""
    if not body.strip():
        raise BadRequest("The request body is empty; a FHIR JSON resource was expected")
    try:
        text = body.decode("utf-8-sig")
        data = json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_no_nan,
            parse_int=_bounded_int,
        )
    except FhirError:
        raise
    except RecursionError:
        raise BadRequest(f"JSON nesting is deeper than {max_depth} levels") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"The body is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"Malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
            code="structure",
        ) from None
    if _depth_exceeds(data, max_depth):
        raise BadRequest(f"JSON nesting is deeper than {max_depth} levels", code="structure")
    return data


def _bounded_int(token: str) -> int:
    # Past what the store writes, the first write was a 500. A decimal this large, written
    # without a fraction, is not a clinical value.
    value = int(token)
    if not is_storable(value):
        raise BadRequest(
            f"The number {token[:40]} is out of range: integers in a resource must fit in 64 bits",
            code="value",
        )
    return value


def _no_nan(token: str) -> Any:
    raise BadRequest(f"'{token}' is not valid JSON", code="structure")


def parse_resource(body: bytes, *, max_depth: int) -> JsonDict:
    data = parse_json(body, max_depth=max_depth)
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object holding a FHIR resource")
    resource_type = data.get("resourceType")
    if not isinstance(resource_type, str):
        raise BadRequest("The resource has no resourceType", expression=["resourceType"])
    return data


@cache
def _model_validator(resource_type: str) -> Callable[[JsonDict], Any] | None:
    if resource_type in R4_ONLY_TYPES:
        return None
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type).model_validate


def _loc_to_expression(resource_type: str, loc: tuple[int | str, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("__root__",):
            continue
        else:
            path += f".{part}"
    return path


def validate(resource: JsonDict) -> None:
    """Validate against the R4B model; raise Unprocessable with one issue per problem."""
    resource_type = resource["resourceType"]
    for key in ("meta", "text"):
        if key in resource and not isinstance(resource[key], dict):
            raise Unprocessable(
                f"{resource_type}.{key} must be an object", expression=[f"{resource_type}.{key}"]
            )
    if "id" in resource and (
        not isinstance(resource["id"], str) or not ID_PATTERN.fullmatch(resource["id"])
    ):
        raise BadRequest(
            "Invalid id: ids are 1-64 characters of [A-Za-z0-9-.]",
            expression=[f"{resource_type}.id"],
        )
    validator = _model_validator(resource_type)
    if validator is None:
        return
    try:
        validator(resource)
    except ValidationError as exc:
        problems = [
            issue(
                "error",
                "structure" if err["type"] in ("extra_forbidden", "missing") else "value",
                f"{_loc_to_expression(resource_type, tuple(err['loc']))}: {err['msg']}",
                [_loc_to_expression(resource_type, tuple(err["loc"]))],
            )
            for err in exc.errors(include_url=False, include_input=False)[:50]
        ]
        raise Unprocessable(
            f"{resource_type} failed validation ({len(problems)} problem(s))", issues=problems
        ) from None
    except (ValueError, TypeError) as exc:
        raise Unprocessable(f"{resource_type} failed validation: {exc}") from None


def with_meta(resource: JsonDict, resource_id: str, version_id: int, last_updated: str) -> JsonDict:
    """The resource as stored and served: server-owned id, versionId and lastUpdated.

    Client-supplied meta.versionId/lastUpdated are ignored; other meta (tags, profiles,
    security labels, source) is kept.
    """
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = last_updated
    out: JsonDict = {"resourceType": resource["resourceType"], "id": resource_id, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out

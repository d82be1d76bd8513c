"""The registry built from the vendored official R4 SearchParameters and CompartmentDefinitions."""

from __future__ import annotations

from app.fhir.search.parameters import PARAM_TYPES, registry


def test_all_official_definitions_compile() -> None:
    assert registry().uncompiled == []


def test_every_parameter_type_is_present() -> None:
    reg = registry()
    seen = {p.param_type for t in reg.resource_types for p in reg.for_type(t).values()}
    assert seen == PARAM_TYPES


def test_lookup_by_type_and_code() -> None:
    reg = registry()
    birthdate = reg.get("Patient", "birthdate")
    assert birthdate is not None and birthdate.param_type == "date"
    # One official definition covers Patient, Person and RelatedPerson.
    assert "Patient.birthDate" in birthdate.expression.split(" | ")
    assert reg.get("Patient", "no-such-param") is None
    subject = reg.get("Observation", "subject")
    assert subject is not None and "Patient" in subject.targets


def test_common_parameters_apply_to_every_type() -> None:
    reg = registry()
    params = reg.for_type("Observation")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text"):
        assert code in params
    assert reg.get("Encounter", "_lastUpdated") is not None


def test_composite_components_are_resolved() -> None:
    param = registry().get("Observation", "code-value-quantity")
    assert param is not None and param.param_type == "composite"
    assert [(c.param_type, c.code) for c in param.components] == [
        ("token", "code"),
        ("quantity", "value-quantity"),
    ]


def test_patient_compartment_from_official_definition() -> None:
    reg = registry()
    # CompartmentDefinition-patient: Observation is linked through subject and performer.
    assert set(reg.patient_compartment("Observation")) == {"subject", "performer"}
    assert reg.patient_compartment("Patient") == ["link"]
    assert reg.patient_compartment("Organization") == []

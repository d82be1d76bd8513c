"""FHIRPath Patch (R4 fhirpatch.html): the official test cases, spec rules, error shapes, fuzzing.

The official cases are in FHIR XML. They are converted to FHIR JSON with fhir.resources' own XML
parser (R4B models, via lxml), which is independent of the patch engine's element model, so a
cardinality mistake in the engine cannot hide behind the same mistake in the converter.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from app.fhir.outcome import BadRequest, FhirError, Unprocessable
from app.fhir.patch import apply_fhirpath_patch, apply_patch
from tests.fuzzing import examples, fuzz

CASES_FILE = (
    Path(__file__).resolve().parents[3] / "shared/corpus/fhir/patch-tests/fhir-patch-tests.xml"
)


def _xml_to_json(element: etree._Element) -> dict[str, Any]:
    model = get_fhir_model_class(etree.QName(element).localname)
    parsed = model.model_validate_xml(etree.tostring(element))
    result: dict[str, Any] = parsed.model_dump(mode="json", by_alias=True, exclude_none=True)
    narrative = result.get("text")
    if isinstance(narrative, dict) and isinstance(narrative.get("div"), str):
        # The parser keeps the XML whitespace that follows </div> (its "tail") in the string;
        # that whitespace is outside the div element, so it is not part of the narrative.
        narrative["div"] = narrative["div"].rstrip()
    return result


def _first_child(element: etree._Element | None) -> dict[str, Any]:
    assert element is not None
    return _xml_to_json(next(child for child in element if isinstance(child.tag, str)))


def _load_cases() -> list[dict[str, Any]]:
    # Comments would come through as fhir_comments, which are not part of FHIR JSON.
    parser = etree.XMLParser(remove_comments=True)
    root = etree.parse(str(CASES_FILE), parser).getroot()
    cases = []
    for case in root.iterfind("case"):
        error = case.find("error")
        cases.append(
            {
                "name": case.get("name"),
                "input": _first_child(case.find("input")),
                "diff": _first_child(case.find("diff")),
                "output": None if error is not None else _first_child(case.find("output")),
                "error": None if error is None else error.get("msg"),
            }
        )
    return cases


CASES = _load_cases()


def test_corpus_holds_the_thirty_three_official_cases() -> None:
    assert len(CASES) == 33


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_official_fhirpath_patch_case(case: dict[str, Any]) -> None:
    before = copy.deepcopy(case["input"])
    if case["error"] is not None:
        with pytest.raises(Unprocessable) as raised:
            apply_fhirpath_patch(case["input"], case["diff"])
        # The corpus gives the reference implementation's message; ours says the same thing.
        assert case["error"].lower().startswith("no content found")
        assert "no content found" in raised.value.diagnostics.lower()
    else:
        assert apply_fhirpath_patch(case["input"], case["diff"]) == case["output"]
    assert case["input"] == before  # the input is never changed


# --- Building Parameters in tests ---------------------------------------------------------------


def operation(op_type: str, path: str, **parts: Any) -> dict[str, Any]:
    """One `operation` parameter; a part value is a dict of value[x] keys or a list of parts."""
    built: list[dict[str, Any]] = [
        {"name": "type", "valueCode": op_type},
        {"name": "path", "valueString": path},
    ]
    for name, value in parts.items():
        if isinstance(value, dict):
            built.append({"name": name, **value})
        elif isinstance(value, list):
            built.append({"name": name, "part": value})
        elif isinstance(value, int):
            built.append({"name": name, "valueInteger": value})
        else:
            built.append({"name": name, "valueString": value})
    return {"name": "operation", "part": built}


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {"use": "official", "system": "urn:mrn", "value": "123"},
        {"use": "secondary", "system": "urn:nhs", "value": "456"},
    ],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"], "_given": [None, {"id": "g2"}]}],
    "birthDate": "1974-12-25",
    "_birthDate": {"extension": [{"url": "http://example.org/birthTime", "valueTime": "14:35"}]},
    "deceasedBoolean": False,
    "extension": [{"url": "http://example.org/a", "valueString": "a"}],
}


# --- Spec rules ---------------------------------------------------------------------------------


def test_where_filter_selects_the_element_to_replace() -> None:
    patched = apply_fhirpath_patch(
        PATIENT,
        patch(
            operation(
                "replace",
                "Patient.identifier.where(use = 'secondary').value",
                value={"valueString": "789"},
            )
        ),
    )
    assert [i["value"] for i in patched["identifier"]] == ["123", "789"]


def test_path_matching_several_elements_is_unprocessable_for_replace() -> None:
    with pytest.raises(Unprocessable, match="matches 2 elements"):
        apply_fhirpath_patch(
            PATIENT,
            patch(operation("replace", "Patient.identifier.value", value={"valueString": "x"})),
        )


def test_delete_of_several_elements_is_unprocessable() -> None:
    with pytest.raises(Unprocessable):
        apply_fhirpath_patch(PATIENT, patch(operation("delete", "Patient.identifier")))


def test_delete_of_missing_element_is_a_no_op() -> None:
    patched = apply_fhirpath_patch(PATIENT, patch(operation("delete", "Patient.gender")))
    assert patched == PATIENT


def test_add_to_an_existing_non_repeating_element_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="already has a value"):
        apply_fhirpath_patch(
            PATIENT,
            patch(operation("add", "Patient", name="birthDate", value={"valueDate": "2000-01-01"})),
        )


def test_add_of_unknown_element_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="no element 'nickname'"):
        apply_fhirpath_patch(
            PATIENT, patch(operation("add", "Patient", name="nickname", value={"valueString": "J"}))
        )


def test_add_choice_element_takes_its_json_key_from_the_value_type() -> None:
    base = {"resourceType": "Patient", "id": "p1"}
    patched = apply_fhirpath_patch(
        base,
        patch(operation("add", "Patient", name="deceased", value={"valueDateTime": "2020-01-01"})),
    )
    assert patched == {**base, "deceasedDateTime": "2020-01-01"}


def test_add_choice_element_with_a_type_it_does_not_allow_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="choice element 'deceased'"):
        apply_fhirpath_patch(
            {"resourceType": "Patient"},
            patch(operation("add", "Patient", name="deceased", value={"valueString": "yes"})),
        )


def test_replace_choice_element_with_another_type_renames_the_key() -> None:
    patched = apply_fhirpath_patch(
        PATIENT,
        patch(operation("replace", "Patient.deceased", value={"valueDateTime": "2020-01-01"})),
    )
    assert "deceasedBoolean" not in patched
    assert patched["deceasedDateTime"] == "2020-01-01"


def test_add_extension_value_through_nested_parts() -> None:
    patched = apply_fhirpath_patch(
        {"resourceType": "Patient"},
        patch(
            operation(
                "add",
                "Patient",
                name="extension",
                value=[
                    {"name": "url", "valueUri": "http://example.org/b"},
                    {"name": "value", "valueCode": "b"},
                ],
            )
        ),
    )
    assert patched["extension"] == [{"url": "http://example.org/b", "valueCode": "b"}]


def test_nested_parts_build_repeating_children_as_arrays() -> None:
    patched = apply_fhirpath_patch(
        {"resourceType": "Patient"},
        patch(
            operation(
                "add",
                "Patient",
                name="contact",
                value=[
                    {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "1"}},
                    {"name": "telecom", "valueContactPoint": {"system": "email", "value": "a@b"}},
                    {"name": "gender", "valueCode": "female"},
                ],
            )
        ),
    )
    assert patched["contact"] == [
        {
            "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
            "gender": "female",
        }
    ]


def test_delete_of_a_repeating_primitive_keeps_extensions_aligned() -> None:
    patched = apply_fhirpath_patch(PATIENT, patch(operation("delete", "Patient.name[0].given[0]")))
    assert patched["name"][0]["given"] == ["James"]
    assert patched["name"][0]["_given"] == [{"id": "g2"}]


def test_insert_into_a_repeating_primitive_keeps_extensions_aligned() -> None:
    patched = apply_fhirpath_patch(
        PATIENT,
        patch(operation("insert", "Patient.name[0].given", value={"valueString": "Jim"}, index=0)),
    )
    assert patched["name"][0]["given"] == ["Jim", "Peter", "James"]
    assert patched["name"][0]["_given"] == [None, None, {"id": "g2"}]


def test_delete_of_a_primitive_removes_its_extensions_too() -> None:
    patched = apply_fhirpath_patch(PATIENT, patch(operation("delete", "Patient.birthDate")))
    assert "birthDate" not in patched
    assert "_birthDate" not in patched


def test_primitive_value_extensions_in_the_value_part_are_kept() -> None:
    extension = {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}
    patched = apply_fhirpath_patch(
        {"resourceType": "Patient"},
        patch(
            operation(
                "add",
                "Patient",
                name="birthDate",
                value={"valueDate": "2000-01-01", "_valueDate": extension},
            )
        ),
    )
    assert patched["birthDate"] == "2000-01-01"
    assert patched["_birthDate"] == extension


def test_insert_beyond_the_end_of_the_list_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="index 3"):
        apply_fhirpath_patch(
            PATIENT,
            patch(
                operation("insert", "Patient.identifier", value={"valueIdentifier": {}}, index=3)
            ),
        )


def test_move_with_source_outside_the_list_is_unprocessable() -> None:
    with pytest.raises(Unprocessable) as raised:
        apply_fhirpath_patch(
            PATIENT, patch(operation("move", "Patient.identifier", source=2, destination=0))
        )
    assert raised.value.issues[0]["expression"] == [
        "Parameters.parameter[0].part.where(name='source')"
    ]


def test_insert_into_a_non_repeating_element_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="does not repeat"):
        apply_fhirpath_patch(
            PATIENT,
            patch(
                operation("insert", "Patient.birthDate", value={"valueDate": "2000-01-01"}, index=0)
            ),
        )


@pytest.mark.parametrize(
    "op",
    [
        operation("replace", "Patient.id", value={"valueId": "p2"}),
        operation("delete", "Patient.id"),
    ],
)
def test_changing_the_id_is_unprocessable(op: dict[str, Any]) -> None:
    with pytest.raises(Unprocessable, match="id"):
        apply_fhirpath_patch(PATIENT, patch(op))


def test_path_for_another_resource_type_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="does not start with"):
        apply_fhirpath_patch(PATIENT, patch(operation("delete", "Observation.status")))


@pytest.mark.parametrize(
    "path", ["Patient.name.select(given)", "Patient.name[x]", "Patient.name.where(", "Patient..id"]
)
def test_unsupported_or_broken_paths_are_unprocessable(path: str) -> None:
    with pytest.raises(Unprocessable) as raised:
        apply_fhirpath_patch(PATIENT, patch(operation("delete", path)))
    assert raised.value.issues[0]["expression"] == [
        "Parameters.parameter[0].part.where(name='path')"
    ]


def test_first_and_last_select_one_element() -> None:
    patched = apply_fhirpath_patch(
        PATIENT,
        patch(
            operation("delete", "Patient.identifier.first()"),
            operation("delete", "Patient.name.last()"),
        ),
    )
    assert [i["value"] for i in patched["identifier"]] == ["456"]
    assert "name" not in patched


def test_apply_patch_dispatches_fhir_json_to_fhirpath_patch() -> None:
    patched = apply_patch(
        PATIENT, "application/fhir+json", patch(operation("delete", "Patient.name"))
    )
    assert "name" not in patched


# --- Malformed Parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (patch({"name": "op", "part": []}), "Parameters.parameter[0].name"),
        (
            patch(operation("rename", "Patient.name")),
            "Parameters.parameter[0].part.where(name='type')",
        ),
        (
            patch(operation("add", "Patient", value={"valueString": "x"})),
            "Parameters.parameter[0].part",
        ),
        (
            patch(operation("insert", "Patient.name", value={"valueString": "x"})),
            "Parameters.parameter[0].part",
        ),
        (
            patch(operation("move", "Patient.name", source=-1, destination=0)),
            "Parameters.parameter[0].part.where(name='source')",
        ),
        (
            patch({"name": "operation", "part": [{"name": "type", "valueCode": "delete"}]}),
            "Parameters.parameter[0].part",
        ),
        (
            patch(
                operation(
                    "replace", "Patient.birthDate", value={"valueDate": "x", "valueString": "y"}
                )
            ),
            "Parameters.parameter[0].part.where(name='value')",
        ),
    ],
)
def test_malformed_operation_is_a_bad_request_naming_it(
    body: dict[str, Any], expression: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        apply_fhirpath_patch(PATIENT, body)
    assert raised.value.issues[0]["expression"] == [expression]


@pytest.mark.parametrize(
    "body", [[], {"resourceType": "Patient"}, {"resourceType": "Parameters", "parameter": {}}]
)
def test_body_that_is_not_a_parameters_resource_is_a_bad_request(body: Any) -> None:
    with pytest.raises(BadRequest):
        apply_fhirpath_patch(PATIENT, body)


# --- Robustness: any input ends as a result or a FhirError --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=15,
)
paths = st.sampled_from(
    [
        "Patient",
        "Patient.name",
        "Patient.name[0]",
        "Patient.name[0].given",
        "Patient.name[0].given[1]",
        "Patient.identifier.where(use = 'official')",
        "Patient.identifier.where(use = )",
        "Patient.deceased",
        "Patient.birthDate",
        "Patient.extension[0].value",
        "Patient.id",
        "name.family",
        "Patient.name.first().`given`",
    ]
) | st.text(max_size=20)
value_parts = st.one_of(
    st.builds(lambda text: {"valueString": text}, st.text(max_size=5)),
    st.builds(lambda code: {"valueCode": code}, st.sampled_from(["male", "x"])),
    st.just({"valueIdentifier": {"system": "urn:x", "value": "9"}}),
    st.just({"valueDate": "2000-01-01", "_valueDate": {"id": "d"}}),
    st.just({"valueBoolean": True}),
    st.builds(lambda parts: {"part": parts}, st.lists(json_values, max_size=2)),
    st.dictionaries(st.sampled_from(["valueString", "part", "resource", "x"]), json_values),
)
part_strategies: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["given", "family", "deceased", "extension", "value", "x"]),
    "value": value_parts,
    "index": st.integers(min_value=0, max_value=3),
    "source": st.integers(min_value=0, max_value=3),
    "destination": st.integers(min_value=0, max_value=3),
}
# Mostly the parts each type needs (so the fuzz reaches path resolution and the edit itself),
# with extra optional parts now and then.
needed_parts = {
    "add": ("name", "value"),
    "insert": ("value", "index"),
    "delete": (),
    "replace": ("value",),
    "move": ("source", "destination"),
}
fuzz_operations = st.sampled_from(sorted(needed_parts)).flatmap(
    lambda op_type: st.builds(
        lambda path, required, extra: operation(op_type, path, **{**extra, **required}),
        paths,
        st.fixed_dictionaries({name: part_strategies[name] for name in needed_parts[op_type]}),
        st.fixed_dictionaries({}, optional=part_strategies),
    )
)


def _applies_or_fails_cleanly(body: Any) -> None:
    before = copy.deepcopy(PATIENT)
    try:
        result = apply_fhirpath_patch(PATIENT, body)
    except FhirError as error:
        assert error.status in (400, 422)
    else:
        assert isinstance(result, dict)
    assert before == PATIENT


@fuzz
@settings(max_examples=examples(200), deadline=None)
@given(json_values)
def test_fuzz_any_json_value_as_parameters(body: Any) -> None:
    _applies_or_fails_cleanly(body)


@fuzz
@settings(max_examples=examples(200), deadline=None)
@given(st.lists(json_values, max_size=3))
def test_fuzz_any_json_values_as_parameter_entries(entries: list[Any]) -> None:
    _applies_or_fails_cleanly({"resourceType": "Parameters", "parameter": entries})


@fuzz
@settings(max_examples=examples(400), deadline=None)
@given(st.lists(fuzz_operations, min_size=1, max_size=3))
def test_fuzz_plausible_operations(operations: list[dict[str, Any]]) -> None:
    _applies_or_fails_cleanly(patch(*operations))

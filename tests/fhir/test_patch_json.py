"""JSON Patch (RFC 6902): official FHIR test cases, FHIR-specific rules, error shapes, fuzzing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fhir.outcome import BadRequest, FhirError, Unprocessable, UnsupportedMediaType
from app.fhir.patch import apply_json_patch, apply_patch, detect_patch_kind
from tests.fuzzing import examples, fuzz

CASES_FILE = (
    Path(__file__).resolve().parents[3] / "shared/corpus/fhir/patch-tests/json-patch-tests.json"
)
CASES: list[dict[str, Any]] = json.loads(CASES_FILE.read_text())

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "birthDate": "1974-12-25",
}


def test_corpus_holds_the_sixteen_official_cases() -> None:
    assert len(CASES) == 16


@pytest.mark.parametrize("case", CASES, ids=[c["comment"] for c in CASES])
def test_official_json_patch_case(case: dict[str, Any]) -> None:
    document = case["doc"]
    before = copy.deepcopy(document)
    if "error" in case:
        with pytest.raises(FhirError):
            apply_json_patch(document, case["patch"])
    else:
        assert apply_json_patch(document, case["patch"]) == case["expected"]
    assert document == before  # the input is never changed


def test_result_is_a_new_object_that_shares_nothing_with_the_input() -> None:
    patched = apply_json_patch(PATIENT, [{"op": "add", "path": "/active", "value": True}])
    patched["name"][0]["given"].append("Jim")
    assert PATIENT["name"][0]["given"] == ["Peter", "James"]


def test_operations_apply_in_order() -> None:
    patched = apply_json_patch(
        PATIENT,
        [
            {"op": "copy", "from": "/name/0", "path": "/name/-"},
            {"op": "replace", "path": "/name/1/family", "value": "Smith"},
            {"op": "move", "from": "/name/1", "path": "/name/0"},
            {"op": "remove", "path": "/name/1/given/1"},
        ],
    )
    assert patched["name"] == [
        {"family": "Smith", "given": ["Peter", "James"]},
        {"family": "Chalmers", "given": ["Peter"]},
    ]


def test_pointer_escapes_tilde_and_slash() -> None:
    doc = {"a/b": 1, "m~n": 2}
    patched = apply_json_patch(
        doc,
        [{"op": "replace", "path": "/a~1b", "value": 3}, {"op": "remove", "path": "/m~0n"}],
    )
    assert patched == {"a/b": 3}


@pytest.mark.parametrize(
    ("value", "expected_equal"),
    [(1, True), (1.0, True), (True, False), ("1", False), ([1], False)],
)
def test_test_op_uses_json_equality_not_python_equality(value: Any, expected_equal: bool) -> None:
    patch = [{"op": "test", "path": "/n", "value": value}]
    if expected_equal:
        assert apply_json_patch({"n": 1}, patch) == {"n": 1}
    else:
        with pytest.raises(Unprocessable):
            apply_json_patch({"n": 1}, patch)


@pytest.mark.parametrize(
    ("patch", "expression"),
    [
        ([{"op": "add", "path": "/active", "value": True}, {"op": "jump", "path": "/a"}], "[1].op"),
        ([{"op": "add", "path": "/active"}], "[0].value"),
        ([{"op": "remove"}], "[0].path"),
        ([{"op": "remove", "path": "name"}], "[0].path"),
        ([{"op": "remove", "path": "/a~2b"}], "[0].path"),
        ([{"op": "move", "path": "/x"}], "[0].from"),
        (["add"], "[0]"),
    ],
)
def test_malformed_operation_is_a_bad_request_naming_the_operation(
    patch: list[Any], expression: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        apply_json_patch(PATIENT, patch)
    assert raised.value.issues[0]["expression"] == [expression]
    assert expression.split(".")[0] in raised.value.diagnostics


@pytest.mark.parametrize("patch", [{"op": "add"}, "[]", None, 3])
def test_patch_that_is_not_an_array_is_a_bad_request(patch: Any) -> None:
    with pytest.raises(BadRequest):
        apply_json_patch(PATIENT, patch)


@pytest.mark.parametrize(
    ("patch", "expression"),
    [
        ([{"op": "remove", "path": "/gender"}], "[0].path"),
        ([{"op": "replace", "path": "/name/5", "value": {}}], "[0].path"),
        ([{"op": "add", "path": "/name/01", "value": {}}], "[0].path"),
        ([{"op": "test", "path": "/birthDate", "value": "1974"}], "[0].value"),
        ([{"op": "move", "from": "/name", "path": "/name/0/x"}], "[0].from"),
        ([{"op": "copy", "from": "/nothing", "path": "/x"}], "[0].from"),
    ],
)
def test_patch_that_cannot_apply_is_unprocessable_naming_the_operation(
    patch: list[Any], expression: str
) -> None:
    with pytest.raises(Unprocessable) as raised:
        apply_json_patch(PATIENT, patch)
    assert raised.value.issues[0]["expression"] == [expression]


@pytest.mark.parametrize(
    "patch",
    [
        [{"op": "replace", "path": "/resourceType", "value": "Practitioner"}],
        [{"op": "replace", "path": "/id", "value": "other"}],
        [{"op": "remove", "path": "/id"}],
        [{"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "p2"}}],
    ],
)
def test_changing_resource_type_or_id_is_unprocessable(patch: list[Any]) -> None:
    with pytest.raises(Unprocessable):
        apply_json_patch(PATIENT, patch)


def test_replacing_the_whole_document_with_the_same_identity_is_allowed() -> None:
    replacement = {"resourceType": "Patient", "id": "p1", "active": False}
    assert apply_json_patch(PATIENT, [{"op": "replace", "path": "", "value": replacement}]) == (
        replacement
    )


# --- Content-Type detection -------------------------------------------------------------------


PARAMETERS = {"resourceType": "Parameters", "parameter": []}


@pytest.mark.parametrize(
    ("content_type", "body", "kind"),
    [
        ("application/json-patch+json", [], "json-patch"),
        ("Application/JSON-Patch+JSON; charset=utf-8", [], "json-patch"),
        ("application/fhir+json", PARAMETERS, "fhirpath-patch"),
        ("application/fhir+json; fhirVersion=4.0", PARAMETERS, "fhirpath-patch"),
        ("application/json", PARAMETERS, "fhirpath-patch"),
    ],
)
def test_detect_patch_kind(content_type: str, body: Any, kind: str) -> None:
    assert detect_patch_kind(content_type, body) == kind


@pytest.mark.parametrize(
    "content_type",
    ["application/xml-patch+xml", "application/fhir+xml", "text/xml", "text/plain", ""],
)
def test_non_json_patch_formats_are_unsupported_media_types(content_type: str) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        detect_patch_kind(content_type, "<diff/>")
    assert raised.value.status == 415


def test_fhir_json_body_that_is_not_parameters_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="json-patch"):
        detect_patch_kind("application/fhir+json", [{"op": "remove", "path": "/x"}])


def test_apply_patch_dispatches_on_content_type() -> None:
    patched = apply_patch(
        PATIENT, "application/json-patch+json", [{"op": "remove", "path": "/birthDate"}]
    )
    assert "birthDate" not in patched


# --- Robustness: any JSON as a patch ends as a result or a FhirError ----------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
pointers = st.lists(
    st.sampled_from(["name", "0", "1", "-", "given", "birthDate", "id", "~0", "~1", "x"]),
    max_size=4,
).map(lambda tokens: "".join(f"/{t}" for t in tokens))
operations = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test", "nope"])},
    optional={"path": pointers | json_values, "from": pointers, "value": json_values},
)


def _applies_or_fails_cleanly(patch: Any) -> None:
    before = copy.deepcopy(PATIENT)
    try:
        result = apply_json_patch(PATIENT, patch)
    except FhirError as error:
        assert error.status in (400, 422)
    else:
        assert isinstance(result, dict)
    assert before == PATIENT


@fuzz
@settings(max_examples=examples(300), deadline=None)
@given(json_values)
def test_fuzz_any_json_value_as_patch(patch: Any) -> None:
    _applies_or_fails_cleanly(patch)


@fuzz
@settings(max_examples=examples(500), deadline=None)
@given(st.lists(operations, max_size=5))
def test_fuzz_plausible_operations(patch: list[Any]) -> None:
    _applies_or_fails_cleanly(patch)

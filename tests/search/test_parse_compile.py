"""Query parsing and compiling, checked by running compiled filters over extracted `s` documents.

`_matches` below is a test oracle for the MongoDB operator semantics the compiler emits (and only
those): a condition on an array field holds when *some* element satisfies it, each operator of a
field independently, `$nin`/`$ne` hold when *no* element matches, and comparisons only hold
between values of the same BSON kind. It is not a database stand-in; integration tests against
the real store come separately.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.fhir.outcome import BadRequest
from app.fhir.search.compile import (
    Subquery,
    compile_query,
    needs_recheck,
    recheck,
    resolve_subqueries,
)
from app.fhir.search.extract import extract_index
from app.fhir.search.keys import date_range
from app.fhir.search.parameters import registry
from app.fhir.search.parse import parse

JsonDict = dict[str, Any]
OPERATORS = {"$in", "$nin", "$ne", "$gt", "$gte", "$lt", "$lte", "$and", "$or", "$exists"}
NOW = date_range("2026-01-01T00:00:00Z")[0]  # type: ignore[index]


# --- oracle ------------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def _compare(op: str, a: Any, b: Any) -> bool:
    if _kind(a) != _kind(b):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def _field_values(doc: JsonDict, field: str) -> list[Any] | None:
    if field == "_id":
        return [doc["_id"]]
    assert field.startswith("s."), field
    value = doc["s"].get(field[2:])
    return None if value is None else list(value)


def _matches(doc: JsonDict, flt: JsonDict) -> bool:
    for key, cond in flt.items():
        if key == "$and":
            if not all(_matches(doc, c) for c in cond):
                return False
            continue
        if key == "$or":
            if not any(_matches(doc, c) for c in cond):
                return False
            continue
        assert not key.startswith("$"), key
        values = _field_values(doc, key)
        if not isinstance(cond, dict):
            cond = {"$eq": cond}
        for op, operand in cond.items():
            have = values or []
            if op == "$eq":
                ok = operand in have
            elif op == "$in":
                ok = any(v in operand for v in have)
            elif op == "$nin":
                ok = not any(v in operand for v in have)
            elif op == "$ne":
                ok = operand not in have
            elif op == "$exists":
                ok = (values is not None) == operand
            else:
                ok = any(_compare(op, v, operand) for v in have)
            if not ok:
                return False
    return True


def _operators_and_fields(node: Any, ops: set[str], fields: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            (ops if key.startswith("$") else fields).add(key)
            _operators_and_fields(value, ops, fields)
    elif isinstance(node, list):
        for item in node:
            _operators_and_fields(item, ops, fields)


def _doc(resource: JsonDict) -> JsonDict:
    return {"_id": resource["id"], "s": extract_index(resource)}


def _filter(resource_type: str, query: str, strict: bool = True) -> JsonDict:
    items = [tuple(part.split("=", 1)) for part in query.split("&")] if query else []
    parsed = parse(resource_type, items, registry(), strict)  # type: ignore[arg-type]
    flt = compile_query(parsed, now_ms=NOW)
    ops: set[str] = set()
    fields: set[str] = set()
    _operators_and_fields(flt, ops, fields)
    assert ops <= OPERATORS
    assert all(f == "_id" or f.startswith("s.") for f in fields)
    return flt


def _hits(resource_type: str, query: str, resources: list[JsonDict]) -> list[str]:
    """What the executor returns: the database filter, then `recheck` when it asks for one."""
    flt = _filter(resource_type, query)
    docs = [_doc(r) for r in resources]
    found = [d for d in docs if _matches(d, flt)]
    if needs_recheck(flt):
        found = [d for d in found if recheck(flt, d)]
    else:
        assert all(recheck(flt, d) for d in found)
    return [d["_id"] for d in found]


def _obs(rid: str, **fields: Any) -> JsonDict:
    return {"resourceType": "Observation", "id": rid, "status": "final", **fields}


# --- dates (R4 search.html 3.1.1.4.6 prefixes) -------------------------------------------------

INSTANT = _obs("instant", effectiveDateTime="2013-01-14T10:00:00Z")
DAY = _obs("day", effectiveDateTime="2013-01-14")
NEXT_DAY = _obs("next-day", effectiveDateTime="2013-01-15T00:00:00Z")
DAY_BEFORE = _obs("day-before", effectiveDateTime="2013-01-13")
PERIOD_ACROSS_YEARS = _obs("across", effectivePeriod={"start": "2012-12-01", "end": "2013-01-31"})
OPEN_PERIOD = _obs("open", effectivePeriod={"start": "2013-03-14"})
LONG_AGO = _obs("long-ago", effectiveDateTime="2000-01-01")
DATED = [INSTANT, DAY, NEXT_DAY, DAY_BEFORE, PERIOD_ACROSS_YEARS, OPEN_PERIOD, LONG_AGO]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # eq: the search range fully contains the target range.
        ("date=2013", ["instant", "day", "next-day", "day-before"]),
        ("date=2013-01-14", ["instant", "day"]),
        ("date=eq2013-01-14", ["instant", "day"]),
        ("date=2013-01-14T10:00:00Z", ["instant"]),
        # ne: not eq.
        ("date=ne2013-01-14", ["next-day", "day-before", "across", "open", "long-ago"]),
        # lt/gt: the range below/above the search value overlaps the target.
        # Spec example: lt2013-01-14T10:00 matches the date 2013-01-14 (part of it is before).
        ("date=lt2013-01-14T10:00:00Z", ["day", "day-before", "across", "long-ago"]),
        ("date=gt2013-01-14T10:00:00Z", ["day", "next-day", "across", "open"]),
        ("date=gt2013", ["open"]),
        ("date=lt2013", ["across", "long-ago"]),
        # ge/le: gt/lt, or eq.
        ("date=ge2013-03-14", ["open"]),
        ("date=le2013-01-13", ["day-before", "across", "long-ago"]),
        # sa/eb: the target starts after / ends before the search range.
        ("date=sa2013-01-14", ["next-day", "open"]),
        ("date=eb2013-01-14", ["day-before", "long-ago"]),
        # ap: overlap with a range widened by 10% of the distance to now (2026).
        ("date=ap2013-01-14", ["instant", "day", "next-day", "day-before", "across", "open"]),
        # comma is OR, repetition is AND.
        ("date=2013-01-13,2013-01-15", ["next-day", "day-before"]),
        # 'across' ends after the day (ge holds) and starts before it (le holds).
        ("date=ge2013-01-14&date=le2013-01-14", ["instant", "day", "across"]),
    ],
)
def test_date_prefix_semantics(query: str, expected: list[str]) -> None:
    assert sorted(_hits("Observation", query, DATED)) == sorted(expected)


def test_period_without_end_reaches_infinity() -> None:
    assert _hits("Observation", "date=gt2999-01-01", DATED) == ["open"]


# --- tokens, strings, references, quantities ---------------------------------------------------

WEIGHT = _obs(
    "w",
    code={"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}]},
    subject={"reference": "Patient/p1", "identifier": {"system": "urn:mrn", "value": "42"}},
    valueQuantity={
        "value": 185,
        "unit": "lbs",
        "system": "http://unitsofmeasure.org",
        "code": "[lb_av]",
    },
)
HEIGHT = _obs(
    "h",
    code={"coding": [{"code": "8302-2"}], "text": "Height"},
    subject={"reference": "Group/g1"},
    valueQuantity={"value": 180, "system": "http://unitsofmeasure.org", "code": "cm"},
)
OBSERVATIONS = [WEIGHT, HEIGHT]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("code=http://loinc.org|29463-7", ["w"]),
        ("code=29463-7", ["w"]),
        ("code=|29463-7", []),  # it has a system
        ("code=|8302-2", ["h"]),
        ("code=http://loinc.org|", ["w"]),
        ("code=29463-7,8302-2", ["w", "h"]),
        ("code=29463-7&code=8302-2", []),
        ("code:not=29463-7", ["h"]),
        ("code:text=body wei", ["w"]),
        ("code:text=HEIGHT", ["h"]),
        ("subject=Patient/p1", ["w"]),
        ("subject=p1", ["w"]),
        ("subject:Patient=p1", ["w"]),
        ("subject:identifier=urn:mrn|42", ["w"]),
        ("subject:missing=true", []),
        ("value-quantity=185", ["w"]),
        ("value-quantity=185|http://unitsofmeasure.org|[lb_av]", ["w"]),
        ("value-quantity=185||lbs", ["w"]),
        ("value-quantity=gt180", ["w"]),
        ("value-quantity=le180", ["h"]),
        ("value-quantity=180.4", []),  # 180.4 covers [180.35, 180.45)
        ("value-quantity=1.8e2", ["h"]),  # two significant digits: [175, 185)
        ("code-value-quantity=http://loinc.org|29463-7$gt180", ["w"]),
        ("code-value-quantity=http://loinc.org|29463-7$lt180", []),
        ("combo-code-value-quantity=8302-2$180|http://unitsofmeasure.org|cm", ["h"]),
    ],
)
def test_observation_searches(query: str, expected: list[str]) -> None:
    assert sorted(_hits("Observation", query, OBSERVATIONS)) == sorted(expected)


def test_quantity_search_in_other_ucum_units() -> None:
    pytest.importorskip("terminology.ucum")
    # 185 [lb_av] = 83.91 kg; '83.9' covers [83.85, 83.95).
    assert _hits(
        "Observation", "value-quantity=83.9|http://unitsofmeasure.org|kg", OBSERVATIONS
    ) == ["w"]
    assert _hits("Observation", "value-quantity=1.8|http://unitsofmeasure.org|m", OBSERVATIONS) == [
        "h"
    ]


PATIENTS = [
    {"resourceType": "Patient", "id": "a", "name": [{"family": "Chalmers", "given": ["Peter"]}]},
    {"resourceType": "Patient", "id": "b", "name": [{"family": "Müller", "given": ["Zoë"]}]},
    {
        "resourceType": "Patient",
        "id": "c",
        "name": [{"family": "Adams", "given": ["Zed"]}],
        "identifier": [{"system": "urn:x", "value": "a,b|c"}],
    },
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("family=chal", ["a"]),
        ("family=CHALMERS", ["a"]),
        ("family=halm", []),
        ("family:contains=halm", ["a"]),
        ("family:contains=ll", ["b"]),
        ("family:exact=Chalmers", ["a"]),
        ("family:exact=chalmers", []),
        ("name=muller", ["b"]),
        ("name=zo", ["b"]),
        ("name=pet", ["a"]),  # 'adams'/'zed' must not satisfy a prefix by straddling it
        ("given=z", ["b", "c"]),
        ("family:missing=false", ["a", "b", "c"]),
        (r"identifier=urn:x|a\,b\|c", ["c"]),
        (r"identifier=a\,b\|c", ["c"]),
        ("_id=a,c", ["a", "c"]),
    ],
)
def test_patient_searches(query: str, expected: list[str]) -> None:
    assert sorted(_hits("Patient", query, PATIENTS)) == sorted(expected)


def test_number_search_uses_implicit_precision() -> None:
    risks = [
        {
            "resourceType": "RiskAssessment",
            "id": f"r{n}",
            "status": "final",
            "subject": {"reference": "Patient/1"},
            "prediction": [{"probabilityDecimal": n}],
        }
        for n in (0.5, 0.54, 0.56)
    ]
    assert _hits("RiskAssessment", "probability=0.5", risks) == ["r0.5", "r0.54"]
    assert _hits("RiskAssessment", "probability=0.50", risks) == ["r0.5"]
    assert _hits("RiskAssessment", "probability=gt0.54", risks) == ["r0.56"]


def test_uri_below_and_above() -> None:
    sets = [
        {
            "resourceType": "ValueSet",
            "id": "v1",
            "status": "active",
            "url": "http://acme.org/fhir/ValueSet/a",
        },
        {
            "resourceType": "ValueSet",
            "id": "v2",
            "status": "active",
            "url": "http://other.org/ValueSet/a",
        },
    ]
    assert _hits("ValueSet", "url:below=http://acme.org/fhir", sets) == ["v1"]
    assert _hits("ValueSet", "url:above=http://acme.org/fhir/ValueSet/a/b", sets) == ["v1"]
    assert _hits("ValueSet", "url=http://acme.org/fhir", sets) == []


# --- injection and errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ['{"$ne": 1}', "$where", "a.*", "^x$", "\\", "s.family", "x\x00y"]
)
def test_client_values_stay_plain_operands(value: str) -> None:
    flt = _filter("Patient", f"family={value}")
    assert _hits("Patient", f"family={value}", PATIENTS) == []
    assert all(not str(k).startswith("$") or k in OPERATORS for k in _all_keys(flt))


def _all_keys(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [*node.keys(), *(k for v in node.values() for k in _all_keys(v))]
    if isinstance(node, list):
        return [k for item in node for k in _all_keys(item)]
    return []


@pytest.mark.parametrize("name", ["name[$ne]", "$where", "s.family", "family.$gt", "_has"])
def test_unknown_or_malicious_names_are_rejected_when_strict(name: str) -> None:
    with pytest.raises(BadRequest):
        parse("Patient", [(name, "x")], registry(), strict=True)


def test_unknown_names_are_warnings_when_lenient() -> None:
    query = parse("Patient", [("name[$ne]", "x"), ("family", "a")], registry(), strict=False)
    assert len(query.criteria) == 1 and query.warnings
    assert "name[$ne]" in query.warnings[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("birthdate", "2013-13-01"),
        ("birthdate", "xx2013"),
        ("birthdate", "yesterday"),
        ("family:fuzzy", "x"),
        ("gender:in", "http://vs"),
        ("family:missing", "maybe"),
    ],
)
def test_malformed_values_name_the_parameter(name: str, value: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse("Patient", [(name, value)], registry(), strict=True)
    assert caught.value.issues[0]["expression"] == [name]


def test_bad_number_names_the_parameter() -> None:
    with pytest.raises(BadRequest) as caught:
        parse("Observation", [("value-quantity", "gt1x0")], registry(), strict=True)
    assert caught.value.issues[0]["expression"] == ["value-quantity"]


def test_result_parameters_are_kept_apart() -> None:
    items = [
        ("_sort", "-date"),
        ("_count", "10"),
        ("_include", "Observation:subject"),
        ("_revinclude:iterate", "Provenance:target"),
        ("code", "x"),
    ]
    query = parse("Observation", items, registry(), strict=True)
    assert [c.name for c in query.criteria] == ["code"]
    assert query.result_values("_revinclude") == ["Provenance:target"]
    assert query.result_values("_sort") == ["-date"]


# --- chains and _has ------------------------------------------------------------------------------


async def test_chained_parameter_runs_as_subquery() -> None:
    patients = [_doc(p) for p in PATIENTS]
    observations = [
        _obs("o-a", subject={"reference": "Patient/a"}),
        _obs("o-b", subject={"reference": "Patient/b"}),
    ]

    async def find_values(resource_type: str, flt: JsonDict, field: str, limit: int) -> list[str]:
        assert resource_type == "Patient" and field == "_id"
        return [d["_id"] for d in patients if _matches(d, flt)][:limit]

    parsed = parse("Observation", [("subject:Patient.name", "peter")], registry(), strict=True)
    compiled = compile_query(parsed, now_ms=NOW)
    assert isinstance(compiled["$and"][0], Subquery)
    final = await resolve_subqueries(compiled, find_values)
    assert [o["id"] for o in observations if _matches(_doc(o), final)] == ["o-a"]


async def test_reverse_chain_has() -> None:
    observations = [
        _doc(WEIGHT),
        _doc(_obs("o2", code={"text": "x"}, subject={"reference": "Patient/b"})),
    ]

    async def find_values(resource_type: str, flt: JsonDict, field: str, limit: int) -> list[str]:
        assert resource_type == "Observation" and field == "s.subject"
        return [v for d in observations if _matches(d, flt) for v in d["s"].get("subject", [])]

    parsed = parse(
        "Patient", [("_has:Observation:subject:code", "29463-7")], registry(), strict=True
    )
    final = await resolve_subqueries(compile_query(parsed, now_ms=NOW), find_values)
    patients = [_doc({"resourceType": "Patient", "id": i}) for i in ("p1", "b")]
    assert [d["_id"] for d in patients if _matches(d, final)] == ["p1"]


def test_deep_chain_parses_to_nested_criteria() -> None:
    parsed = parse("Observation", [("patient.organization.name", "acme")], registry(), strict=True)
    criterion = parsed.criteria[0]
    assert criterion.chain_types == ("Patient",)
    assert criterion.chain is not None and criterion.chain.chain_types == ("Organization",)
    assert criterion.chain.chain is not None and criterion.chain.chain.param.code == "name"


def test_recheck_removes_multikey_range_false_positives() -> None:
    # HEIGHT's keys straddle the range for LOINC 29463-7 (one key sorts above its low bound,
    # another below its high bound): the database filter alone would return it.
    flt = _filter("Observation", "code-value-quantity=http://loinc.org|29463-7$gt180")
    height = _doc(HEIGHT)
    assert _matches(height, flt) and needs_recheck(flt)
    assert not recheck(flt, height)
    assert recheck(flt, _doc(WEIGHT))


def test_sort_spec_uses_date_bounds_and_ends_with_id() -> None:
    from app.fhir.search.compile import sort_spec

    query = parse("Observation", [("_sort", "-date,code")], registry(), strict=True)
    assert sort_spec(query, registry()) == [("s.date:hi", -1), ("s.code", 1), ("_id", 1)]
    with pytest.raises(BadRequest):
        sort_spec(
            parse("Observation", [("_sort", "nonsense")], registry(), strict=True), registry()
        )


COMMON = [
    {
        "resourceType": "Patient",
        "id": "m1",
        "meta": {
            "lastUpdated": "2024-05-01T12:00:00Z",
            "tag": [{"system": "urn:tags", "code": "vip"}],
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "source": "urn:feed:lab",
        },
        "text": {
            "status": "generated",
            "div": "<div xmlns='http://www.w3.org/1999/xhtml'>Éva Kovács, diabetic</div>",
        },
        "birthDate": "1980",
    },
    {"resourceType": "Patient", "id": "m2", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"}},
]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("_lastUpdated=gt2024-06-01", ["m2"]),
        ("_lastUpdated=2024-05", ["m1"]),
        ("_tag=urn:tags|vip", ["m1"]),
        ("_tag:not=urn:tags|vip", ["m2"]),
        ("_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient", ["m1"]),
        ("_profile:below=http://hl7.org/fhir/us/core", ["m1"]),
        ("_source=urn:feed:lab", ["m1"]),
        ("_text=diabetic", ["m1"]),
        ("_text=eva kovacs", ["m1"]),
        ("_content=diabetic", ["m1"]),
        ("birthdate:missing=true", ["m2"]),
        ("birthdate=1980", ["m1"]),
        ("birthdate=1980-06", []),  # the search range does not contain the whole year
        ("birthdate=ap1980-06", ["m1"]),
    ],
)
def test_common_parameters(query: str, expected: list[str]) -> None:
    assert _hits("Patient", query, COMMON) == expected


# Instants around the edges of the search values below, to the millisecond.
INSTANTS = [
    "2024-04-30T23:59:59.999Z",
    "2024-05-01T00:00:00.000Z",
    "2024-05-15T12:30:00.000Z",
    "2024-05-15T12:30:00.999Z",
    "2024-05-15T12:30:01.000Z",
    "2024-05-31T23:59:59.999Z",
    "2024-06-01T00:00:00.000Z",
    "2025-11-30T08:00:00.000Z",
]


@pytest.mark.parametrize("prefix", ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
@pytest.mark.parametrize("value", ["2024", "2024-05", "2024-05-15", "2024-05-15T12:30:00Z"])
def test_last_updated_is_searched_as_the_instant_it_is(prefix: str, value: str) -> None:
    """`_lastUpdated` conditions use only its low key (one index), and select exactly what the
    general date semantics select for the same instants: AuditEvent.date (`recorded`) is an
    instant searched with the full range comparison."""
    patients = [
        {"resourceType": "Patient", "id": f"p{i}", "meta": {"lastUpdated": at}}
        for i, at in enumerate(INSTANTS)
    ]
    events = [
        {"resourceType": "AuditEvent", "id": f"p{i}", "recorded": at}
        for i, at in enumerate(INSTANTS)
    ]
    flt = _filter("Patient", f"_lastUpdated={prefix}{value}")
    fields: set[str] = set()
    _operators_and_fields(flt, set(), fields)
    assert fields == {"s._lastUpdated:lo"}
    expected = _hits("AuditEvent", f"date={prefix}{value}", events)
    assert _hits("Patient", f"_lastUpdated={prefix}{value}", patients) == expected


def test_sort_by_last_updated_uses_its_indexed_key_both_ways() -> None:
    from app.fhir.search.compile import sort_spec

    for sort, direction in (("_lastUpdated", 1), ("-_lastUpdated", -1)):
        query = parse("Patient", [("_sort", sort)], registry(), strict=True)
        assert sort_spec(query, registry())[0] == ("s._lastUpdated:lo", direction)


def test_chain_without_type_covers_every_target_with_the_parameter() -> None:
    parsed = parse("Observation", [("subject.name", "x")], registry(), strict=True)
    criterion = parsed.criteria[0]
    # Observation.subject targets Group, Device, Patient, Location; only Patient and Location
    # define a `name` parameter in R4.
    assert set(criterion.chain_types) == {"Patient", "Location"}
    compiled = compile_query(parsed, now_ms=NOW)["$and"][0]
    assert "$or" in compiled and all(isinstance(s, Subquery) for s in compiled["$or"])


def test_nested_has_parses() -> None:
    parsed = parse(
        "Patient",
        [("_has:Observation:patient:_has:AuditEvent:entity:agent", "Practitioner/1")],
        registry(),
        strict=True,
    )
    outer = compile_query(parsed, now_ms=NOW)["$and"][0]
    assert isinstance(outer, Subquery) and outer.resource_type == "Observation"
    inner = outer.filter["$and"][0]
    assert isinstance(inner, Subquery) and inner.resource_type == "AuditEvent"
    assert inner.target_type == "Observation"


def test_empty_values_are_ignored_with_a_warning() -> None:
    query = parse("Patient", [("family", ""), ("gender", "male")], registry(), strict=True)
    assert [c.name for c in query.criteria] == ["gender"]
    assert "family" in query.warnings[0]


def test_contained_reference_value_matches_nothing() -> None:
    assert _hits("Observation", "subject=%23contained", OBSERVATIONS) == []
    assert _hits("Observation", "subject=#x", OBSERVATIONS) == []


def _date_ranges(node: Any, fields: frozenset[str]) -> list[JsonDict]:
    """Every condition on one of `fields` in a compiled filter."""
    found: list[JsonDict] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in fields:
                found.append(value)
            else:
                found += _date_ranges(value, fields)
    elif isinstance(node, list):
        for item in node:
            found += _date_ranges(item, fields)
    return found


@pytest.mark.parametrize("prefix", ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"])
@pytest.mark.parametrize(
    ("resource_type", "code", "fields"),
    [
        ("Observation", "date", frozenset({"s.date:lo", "s.date:hi"})),
        ("Observation", "_lastUpdated", frozenset({"s._lastUpdated:lo"})),
    ],
)
def test_every_date_comparison_is_bounded_on_both_sides(
    prefix: str, resource_type: str, code: str, fields: frozenset[str]
) -> None:
    """The embedded server scans a whole collection for a range open on one side, index or
    not, so the compiler names the other end of the key space too (compile.DATE_FLOOR and
    DATE_CEILING); the results are the same."""
    compiled = _filter(resource_type, f"{code}={prefix}2013-01-14")
    ranges = _date_ranges(compiled, fields)
    assert ranges
    for condition in ranges:
        assert condition.keys() & {"$gt", "$gte"} and condition.keys() & {"$lt", "$lte"}, (
            prefix,
            condition,
        )

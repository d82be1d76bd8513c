"""Result control, search forms, restrictions and errors of SearchEngine, on stored data."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from pymongo import AsyncMongoClient

from app.fhir.outcome import BadRequest, NotFound
from tests.search.conftest import (
    BASE,
    SearchWorld,
    entries,
    match_ids,
    new_world,
)

pytestmark = pytest.mark.asyncio
JsonDict = dict[str, Any]


def link(bundle: JsonDict, relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


def items_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


# --- date prefixes: table from R4 search.html#prefix, with the page's own examples --------

DATES: dict[str, JsonDict] = {
    "d-instant": {"effectiveDateTime": "2013-01-14T10:00:00Z"},
    "d-day": {"effectiveDateTime": "2013-01-14"},
    "d-next": {"effectiveDateTime": "2013-01-15T00:00:00Z"},
    "d-period": {"effectivePeriod": {"start": "2013-01-10", "end": "2013-01-20"}},
    "d-open": {"effectivePeriod": {"start": "2013-01-21"}},  # "from 21-Jan 2013 onwards"
    "d-2012": {"effectiveDateTime": "2012"},
    "d-march": {"effectiveDateTime": "2013-03-14T12:00:00Z"},
}
ALL_DATES = sorted(DATES)


@pytest.fixture(scope="module")
async def dates(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Observation"])
    for oid, effective in DATES.items():
        await world.put(
            {
                "resourceType": "Observation",
                "id": oid,
                "status": "final",
                "code": {"text": "x"},
                **effective,
            }
        )
    return world


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # eq: the search range fully contains the target's range.
        ("2013-01-14", ["d-day", "d-instant"]),
        ("eq2013", ["d-day", "d-instant", "d-march", "d-next", "d-period"]),
        ("2013-01-14T10:00Z", ["d-instant"]),
        # ne: it does not.
        ("ne2013-01-14", ["d-2012", "d-march", "d-next", "d-open", "d-period"]),
        # lt/gt: the range below/above the search value overlaps the target.
        ("lt2013-01-14T10:00", ["d-2012", "d-day", "d-period"]),
        ("gt2013-01-14T10:00", ["d-day", "d-march", "d-next", "d-open", "d-period"]),
        ("gt2013-03-14", ["d-open"]),
        ("lt2013-03-14", ["d-2012", "d-day", "d-instant", "d-next", "d-open", "d-period"]),
        # ge/le: as gt/lt, or fully contained (eq).
        ("ge2013-03-14", ["d-march", "d-open"]),
        ("le2013-03-14", ALL_DATES),
        # sa/eb: the target starts after / ends before the search range, no overlap.
        ("sa2013-01-14", ["d-march", "d-next", "d-open"]),
        ("eb2013-01-14", ["d-2012"]),
    ],
)
async def test_date_prefix_table(dates: SearchWorld, value: str, expected: list[str]) -> None:
    assert sorted(await dates.ids("Observation", f"date={value}")) == expected


async def test_date_approximately_includes_neighbours(dates: SearchWorld) -> None:
    found = await dates.ids("Observation", "date=ap2013-01-14")
    assert {"d-day", "d-instant", "d-next"} <= set(found)


# --- paging --------------------------------------------------------------------------------


@pytest.fixture
async def pages(mongo: AsyncMongoClient[JsonDict]) -> SearchWorld:
    world = await new_world(mongo, ["Patient"])
    for i in range(10):
        await world.put(
            {
                "resourceType": "Patient",
                "id": f"p{i:02d}",
                "name": [{"family": f"Fam{9 - i}"}],
                "birthDate": f"19{50 + (i % 3)}-01-01",
            }
        )
    return world


async def _walk(world: SearchWorld, query: str, relation: str = "next") -> list[list[str]]:
    bundle = await world.search("Patient", query)
    seen = [match_ids(bundle)]
    while (url := link(bundle, relation)) is not None:
        bundle = await world.search("Patient", items_of(url))
        seen.append(match_ids(bundle))
    return seen


async def test_pages_follow_next_links(pages: SearchWorld) -> None:
    walked = await _walk(pages, "_count=3")
    assert walked == [
        ["p00", "p01", "p02"],
        ["p03", "p04", "p05"],
        ["p06", "p07", "p08"],
        ["p09"],
    ]


async def test_previous_links_walk_back(pages: SearchWorld) -> None:
    bundle = await pages.search("Patient", "_count=4")
    bundle = await pages.search("Patient", items_of(link(bundle, "next") or ""))
    bundle = await pages.search("Patient", items_of(link(bundle, "next") or ""))
    assert match_ids(bundle) == ["p08", "p09"]
    back = await pages.search("Patient", items_of(link(bundle, "previous") or ""))
    assert match_ids(back) == ["p04", "p05", "p06", "p07"]
    first = await pages.search("Patient", items_of(link(back, "previous") or ""))
    assert match_ids(first) == ["p00", "p01", "p02", "p03"]
    assert link(first, "previous") is None


async def test_sort_multiple_keys_and_descending(pages: SearchWorld) -> None:
    # birth years: p00 1950, p01 1951, p02 1952, p03 1950, ...; family of p<i> is Fam<9-i>.
    walked = await _walk(pages, "_sort=birthdate,-family&_count=4")
    flat = [i for page in walked for i in page]
    assert flat == ["p00", "p03", "p06", "p09", "p01", "p04", "p07", "p02", "p05", "p08"]
    by_family = await _walk(pages, "_sort=-family&_count=3")
    assert [i for page in by_family for i in page] == [f"p{i:02d}" for i in range(10)]


async def test_pages_stay_correct_while_data_changes(pages: SearchWorld) -> None:
    first = await pages.search("Patient", "_sort=family&_count=4")
    assert match_ids(first) == ["p09", "p08", "p07", "p06"]
    # Between pages: a resource sorting before the cursor, one after it, and a deletion.
    await pages.put({"resourceType": "Patient", "id": "early", "name": [{"family": "Fam0a"}]})
    await pages.put({"resourceType": "Patient", "id": "late", "name": [{"family": "Fam99"}]})
    await pages.interactions.delete("Patient", "p05")
    second = await pages.search("Patient", items_of(link(first, "next") or ""))
    assert match_ids(second) == ["p04", "p03", "p02", "p01"]
    third = await pages.search("Patient", items_of(link(second, "next") or ""))
    assert match_ids(third) == ["p00", "late"]
    assert link(third, "next") is None


async def test_tampered_or_foreign_cursor_is_a_400(pages: SearchWorld) -> None:
    bundle = await pages.search("Patient", "_count=2")
    items = items_of(link(bundle, "next") or "")
    cursor = dict(items)["_cursor"]
    forged = [
        (k, cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")) if k == "_cursor" else (k, v)
        for k, v in items
    ]
    for bad in (
        forged,
        [*items[:-1], ("_cursor", "garbage")],
        [("name", "x"), ("_cursor", cursor)],
    ):
        with pytest.raises(BadRequest) as caught:
            await pages.search("Patient", bad)
        assert caught.value.issues[0]["expression"] == ["_cursor"]


async def test_links_carry_the_search(pages: SearchWorld) -> None:
    bundle = await pages.search("Patient", "birthdate=ge1950&_count=2")
    assert link(bundle, "self") == f"{BASE}/Patient?birthdate=ge1950&_count=2"
    assert link(bundle, "first") == f"{BASE}/Patient?birthdate=ge1950&_count=2"
    nxt = link(bundle, "next") or ""
    assert nxt.startswith(f"{BASE}/Patient?birthdate=ge1950&_count=2&_cursor=")


async def test_total_modes_and_count_zero(pages: SearchWorld) -> None:
    # Default: Bundle.total is optional (R4), so a page that does not hold every match leaves
    # it out rather than count; a first page that holds them all knows the total for free.
    assert "total" not in await pages.search("Patient", "_count=3")
    assert (await pages.search("Patient", "_count=50"))["total"] == 10
    first = await pages.search("Patient", "_count=3&_total=estimate")
    assert first["total"] == 10
    second = await pages.search("Patient", items_of(link(first, "next") or ""))
    assert second["total"] == 10  # carried from the first page
    assert "total" not in await pages.search("Patient", "_count=3&_total=none")
    assert (await pages.search("Patient", "_count=3&_total=accurate"))["total"] == 10
    only_total = await pages.search("Patient", "_count=0")
    assert only_total["total"] == 10 and "entry" not in only_total
    assert link(only_total, "next") is None
    counted = await pages.search("Patient", "_summary=count&birthdate=1950")
    assert counted["total"] == 4 and "entry" not in counted


# --- includes ------------------------------------------------------------------------------


async def test_include_and_revinclude(clinic: SearchWorld) -> None:
    bundle = await clinic.search("Condition", "_include=Condition:subject")
    assert sorted(entries(bundle, "match")) == ["Condition/cond-1", "Condition/cond-2"]
    assert sorted(entries(bundle, "include")) == ["Patient/pat-jones", "Patient/pat-smith"]
    assert bundle["total"] == 2  # includes are not counted
    rev = await clinic.search("Patient", "_id=pat-jones&_revinclude=Observation:subject")
    assert entries(rev, "match") == ["Patient/pat-jones"]
    assert sorted(entries(rev, "include")) == ["Observation/obs-a1c", "Observation/obs-glucose-3"]


async def test_include_target_iterate_and_wildcard(clinic: SearchWorld) -> None:
    two = await clinic.search(
        "Observation",
        "_id=obs-glucose-1&_include=Observation:encounter&_include=Observation:performer",
    )
    assert sorted(entries(two, "include")) == ["Encounter/enc-1", "Practitioner/pr-1"]
    typed = await clinic.search(
        "Observation", "_id=obs-glucose-1&_include=Observation:subject:Group"
    )
    assert entries(typed, "include") == []
    iterate = await clinic.search(
        "Observation",
        "_id=obs-glucose-1&_include=Observation:patient&_include:iterate=Patient:organization",
    )
    assert sorted(entries(iterate, "include")) == ["Organization/org-acme", "Patient/pat-smith"]
    not_iterated = await clinic.search(
        "Observation",
        "_id=obs-glucose-1&_include=Observation:patient&_include=Patient:organization",
    )
    assert entries(not_iterated, "include") == ["Patient/pat-smith"]
    star = await clinic.search("Observation", "_id=obs-glucose-1&_include=*")
    assert sorted(entries(star, "include")) == [
        "Encounter/enc-1",
        "Patient/pat-smith",
        "Practitioner/pr-1",
    ]
    rev_iterate = await clinic.search(
        "Organization",
        "_id=org-beta&_revinclude=Patient:organization&_revinclude:iterate=Condition:subject",
    )
    assert sorted(entries(rev_iterate, "include")) == ["Condition/cond-2", "Patient/pat-jones"]


# --- _summary and _elements ----------------------------------------------------------------


def _subsetted(resource: JsonDict) -> bool:
    return any(
        t.get("code") == "SUBSETTED"
        and t.get("system") == "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
        for t in resource.get("meta", {}).get("tag", [])
    )


async def test_summary_modes(clinic: SearchWorld) -> None:
    full = (await clinic.search("Patient", "_id=pat-smith"))["entry"][0]["resource"]
    assert not _subsetted(full) and "text" in full and "generalPractitioner" in full
    summary = (await clinic.search("Patient", "_id=pat-smith&_summary=true"))["entry"][0]
    resource = summary["resource"]
    # Patient.name/birthDate/managingOrganization are summary elements; text and
    # generalPractitioner are not (R4 patient.html).
    assert {"name", "birthDate", "managingOrganization", "id", "meta"} <= set(resource)
    assert "text" not in resource and "generalPractitioner" not in resource
    assert _subsetted(resource)
    assert any(t.get("code") == "vip" for t in resource["meta"]["tag"])
    text = (await clinic.search("Patient", "_id=pat-smith&_summary=text"))["entry"][0]["resource"]
    assert set(text) <= {"resourceType", "id", "meta", "text"} and "text" in text
    data = (await clinic.search("Patient", "_id=pat-smith&_summary=data"))["entry"][0]["resource"]
    assert "text" not in data and "generalPractitioner" in data and _subsetted(data)
    obs = (await clinic.search("Observation", "_id=obs-weight&_summary=text"))["entry"][0]
    # Observation.status and .code are mandatory (min 1), so _summary=text keeps them.
    assert {"status", "code"} <= set(obs["resource"])


async def test_elements(clinic: SearchWorld) -> None:
    bundle = await clinic.search("Observation", "_id=obs-weight&_elements=status,value")
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "valueQuantity"}
    assert _subsetted(resource)


# --- search forms --------------------------------------------------------------------------


async def test_system_search(clinic: SearchWorld) -> None:
    found = await clinic.ids(None, "_type=Patient,Condition&_id=pat-jones,cond-1")
    assert sorted(found) == ["Condition/cond-1", "Patient/pat-jones"]
    tagged = await clinic.ids(None, "_tag=http://tags|vip")  # every stored type
    assert tagged == ["Patient/pat-smith"]
    with pytest.raises(BadRequest) as caught:
        await clinic.search(None, "_type=Patient,Condition&name=smith")
    assert caught.value.issues[0]["expression"] == ["name"]
    with pytest.raises(BadRequest):
        await clinic.search(None, "_type=Nonsense")


async def test_system_search_pages_across_types(clinic: SearchWorld) -> None:
    query = "_type=Patient,Condition,Organization&_count=3"
    bundle = await clinic.search(None, query)
    seen = match_ids(bundle, typed=True)
    while (url := link(bundle, "next")) is not None:
        assert url.startswith(f"{BASE}?_type=")
        bundle = await clinic.search(None, items_of(url))
        seen += match_ids(bundle, typed=True)
    expected = [
        *(
            f"Patient/{i}"
            for i in ("pat-jones", "pat-nobirth", "pat-regex", "pat-smith", "pat-smythe")
        ),
        "Condition/cond-1",
        "Condition/cond-2",
        "Organization/org-acme",
        "Organization/org-beta",
    ]
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)


async def test_compartment_search(clinic: SearchWorld) -> None:
    found = await clinic.ids("Observation", "", compartment=("Patient", "pat-smith"))
    assert sorted(found) == ["obs-bp", "obs-glucose-1", "obs-glucose-2"]
    coded = await clinic.ids("Observation", "code=2339-0", compartment=("Patient", "pat-smith"))
    assert sorted(coded) == ["obs-glucose-1", "obs-glucose-2"]
    everything = await clinic.ids(None, "", compartment=("Patient", "pat-jones"))
    assert sorted(everything) == [
        "Condition/cond-2",
        "Encounter/enc-2",
        "Observation/obs-a1c",
        "Observation/obs-glucose-3",
        "Patient/pat-jones",
    ]
    encounter = await clinic.ids("Observation", "", compartment=("Encounter", "enc-1"))
    assert encounter == ["obs-glucose-1"]
    bundle = await clinic.search("Observation", "_count=1", compartment=("Patient", "pat-smith"))
    assert (link(bundle, "next") or "").startswith(f"{BASE}/Patient/pat-smith/Observation?")
    with pytest.raises(BadRequest):
        await clinic.search("Organization", "", compartment=("Patient", "pat-smith"))


# --- patient scope -------------------------------------------------------------------------


async def test_patient_scope_restricts_everything(clinic: SearchWorld) -> None:
    scope = ["Patient/pat-jones"]
    assert sorted(await clinic.ids("Observation", "", patient_scope=scope)) == [
        "obs-a1c",
        "obs-glucose-3",
    ]
    assert await clinic.ids("Patient", "", patient_scope=scope) == ["pat-jones"]
    # Includes cannot reach another patient's resources, nor out-of-compartment ones.
    bundle = await clinic.search(
        "Patient",
        "_revinclude=Observation:subject&_include=Patient:organization",
        patient_scope=scope,
    )
    assert sorted(entries(bundle, "include")) == [
        "Observation/obs-a1c",
        "Observation/obs-glucose-3",
    ]
    leaking = await clinic.search(
        "Encounter", "_id=enc-2&_revinclude=Observation:encounter", patient_scope=["Patient/x"]
    )
    assert entries(leaking, "match") == [] and entries(leaking, "include") == []
    # Chains and _has only see resources in scope.
    assert await clinic.ids("Observation", "subject:Patient.name=smith", patient_scope=scope) == []
    assert await clinic.ids(
        "Patient", "_has:Observation:patient:code=2339-0", patient_scope=scope
    ) == ["pat-jones"]
    in_other = await clinic.ids(
        "Observation", "", compartment=("Patient", "pat-smith"), patient_scope=scope
    )
    assert in_other == []


# --- hostile and malformed input -----------------------------------------------------------


async def test_operators_and_regex_are_plain_values(clinic: SearchWorld) -> None:
    bundle = await clinic.search("Patient", [("name[$ne]", "x"), ("$where", "1==1")])
    warnings = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    text = " ".join(i["diagnostics"] for w in warnings for i in w["issue"])
    assert "name[$ne]" in text and "$where" in text
    assert await clinic.ids("Patient", 'name={"$ne": "x"}') == []
    assert await clinic.ids("Patient", "family=$ne") == []
    assert await clinic.ids("Patient", "family=.*") == []
    assert await clinic.ids("Patient", "family=a.*b(") == ["pat-regex"]
    assert await clinic.ids("Patient", "family:contains=*b(") == ["pat-regex"]
    assert await clinic.ids("Patient", "_id=$where") == []
    with pytest.raises(BadRequest) as caught:
        await clinic.search("Patient", [("name[$ne]", "x")], strict=True)
    assert caught.value.issues[0]["expression"] == ["name[$ne]"]


@pytest.mark.parametrize(
    ("resource_type", "query", "parameter"),
    [
        ("Patient", "birthdate=notadate", "birthdate"),
        ("Observation", "value-quantity=abc", "value-quantity"),
        ("Observation", "date=xx2013", "date"),
        ("Observation", "code:foo=1", "code:foo"),
        ("Patient", "_count=-1", "_count"),
        ("Patient", "_count=ten", "_count"),
        ("Patient", "_sort=nonexistent", "_sort"),
        ("Patient", "_include=Bad", "_include"),
        ("Patient", "_include=Patient:name", "_include"),
        ("Patient", "_summary=maybe", "_summary"),
        ("Patient", "_total=exact", "_total"),
        ("Patient", "gender:missing=perhaps", "gender:missing"),
    ],
)
async def test_malformed_values_name_the_parameter(
    clinic: SearchWorld, resource_type: str, query: str, parameter: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        await clinic.search(resource_type, query)
    assert caught.value.issues[0]["expression"] == [parameter]


async def test_unknown_type_is_not_found(clinic: SearchWorld) -> None:
    with pytest.raises(NotFound):
        await clinic.search("Nonsense", "")


# --- conditional matching and capability ----------------------------------------------------


async def test_match_ids(clinic: SearchWorld) -> None:
    assert await clinic.engine.match_ids("Patient", [("identifier", "http://hosp/mrn|MRN1")]) == [
        "pat-smith"
    ]
    assert len(await clinic.engine.match_ids("Patient", [("gender", "female")])) == 2
    assert len(await clinic.engine.match_ids("Patient", [("gender", "female")], limit=1)) == 1
    assert await clinic.engine.match_ids("Patient", [("name", "jones"), ("_count", "1")]) == [
        "pat-jones"
    ]
    with pytest.raises(BadRequest):
        await clinic.engine.match_ids("Patient", [("nonsense", "1")])


async def test_conditional_create_uses_the_engine(clinic: SearchWorld) -> None:
    body = {"resourceType": "Organization", "name": "Acme Health"}
    result = await clinic.interactions.create(
        "Organization", body, if_none_exist=[("identifier", "http://npi|111")]
    )
    assert result.status == 200 and result.version is not None
    assert result.version.id == "org-acme"


async def test_search_parameters_lists_what_works(clinic: SearchWorld) -> None:
    params = {p["name"]: p for p in clinic.engine.search_parameters("Observation")}
    assert params["code"]["type"] == "token"
    assert params["code"]["definition"] == "http://hl7.org/fhir/SearchParameter/clinical-code"
    assert {"_id", "_lastUpdated", "_text", "_content", "_list", "patient"} <= set(params)
    assert "_query" not in params

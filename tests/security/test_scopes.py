"""SMART App Launch 2.2 scope grammar; examples are those of scopes-and-launch-context.html."""

from __future__ import annotations

import pytest

from app.security.scopes import Grant, Interaction, parse_scopes

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"

# (scope, level, resource type, permission letters, restrictions), from the spec's tables.
RESOURCE_SCOPES = [
    ("patient/*.rs", "patient", "*", "rs", ()),
    ("user/*.cruds", "user", "*", "cruds", ()),
    ("patient/Observation.cu", "patient", "Observation", "cu", ()),
    ("patient/Observation.rs", "patient", "Observation", "rs", ()),
    ("user/Observation.rs", "user", "Observation", "rs", ()),
    ("user/Appointment.cruds", "user", "Appointment", "cruds", ()),
    ("user/Patient.rs", "user", "Patient", "rs", ()),
    ("system/Observation.rs", "system", "Observation", "rs", ()),
    ("system/*.rs", "system", "*", "rs", ()),
    ("system/Encounter.cud", "system", "Encounter", "cud", ()),
    ("patient/AllergyIntolerance.cud", "patient", "AllergyIntolerance", "cud", ()),
    ("patient/Observation.r", "patient", "Observation", "r", ()),
    ("patient/Observation.s", "patient", "Observation", "s", ()),
    ("patient/Observation.d", "patient", "Observation", "d", ()),
    # v1 spellings with their v2 meaning
    ("patient/Observation.read", "patient", "Observation", "rs", ()),
    ("patient/Immunization.read", "patient", "Immunization", "rs", ()),
    ("user/*.write", "user", "*", "cud", ()),
    ("user/*.*", "user", "*", "cruds", ()),
    ("system/Patient.*", "system", "Patient", "cruds", ()),
    # granular scopes
    (
        f"patient/Observation.rs?category={LAB}",
        "patient",
        "Observation",
        "rs",
        (("category", LAB),),
    ),
    (
        "patient/Observation.rs?category=laboratory",
        "patient",
        "Observation",
        "rs",
        (("category", "laboratory"),),
    ),
    (
        "patient/Observation.rs?code:in=http://valueset.example.org/ValueSet/diabetes-codes",
        "patient",
        "Observation",
        "rs",
        (("code:in", "http://valueset.example.org/ValueSet/diabetes-codes"),),
    ),
    (
        "patient/Observation.rs?patient.birthdate=1990",
        "patient",
        "Observation",
        "rs",
        (("patient.birthdate", "1990"),),
    ),
    (
        "user/Observation.rs?category=vital-signs&status=final",
        "user",
        "Observation",
        "rs",
        (("category", "vital-signs"), ("status", "final")),
    ),
    (
        "patient/Observation.rs?category=http%3A%2F%2Fterminology.hl7.org%2FCodeSystem"
        "%2Fobservation-category%7Claboratory",
        "patient",
        "Observation",
        "rs",
        (("category", LAB),),
    ),
]


@pytest.mark.parametrize(
    ("scope", "level", "resource_type", "letters", "restrictions"), RESOURCE_SCOPES
)
def test_resource_scope_is_parsed(
    scope: str, level: str, resource_type: str, letters: str, restrictions: tuple
) -> None:
    parsed = parse_scopes(scope)
    assert parsed.ignored == ()
    assert len(parsed.grants) == 1
    grant = parsed.grants[0]
    assert grant.level == level
    assert grant.resource_type == resource_type
    assert grant.permission_string == letters
    assert grant.restrictions == restrictions


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.dus",  # the spec's example of out-of-order interactions
        "patient/Observation.sr",
        "patient/Observation.rr",
        "patient/Observation.",
        "patient/Observation.x",
        "patient/Observation.rd.read",
        "patient/observation.rs",  # resource types start upper-case
        "practitioner/Observation.rs",
        "patient/Observation",
        "patient/.rs",
        "patient/Observation.rs?",
        "patient/Observation.rs?category",
        "patient/Observation.rs?=laboratory",
        "launch/Patient",  # launch context scopes are lower-case
        "admin",
        "Observation.rs",
        "",
    ],
)
def test_malformed_scope_is_ignored_and_reported(scope: str) -> None:
    parsed = parse_scopes(f"openid {scope} patient/Patient.rs")
    assert [g.to_scope() for g in parsed.grants] == ["patient/Patient.rs"]
    assert parsed.openid
    if scope:
        assert [i.scope for i in parsed.ignored] == [scope]
        assert parsed.ignored[0].reason


def test_non_resource_scopes_are_recognised() -> None:
    parsed = parse_scopes(
        "openid fhirUser profile launch launch/patient launch/encounter offline_access "
        "online_access launch/imagingstudy launch/list?role=https://example.org/med-list-at-home"
    )
    assert parsed.ignored == ()
    assert parsed.grants == ()
    assert parsed.openid and parsed.fhir_user and parsed.launch
    assert parsed.offline_access and parsed.online_access and parsed.wants_refresh_token
    assert parsed.launch_contexts == {"patient", "encounter", "imagingstudy", "list"}
    assert parsed.context == frozenset()


def test_whitespace_runs_and_none_are_tolerated() -> None:
    assert len(parse_scopes("  patient/*.rs \t user/Patient.rs  ").grants) == 2
    assert parse_scopes(None).grants == ()
    assert parse_scopes("").scopes() == []


def test_context_lists_levels_present() -> None:
    assert parse_scopes("patient/*.rs user/Patient.r openid").context == {"patient", "user"}
    assert parse_scopes("system/*.rs").context == {"system"}


# -- interactions -------------------------------------------------------------------------

# The spec: c=create; r=read, vread, instance history; u=update, patch; d=delete;
# s=type search, type history, system search, system history.
INTERACTION_LETTER = [
    ("create", "c"),
    ("read", "r"),
    ("vread", "r"),
    ("history-instance", "r"),
    ("update", "u"),
    ("patch", "u"),
    ("delete", "d"),
    ("search", "s"),
    ("search-type", "s"),
    ("search-system", "s"),
    ("history-type", "s"),
    ("history-system", "s"),
]


@pytest.mark.parametrize(("interaction", "letter"), INTERACTION_LETTER)
def test_interaction_needs_its_permission_letter(interaction: str, letter: str) -> None:
    for letters in ("c", "r", "u", "d", "s"):
        scopes = parse_scopes(f"user/Observation.{letters}")
        assert scopes.permits(interaction, "Observation") is (letters == letter)  # type: ignore[arg-type]


def test_v1_read_allows_read_and_search_but_not_write() -> None:
    scopes = parse_scopes("patient/Observation.read")
    assert scopes.permits("read", "Observation")
    assert scopes.permits("search", "Observation")
    assert not scopes.permits("update", "Observation")
    assert not scopes.permits("delete", "Observation")


def test_v1_write_allows_create_update_delete_but_not_read() -> None:
    scopes = parse_scopes("patient/Observation.write")
    assert [scopes.permits(i, "Observation") for i in ("create", "update", "delete")] == [True] * 3
    assert not scopes.permits("read", "Observation")
    assert not scopes.permits("search", "Observation")


def test_wildcard_covers_every_type_but_a_named_type_only_itself() -> None:
    assert parse_scopes("patient/*.rs").permits("read", "Condition")
    named = parse_scopes("patient/Condition.rs")
    assert named.permits("read", "Condition")
    assert not named.permits("read", "Observation")
    # System-wide requests not limited to named types need a wildcard grant.
    assert not named.permits("history-system", "*")
    assert parse_scopes("system/*.s").permits("history-system", "*")


def test_allows_returns_the_grants_with_their_restrictions() -> None:
    scopes = parse_scopes(
        f"patient/Observation.rs?category={LAB} patient/Observation.rs?category=vital-signs "
        "patient/Condition.rs"
    )
    grants = scopes.allows("search", "Observation")
    assert [g.restrictions for g in grants] == [
        (("category", LAB),),
        (("category", "vital-signs"),),
    ]
    assert not any(g.unrestricted for g in grants)
    assert scopes.allows("create", "Observation") == []


def test_unknown_interaction_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="operation"):
        parse_scopes("user/*.cruds").allows("operation", "Patient")  # type: ignore[arg-type]


def test_equivalent_split_scopes_permit_the_same() -> None:
    # "Observation.rs" is equivalent to "Observation.r Observation.s".
    joined = parse_scopes("user/Observation.rs")
    split = parse_scopes("user/Observation.r user/Observation.s")
    interactions: list[Interaction] = ["read", "search", "create", "update", "delete"]
    for interaction in interactions:
        assert joined.permits(interaction, "Observation") == split.permits(
            interaction, "Observation"
        )


# -- narrowing ----------------------------------------------------------------------------


def granted(requested: str, allowed: str) -> list[str]:
    return parse_scopes(requested).intersect(parse_scopes(allowed)).scopes()


def test_intersect_keeps_fully_allowed_scopes_as_requested() -> None:
    assert granted("patient/AllergyIntolerance.cruds", "patient/*.cruds") == [
        "patient/AllergyIntolerance.cruds"
    ]
    # v1 requests are answered in v1 when granted as asked.
    assert granted("patient/Observation.read", "patient/*.rs") == ["patient/Observation.read"]


def test_intersect_narrows_permissions() -> None:
    # The spec's example: AllergyIntolerance.cruds requested, only read access granted.
    assert granted("patient/AllergyIntolerance.cruds", "patient/AllergyIntolerance.rs") == [
        "patient/AllergyIntolerance.rs"
    ]
    assert granted("user/*.write", "user/*.rs user/Observation.cu") == ["user/Observation.cu"]


def test_intersect_narrows_wildcard_to_allowed_types() -> None:
    assert granted("system/*.rs", "system/Observation.rs system/Patient.r") == [
        "system/Observation.rs",
        "system/Patient.r",
    ]


def test_intersect_requires_same_level() -> None:
    assert granted("user/*.rs", "patient/*.rs") == []
    assert granted("system/Observation.rs", "user/Observation.rs") == []


def test_intersect_combines_restrictions() -> None:
    assert granted("patient/Observation.rs", f"patient/Observation.rs?category={LAB}") == [
        f"patient/Observation.rs?category={LAB}"
    ]
    narrowed = parse_scopes("user/Observation.rs?status=final").intersect(
        parse_scopes("user/Observation.r?category=laboratory")
    )
    assert narrowed.grants == (
        Grant(
            "user",
            "Observation",
            frozenset({"r"}),
            (("status", "final"), ("category", "laboratory")),
        ),
    )


def test_intersect_filters_non_resource_scopes() -> None:
    result = parse_scopes("openid fhirUser launch/patient offline_access").intersect(
        parse_scopes("openid fhirUser launch/patient online_access")
    )
    assert str(result) == "fhirUser launch/patient openid"
    assert not result.offline_access


def test_canonical_form_encodes_only_syntax_characters() -> None:
    grant = Grant("patient", "Observation", frozenset({"r", "s"}), (("code", "a&b=c"),))
    assert grant.canonical() == "patient/Observation.rs?code=a%26b%3Dc"
    assert parse_scopes(grant.canonical()).grants[0].restrictions == (("code", "a&b=c"),)
    lab = Grant("patient", "Observation", frozenset({"s", "r"}), (("category", LAB),))
    assert lab.canonical() == f"patient/Observation.rs?category={LAB}"


def test_duplicate_scopes_collapse() -> None:
    assert parse_scopes("patient/*.rs patient/*.rs openid openid").scopes() == [
        "patient/*.rs",
        "openid",
    ]

"""AccessContext: which interactions a token allows, on which compartment, with which
granular criteria (SMART App Launch 2.2 scopes-and-launch-context.html)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from app.fhir.outcome import Forbidden, NotFound, Unauthorized
from app.security.keystore import KeyStore
from app.security.policy import AccessContext, authenticate
from app.security.scopes import parse_scopes
from app.security.service import Security, SecurityConfig
from app.security.tokens import issue_access_token
from tests.security.live_server import LiveServer

LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"


def ctx(scope: str, patient: str | None = None, fhir_user: str | None = None) -> AccessContext:
    return AccessContext(
        client_id="app", scopes=parse_scopes(scope), patient=patient, fhir_user=fhir_user
    )


def test_patient_scope_limits_to_the_patient_compartment() -> None:
    access = ctx("patient/Observation.rs", patient="123").authorize("search", "Observation")
    assert access.patient_scope == ["Patient/123"]
    assert access.extra_criteria() == []
    assert access.visible(["Patient/123", "Patient/9"])
    assert not access.visible(["Patient/456"])
    assert not access.visible([])  # in no compartment at all: not this patient's


def test_another_patients_resource_is_not_found_rather_than_forbidden() -> None:
    access = ctx("patient/*.rs", patient="123").authorize("read", "Condition")
    with pytest.raises(NotFound) as caught:
        access.ensure_visible(["Patient/456"], "Condition/c1")
    assert caught.value.status == 404
    assert caught.value.diagnostics == "Condition/c1 is not known"


def test_patient_scoped_write_must_stay_in_the_compartment() -> None:
    access = ctx("patient/Observation.cu", patient="123").authorize("create", "Observation")
    access.ensure_writable(["Patient/123"])
    with pytest.raises(Forbidden):
        access.ensure_writable(["Patient/456"])


def test_types_outside_the_patient_compartment_are_not_compartment_limited() -> None:
    # R4 Patient CompartmentDefinition has no Medication or Organization entry.
    access = ctx("patient/Medication.rs", patient="123").authorize("read", "Medication")
    assert access.patient_scope is None


def test_patient_scope_without_patient_context_grants_nothing() -> None:
    with pytest.raises(Forbidden):
        ctx("patient/Observation.rs").authorize("search", "Observation")


def test_system_and_practitioner_user_scopes_are_not_compartment_limited() -> None:
    assert ctx("system/*.rs").authorize("search", "Observation").unrestricted
    practitioner = ctx("user/*.rs", fhir_user="Practitioner/dr1")
    assert practitioner.authorize("read", "Observation").unrestricted


def test_patient_user_scopes_reach_only_their_own_compartment() -> None:
    access = ctx("user/*.rs", fhir_user="Patient/77").authorize("search", "Observation")
    assert access.patient_scope == ["Patient/77"]


@pytest.mark.parametrize(
    ("scope", "interaction", "allowed"),
    [
        ("patient/Observation.rs", "read", True),
        ("patient/Observation.rs", "vread", True),
        ("patient/Observation.rs", "history-instance", True),  # r covers instance history
        ("patient/Observation.r", "search", False),
        ("patient/Observation.s", "read", False),
        ("patient/Observation.s", "history-type", True),  # s covers type history
        ("patient/Observation.rs", "create", False),
        ("patient/Observation.c", "create", True),
        ("patient/Observation.u", "update", True),
        ("patient/Observation.u", "patch", True),
        ("patient/Observation.rs", "delete", False),
        ("patient/Observation.d", "delete", True),
        ("patient/Observation.read", "search", True),  # v1 .read = rs
        ("patient/Observation.write", "update", True),  # v1 .write = cud
        ("patient/Observation.write", "read", False),
        ("patient/Observation.*", "delete", True),
        ("patient/Observation.rs", "operation", True),
    ],
)
def test_interactions_map_to_permission_letters(
    scope: str, interaction: Any, allowed: bool
) -> None:
    assert ctx(scope, patient="1").permits(interaction, "Observation") is allowed


def test_scope_for_one_type_does_not_reach_another() -> None:
    context = ctx("patient/Observation.rs", patient="1")
    with pytest.raises(Forbidden) as caught:
        context.authorize("read", "Condition")
    assert caught.value.status == 403
    assert caught.value.to_outcome()["resourceType"] == "OperationOutcome"
    assert "insufficient_scope" in caught.value.headers["WWW-Authenticate"]


def test_system_wide_interactions_need_a_wildcard_grant() -> None:
    assert not ctx("system/Observation.rs").permits("history-system", "*")
    assert ctx("system/*.rs").permits("history-system", "*")


def test_granular_scope_becomes_search_criteria() -> None:
    access = ctx("patient/Observation.rs?category=laboratory", patient="1").authorize(
        "search", "Observation"
    )
    assert access.patient_scope == ["Patient/1"]
    assert access.extra_criteria() == [("category", "laboratory")]


def test_granular_scopes_on_one_parameter_are_ored_with_commas() -> None:
    access = ctx(
        f"patient/Observation.rs?category={LAB} patient/Observation.rs?category=vital-signs",
        patient="1",
    ).authorize("search", "Observation")
    assert access.extra_criteria() == [("category", f"{LAB},vital-signs")]


def test_an_unrestricted_grant_lifts_the_granular_restriction() -> None:
    access = ctx(
        "patient/Observation.rs?category=laboratory patient/Observation.rs", patient="1"
    ).authorize("search", "Observation")
    assert access.extra_criteria() == [] and access.patient_scope == ["Patient/1"]


def test_granular_scope_with_several_criteria_ands_them() -> None:
    access = ctx("user/Observation.rs?category=vital-signs&status=final").authorize(
        "search", "Observation"
    )
    assert access.extra_criteria() == [("category", "vital-signs"), ("status", "final")]


def test_granular_scopes_on_different_parameters_are_kept_as_alternatives() -> None:
    access = ctx(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?code=1234-5",
        patient="1",
    ).authorize("search", "Observation")
    assert set(access.filters) == {(("category", "laboratory"),), (("code", "1234-5"),)}
    with pytest.raises(Forbidden):
        access.extra_criteria()


def test_granular_scope_does_not_grant_create() -> None:
    context = ctx("patient/Observation.rs?category=laboratory", patient="1")
    assert not context.permits("create", "Observation")


def test_unrestricted_context_when_auth_is_off() -> None:
    context = AccessContext.unrestricted()
    assert context.authorize("delete", "Patient").unrestricted
    assert context.patient_scope is None


# -- authenticate() against the database ------------------------------------------------------


async def security_for(live: LiveServer, db: AsyncDatabase[dict[str, Any]]) -> Security:
    return await Security.open(db, SecurityConfig(fhir_base=live.fhir_base))


async def test_authenticate_reads_the_token_context(
    live: LiveServer, sec_db: AsyncDatabase[dict[str, Any]]
) -> None:
    security = await security_for(live, sec_db)
    issued = issue_access_token(
        security.keys.ring,
        issuer=live.fhir_base,
        audience=live.fhir_base,
        client_id="app",
        scope="patient/*.rs",
        patient="p1",
        fhir_user="Patient/p1",
    )
    context = await authenticate(f"Bearer {issued.token}", security)
    assert context.patient_scope == ["Patient/p1"]
    assert context.client_id == "app" and context.jti == issued.jti
    assert context.scopes.permits("read", "Observation")


@pytest.mark.parametrize(
    "header",
    [None, "", "Basic abc", "Bearer", "Bearer a b", "Bearer not-a-jwt"],
)
async def test_authenticate_rejects_missing_or_malformed_headers(
    live: LiveServer, sec_db: AsyncDatabase[dict[str, Any]], header: str | None
) -> None:
    security = await security_for(live, sec_db)
    with pytest.raises(Unauthorized) as caught:
        await authenticate(header, security)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="hestia"')


async def test_authenticate_rejects_expired_foreign_and_revoked_tokens(
    live: LiveServer, sec_db: AsyncDatabase[dict[str, Any]]
) -> None:
    security = await security_for(live, sec_db)
    ring = security.keys.ring
    expired = issue_access_token(
        ring,
        issuer=live.fhir_base,
        audience=live.fhir_base,
        client_id="app",
        scope="system/*.rs",
        now=int(time.time()) - 7200,
    )
    other_server = issue_access_token(
        ring,
        issuer=live.fhir_base,
        audience="https://other.example.org/fhir",
        client_id="app",
        scope="system/*.rs",
    )
    revoked = issue_access_token(
        ring, issuer=live.fhir_base, audience=live.fhir_base, client_id="app", scope="system/*.rs"
    )
    await security.revocations.revoke_token(revoked.jti, revoked.expires_at)
    for token in (expired.token, other_server.token, revoked.token):
        with pytest.raises(Unauthorized) as caught:
            await authenticate(f"Bearer {token}", security)
        assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"]


async def test_tokens_signed_before_a_rotation_by_another_instance_still_verify(
    live: LiveServer, sec_db: AsyncDatabase[dict[str, Any]]
) -> None:
    this_instance = await security_for(live, sec_db)
    other_instance = await KeyStore.open(sec_db)
    await other_instance.rotate()
    # Signed by the other instance's new key, unknown to this instance's loaded ring.
    token = issue_access_token(
        other_instance.ring,
        issuer=live.fhir_base,
        audience=live.fhir_base,
        client_id="app",
        scope="system/*.rs",
    ).token
    this_instance.keys._last_reload = 0.0  # as if the reload interval had passed
    context = await authenticate(f"Bearer {token}", this_instance)
    assert context.client_id == "app"

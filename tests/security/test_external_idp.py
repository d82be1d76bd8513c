"""Access tokens from an external identity provider, end to end: the real app (`hestia
serve`) configured with HESTIA_EXTERNAL_ISSUERS, a stand-in IdP serving its JWK Set over
HTTP, tokens signed by the IdP's keys presented to the FHIR API.

Issue 7: "Optionally, tokens from an external IdP (Keycloak, Entra ID…) are accepted,
configured by issuer and JWKS URL." Such a token is checked like Hestia's own (RFC 6750,
RFC 9068 §4): signature by a key the issuer publishes, `iss`, `aud`, `exp`; anything else is
401 with a `WWW-Authenticate: Bearer` challenge.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import RSAKey

from app.security.service import parse_external_issuers
from tests.conftest import RunningServer
from tests.security.conftest import IDP_AUDIENCE
from tests.security.stand_in_idp import StandInIdp, new_rsa_key

FHIR_JSON = "application/fhir+json"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}


@pytest.fixture(scope="module")
def fhir(secured_hestia: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=secured_hestia.fhir, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def patients(idp: StandInIdp, fhir: httpx.Client) -> dict[str, str]:
    """Two patients, created with a system-level token of the IdP."""
    admin = idp.token("a", aud=IDP_AUDIENCE, scope="system/Patient.cruds")
    ids: dict[str, str] = {}
    for name in ("carol", "dave"):
        created = fhir.post(
            "/Patient",
            json={"resourceType": "Patient", "name": [{"family": name}]},
            headers=bearer(admin),
        )
        assert created.status_code == 201, created.text
        ids[name] = created.json()["id"]
    return ids


def refused(response: httpx.Response) -> bool:
    """401 with an RFC 6750 challenge naming the bad token (§3.1 invalid_token)."""
    challenge = response.headers.get("www-authenticate", "")
    return (
        response.status_code == 401
        and challenge.startswith("Bearer")
        and 'error="invalid_token"' in challenge
    )


def test_idp_token_with_smart_scopes_reads_and_writes(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    token = idp.token("a", aud=IDP_AUDIENCE, scope="system/Patient.rs")
    response = fhir.get(f"/Patient/{patients['carol']}", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["name"][0]["family"] == "carol"
    # Its scopes are enforced like those of Hestia's own tokens: no 'c', no create.
    created = fhir.post("/Patient", json={"resourceType": "Patient"}, headers=bearer(token))
    assert created.status_code == 403


def test_idp_patient_claim_limits_a_patient_token_to_its_compartment(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    token = idp.token("a", aud=IDP_AUDIENCE, scope="patient/Patient.rs", patient=patients["carol"])
    assert fhir.get(f"/Patient/{patients['carol']}", headers=bearer(token)).status_code == 200
    # Another patient's record: 404, as if absent (issue 7, no existence leak).
    assert fhir.get(f"/Patient/{patients['dave']}", headers=bearer(token)).status_code == 404


def test_default_audience_is_the_fhir_base(
    idp: StandInIdp, secured_hestia: RunningServer, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    """Tenant "b" is configured without an audience: its tokens must name the FHIR base."""
    path = f"/Patient/{patients['dave']}"
    right = idp.token("b", aud=secured_hestia.fhir, scope="system/Patient.rs")
    assert fhir.get(path, headers=bearer(right)).status_code == 200
    wrong = idp.token("b", aud="https://some-other-api.example.org", scope="system/Patient.rs")
    assert refused(fhir.get(path, headers=bearer(wrong)))


def test_token_signed_by_another_key_with_the_same_issuer_is_401(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    path = f"/Patient/{patients['carol']}"
    published = idp.keys["a"][0]
    # A forger knows the issuer and the published kid, not the private key.
    impostor = new_rsa_key()
    impostor_same_kid = RSAKey.import_key({**impostor.as_dict(private=True), "kid": published.kid})
    for forger in (impostor, impostor_same_kid):
        forged = idp.token("a", key=forger, aud=IDP_AUDIENCE, scope="system/Patient.rs")
        assert refused(fhir.get(path, headers=bearer(forged)))


def test_expired_idp_token_is_401(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    # Expired well beyond the 30 s clock-skew leeway.
    expired = idp.token(
        "a", aud=IDP_AUDIENCE, scope="system/Patient.rs", iat=int(time.time()) - 600, lifetime=-300
    )
    assert refused(fhir.get(f"/Patient/{patients['carol']}", headers=bearer(expired)))


def test_token_of_an_unconfigured_issuer_is_401(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    path = f"/Patient/{patients['carol']}"
    # A tenant of the same IdP that the operator did not configure…
    stranger = idp.token("unconfigured", aud=IDP_AUDIENCE, scope="system/Patient.rs")
    assert refused(fhir.get(path, headers=bearer(stranger)))
    # …and a configured issuer's key used under another issuer name.
    renamed = idp.token(
        "a", iss="https://idp.example.org/realms/other", aud=IDP_AUDIENCE, scope="system/*.rs"
    )
    assert refused(fhir.get(path, headers=bearer(renamed)))


def test_key_rotation_at_the_idp_is_picked_up(
    idp: StandInIdp, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    """The cached JWK Set is refetched when a token names a kid it lacks."""
    path = f"/Patient/{patients['carol']}"
    before = idp.token("a", aud=IDP_AUDIENCE, scope="system/Patient.rs")
    assert fhir.get(path, headers=bearer(before)).status_code == 200  # JWKS cached
    idp.rotate("a")  # a new kid; the old key is withdrawn
    time.sleep(0.3)  # tenant "a" allows a refetch every 0.2 s (the default is 10 s)
    after = idp.token("a", aud=IDP_AUDIENCE, scope="system/Patient.rs")
    assert fhir.get(path, headers=bearer(after)).status_code == 200
    # The refetched set no longer has the withdrawn key: tokens it signed stop working.
    assert refused(fhir.get(path, headers=bearer(before)))


def test_unknown_kids_do_not_make_hestia_hammer_the_idp(
    idp: StandInIdp, secured_hestia: RunningServer, fhir: httpx.Client, patients: dict[str, str]
) -> None:
    """Tenant "b" keeps the default minimum of 10 s between refetches: a burst of tokens with
    made-up kids causes at most one refetch (one, if the last fetch is older than 10 s)."""
    path = f"/Patient/{patients['dave']}"
    good = idp.token("b", aud=secured_hestia.fhir, scope="system/Patient.rs")
    assert fhir.get(path, headers=bearer(good)).status_code == 200
    fetched = idp.fetches["b"]
    assert fetched >= 1
    for _ in range(5):
        made_up = new_rsa_key()
        token = idp.token("b", key=made_up, aud=secured_hestia.fhir, scope="system/Patient.rs")
        assert refused(fhir.get(path, headers=bearer(token)))
    assert idp.fetches["b"] <= fetched + 1


# -- configuration --------------------------------------------------------------------------


def test_external_issuers_setting_is_parsed_and_checked() -> None:
    one = parse_external_issuers(
        '{"issuer": "https://kc.example.org/realms/h", '
        '"jwks_uri": "https://kc.example.org/realms/h/protocol/openid-connect/certs"}'
    )
    assert [(i.issuer, i.audience, i.min_refresh_seconds) for i in one] == [
        ("https://kc.example.org/realms/h", "", 10.0)
    ]
    assert parse_external_issuers("  ") == ()
    bad = [
        "not json",
        '{"issuer": "x"}',  # no jwks_uri
        '[{"issuer": "x", "jwks_uri": "file:///etc/keys"}]',
        '[{"issuer": "x", "jwks_uri": "https://x/jwks", "audiance": "typo"}]',
        '[{"issuer": "x", "jwks_uri": "https://x/j"}, {"issuer": "x", "jwks_uri": "https://x/k"}]',
        '[{"issuer": "x", "jwks_uri": "https://x/j", "min_refresh_seconds": -1}]',
    ]
    for text in bad:
        with pytest.raises(ValueError, match=r"HESTIA_EXTERNAL_ISSUERS|issuer x"):
            parse_external_issuers(text)

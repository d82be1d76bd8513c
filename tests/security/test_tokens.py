"""Access/id/refresh tokens, the server key ring, and PKCE."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, OctKey, RSAKey

from app.security import pkce
from app.security.errors import OAuthError
from app.security.keys import KeyRing
from app.security.tokens import (
    hash_opaque_token,
    issue_access_token,
    issue_id_token,
    new_refresh_token,
    verify_access_token,
    verify_external_token,
)

ISSUER = "https://hestia.example.org/auth"
FHIR_BASE = "https://hestia.example.org/fhir"
NOW = 1_700_000_000


@pytest.fixture(scope="module")
def ring() -> KeyRing:
    return KeyRing.generate("RS384")


def published(ring: KeyRing) -> KeySet:
    """The ring's keys as a client sees them: imported from the public JWKS."""
    return KeySet.import_key_set(ring.jwks())  # type: ignore[arg-type]  # plain JSON dict


def issue(ring: KeyRing, **overrides: object) -> tuple[str, str, int]:
    arguments: dict = {
        "issuer": ISSUER,
        "audience": FHIR_BASE,
        "client_id": "growth-chart",
        "scope": "launch/patient patient/Observation.rs openid fhirUser",
        "subject": "user-42",
        "fhir_user": "Practitioner/42",
        "patient": "123",
        "encounter": "enc-9",
        "lifetime": 300,
        "now": NOW,
    }
    arguments.update(overrides)
    return issue_access_token(ring, **arguments)


def rejected(token: str, ring: KeyRing, reason: str, **kwargs: object) -> None:
    arguments: dict = {"issuer": ISSUER, "audience": FHIR_BASE, "now": NOW + 10}
    arguments.update(kwargs)
    with pytest.raises(OAuthError) as caught:
        verify_access_token(token, ring, **arguments)
    assert caught.value.error == "invalid_token"
    assert caught.value.status == 401
    assert caught.value.reason == reason
    assert caught.value.www_authenticate() is not None


# -- access tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_access_token_round_trip_carries_the_launch_context(alg: str) -> None:
    ring = KeyRing.generate(alg)  # type: ignore[arg-type]
    token, jti, _ = issue(ring)
    claims = verify_access_token(token, ring, issuer=ISSUER, audience=FHIR_BASE, now=NOW + 10)
    assert (claims.jti, claims.expires_at) == (jti, NOW + 300)
    assert claims.issuer == ISSUER
    assert claims.audience == (FHIR_BASE,)
    assert claims.client_id == "growth-chart"
    assert claims.subject == "user-42"
    assert (claims.fhir_user, claims.patient, claims.encounter) == (
        "Practitioner/42",
        "123",
        "enc-9",
    )
    assert claims.issued_at == NOW
    assert claims.scopes.permits("search", "Observation")
    assert claims.scopes.launch_contexts == {"patient"}


def test_access_token_header_follows_rfc9068(ring: KeyRing) -> None:
    token, _, _ = issue(ring)
    header = jwt.decode(token, published(ring), algorithms=["RS384"]).header
    assert header == {"alg": "RS384", "kid": ring.current.kid, "typ": "at+jwt"}


def test_client_credentials_token_subject_defaults_to_client(ring: KeyRing) -> None:
    token, _, _ = issue(ring, subject=None, fhir_user=None, patient=None, encounter=None)
    claims = verify_access_token(token, ring, issuer=ISSUER, audience=FHIR_BASE, now=NOW)
    assert claims.subject == "growth-chart"
    assert claims.patient is None


def test_expired_token_is_rejected(ring: KeyRing) -> None:
    token, _, exp = issue(ring)
    rejected(token, ring, "expired", now=exp + 31)  # past the 30 s leeway
    verify_access_token(token, ring, issuer=ISSUER, audience=FHIR_BASE, now=exp + 29)


def test_token_used_before_nbf_is_rejected(ring: KeyRing) -> None:
    token, _, _ = issue(ring, now=NOW + 3600)
    rejected(token, ring, "not_yet_valid", now=NOW)


def test_wrong_audience_is_rejected(ring: KeyRing) -> None:
    token, _, _ = issue(ring)
    rejected(token, ring, "wrong_audience", audience="https://other.example.org/fhir")


def test_wrong_issuer_is_rejected(ring: KeyRing) -> None:
    token, _, _ = issue(ring)
    rejected(token, ring, "wrong_issuer", issuer="https://idp.example.org")


def test_tampered_token_is_rejected(ring: KeyRing) -> None:
    token, _, _ = issue(ring)
    other, _, _ = issue(ring, patient="999")
    header, _, signature = token.split(".")
    forged = ".".join([header, other.split(".")[1], signature])
    rejected(forged, ring, "bad_signature")


def test_token_from_another_ring_is_rejected_as_unknown_kid(ring: KeyRing) -> None:
    stranger = KeyRing.generate("RS384")
    token, _, _ = issue(stranger)
    rejected(token, ring, "unknown_kid")


def test_id_token_is_not_accepted_as_access_token(ring: KeyRing) -> None:
    id_token = issue_id_token(
        ring, issuer=ISSUER, client_id=FHIR_BASE, subject="user-42", now=NOW
    )  # even when its audience happens to equal the FHIR base
    rejected(id_token, ring, "wrong_typ")


def test_hmac_token_is_rejected(ring: KeyRing) -> None:
    secret = OctKey.import_key(b"guessable-secret-guessable-secret-guessable!!")
    header = {"alg": "HS256", "kid": ring.current.kid, "typ": "at+jwt"}
    payload = {"iss": ISSUER, "aud": FHIR_BASE, "exp": NOW + 60, "scope": "user/*.cruds"}
    token = jwt.encode(header, payload, secret, algorithms=["HS256"])
    rejected(token, ring, "wrong_alg")


def test_malformed_token_is_rejected(ring: KeyRing) -> None:
    rejected("not.a-token", ring, "malformed")


# -- rotation and persistence ---------------------------------------------------------------


def test_token_signed_with_previous_key_still_verifies_after_rotation() -> None:
    ring = KeyRing.generate("RS384")
    old_kid = ring.current.kid
    before, _, _ = issue(ring)
    ring.rotate()
    after, _, _ = issue(ring)
    assert ring.current.kid != old_kid
    keys = published(ring)
    assert jwt.decode(after, keys, algorithms=["RS384"]).header["kid"] == ring.current.kid
    for token in (before, after):
        verify_access_token(token, ring, issuer=ISSUER, audience=FHIR_BASE, now=NOW)
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old_kid, ring.current.kid}


def test_retired_key_no_longer_verifies() -> None:
    ring = KeyRing.generate("ES384")
    oldest, _, _ = issue(ring)
    ring.rotate(keep_previous=1)
    ring.rotate(keep_previous=1)  # the first key is now retired
    assert len(ring.keys) == 2
    rejected(oldest, ring, "unknown_kid")


def test_rotation_can_change_algorithm() -> None:
    ring = KeyRing.generate("RS384")
    ring.rotate("ES384")
    token, _, _ = issue(ring)
    assert ring.current.alg == "ES384"
    verify_access_token(token, ring, issuer=ISSUER, audience=FHIR_BASE, now=NOW)


def test_key_file_is_private_and_tokens_survive_reload(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys.json"
    ring = KeyRing.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token, _, _ = issue(ring)
    ring.rotate()
    ring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.joinpath("data").iterdir()) == [path]  # no temp file left behind

    reloaded = KeyRing.load_or_create(path)
    assert [k.kid for k in reloaded.keys] == [k.kid for k in ring.keys]
    verify_access_token(token, reloaded, issuer=ISSUER, audience=FHIR_BASE, now=NOW)
    fresh, _, _ = issue(reloaded)
    verify_access_token(fresh, ring, issuer=ISSUER, audience=FHIR_BASE, now=NOW)


def test_jwks_publishes_public_keys_only(ring: KeyRing) -> None:
    jwks = ring.jwks()
    text = json.dumps(jwks)
    for private_member in ('"d"', '"p"', '"q"', '"dp"', '"dq"', '"qi"'):
        assert private_member not in text
    (key,) = jwks["keys"]
    assert (key["kty"], key["alg"], key["use"], key["kid"]) == (
        "RSA",
        "RS384",
        "sig",
        ring.current.kid,
    )
    assert {"n", "e"} <= key.keys()


def test_kid_is_the_rfc7638_thumbprint(ring: KeyRing) -> None:
    public = RSAKey.import_key(ring.jwks()["keys"][0])
    assert ring.current.kid == public.thumbprint()


# -- id tokens --------------------------------------------------------------------------------


def test_id_token_carries_fhir_user_nonce_and_client_audience(ring: KeyRing) -> None:
    id_token = issue_id_token(
        ring,
        issuer=ISSUER,
        client_id="growth-chart",
        subject="user-42",
        fhir_user="https://hestia.example.org/fhir/Practitioner/42",
        nonce="n-0S6_WzA2Mj",
        now=NOW,
    )
    # Verified as a client would: with the published JWKS.
    decoded = jwt.decode(id_token, published(ring), algorithms=["RS384"])
    assert decoded.claims["aud"] == "growth-chart"
    assert decoded.claims["iss"] == ISSUER
    assert decoded.claims["sub"] == "user-42"
    assert decoded.claims["fhirUser"] == "https://hestia.example.org/fhir/Practitioner/42"
    assert decoded.claims["nonce"] == "n-0S6_WzA2Mj"
    assert decoded.claims["exp"] > decoded.claims["iat"] == NOW


def test_id_token_without_nonce_has_no_nonce_claim(ring: KeyRing) -> None:
    id_token = issue_id_token(ring, issuer=ISSUER, client_id="c", subject="s", now=NOW)
    decoded = jwt.decode(id_token, published(ring), algorithms=["RS384"])
    assert "nonce" not in decoded.claims


# -- external identity provider ---------------------------------------------------------------


@pytest.fixture(scope="module")
def idp_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "idp-2026"})


def idp_token(key: RSAKey, **claims: object) -> str:
    payload = {"iss": "https://idp.example.org", "aud": FHIR_BASE, "sub": "u1", "exp": NOW + 60}
    payload.update(claims)
    return jwt.encode({"alg": "RS256", "kid": key.kid}, payload, key, algorithms=["RS256"])


def test_external_token_verifies_with_idp_jwks(idp_key: RSAKey) -> None:
    jwks = {"keys": [idp_key.as_dict(private=False)]}
    token = idp_token(idp_key, scp=["user/Patient.rs", "openid"], azp="portal")
    claims = verify_external_token(
        token, jwks=jwks, issuer="https://idp.example.org", audience=FHIR_BASE, now=NOW
    )
    assert claims.subject == "u1"
    assert claims.client_id == "portal"
    assert claims.scope == "user/Patient.rs openid"
    assert claims.scopes.permits("read", "Patient")


def test_external_token_from_other_issuer_or_key_is_rejected(idp_key: RSAKey) -> None:
    jwks = {"keys": [idp_key.as_dict(private=False)]}
    other = RSAKey.generate_key(2048, parameters={"kid": "other"})
    cases = [
        (idp_token(idp_key, iss="https://evil.example.org"), "wrong_issuer"),
        (idp_token(other), "unknown_kid"),
        (idp_token(idp_key, exp=NOW - 3600), "expired"),
    ]
    for token, reason in cases:
        with pytest.raises(OAuthError) as caught:
            verify_external_token(
                token, jwks=jwks, issuer="https://idp.example.org", audience=FHIR_BASE, now=NOW
            )
        assert caught.value.reason == reason


# -- refresh tokens ---------------------------------------------------------------------------


def test_refresh_tokens_are_random_and_stored_as_sha256() -> None:
    tokens = {new_refresh_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert len(token) >= 43  # 256 bits, base64url
    digest = hash_opaque_token(token)
    assert digest == hash_opaque_token(token)
    assert len(digest) == 64 and token not in digest
    # SHA-256 of "abc" (FIPS 180-2 test vector)
    assert hash_opaque_token("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


# -- PKCE (RFC 7636) --------------------------------------------------------------------------

# RFC 7636 Appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_s256_matches_rfc7636_example() -> None:
    assert pkce.s256_challenge(RFC_VERIFIER) == RFC_CHALLENGE
    pkce.check_challenge(RFC_CHALLENGE, "S256")
    pkce.verify(RFC_VERIFIER, RFC_CHALLENGE, "S256")


def test_pkce_mismatch_is_invalid_grant() -> None:
    with pytest.raises(OAuthError) as caught:
        pkce.verify("x" * 43, RFC_CHALLENGE, "S256")
    assert (caught.value.error, caught.value.reason) == ("invalid_grant", "pkce_mismatch")


@pytest.mark.parametrize("method", ["plain", None, "s256", "S512"])
def test_pkce_methods_other_than_s256_are_refused(method: str | None) -> None:
    with pytest.raises(OAuthError) as caught:
        pkce.check_challenge(RFC_CHALLENGE, method)
    assert (caught.value.error, caught.value.reason) == ("invalid_request", "pkce_method")


@pytest.mark.parametrize(
    "verifier",
    ["a" * 42, "a" * 129, "a" * 42 + "+", "a" * 42 + " ", "a" * 42 + "é", "", None],
)
def test_pkce_verifier_syntax_is_enforced(verifier: str | None) -> None:
    with pytest.raises(OAuthError) as caught:
        pkce.verify(verifier, RFC_CHALLENGE, "S256")
    assert caught.value.error == "invalid_request"


@pytest.mark.parametrize("verifier", ["a" * 43, "A-._~" * 25 + "abc"])
def test_pkce_verifier_length_bounds_are_accepted(verifier: str) -> None:
    pkce.verify(verifier, pkce.s256_challenge(verifier), "S256")


def test_pkce_missing_or_malformed_challenge_is_refused() -> None:
    for challenge, reason in [(None, "pkce_missing"), ("short", "pkce_challenge_syntax")]:
        with pytest.raises(OAuthError) as caught:
            pkce.check_challenge(challenge, "S256")
        assert caught.value.reason == reason


def test_creating_a_ring_never_replaces_an_existing_one(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = KeyRing.load_or_create(path)
    with pytest.raises(FileExistsError):
        KeyRing.generate().save(path, overwrite=False)
    assert KeyRing.load_or_create(path).current.kid == first.current.kid

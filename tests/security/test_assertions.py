"""Client assertions (SMART Backend Services, `private_key_jwt`), per SMART App Launch 2.2."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from app.security.assertions import (
    ClientAssertion,
    InMemoryReplayCache,
    peek_client_id,
    verify_client_assertion,
)
from app.security.errors import OAuthError

TOKEN_URL = "https://hestia.example.org/auth/token"
CLIENT_ID = "bili_monitor"
NOW = 1_700_000_000

# The worked example of SMART App Launch 2.2 (client-confidential-asymmetric.html, CC0):
# the example client's public JWK Set and the RS384 assertion the spec shows for it.
SPEC_JWKS = {
    "keys": [
        {
            "kty": "RSA",
            "alg": "RS384",
            "n": "wJq2RHIA-7RT6q4go7wjcbHdW7ck7Kz22A8wf-kN7Wi5CWvhFG2_Y7nQp1lDpb2IKMQr-Q4n_vgJ6d5r"
            "WPspJpSPY7iffUK4ipQCEbzID5DJ6fQMBZOfCTXyxkuMh3jYGKEF3Ziw2oxbM1H9j-eJAPtrj5stUG6kVoX"
            "owegdox-bSjWP0iI5PnkwUNzcekLMug4M3LRluEQgGR9O_BAML6-w3igZ_rZA_gunyrLAMbfmCVaceW5ohLp"
            "679kyM7U6W2gDK_NbkDKcINUakVmPeoG5h8RzgGzvGrySR0k0VDFiZv60Ua07DqHTeDGH9e4NV07AECae-oy"
            "kIj5NDCs3pw",
            "e": "AQAB",
            "key_ops": ["verify"],
            "ext": True,
            "kid": "eee9f17a3b598fd86417a980b591fbe6",
        }
    ]
}
SPEC_ASSERTION = (
    "eyJhbGciOiJSUzM4NCIsImtpZCI6ImVlZTlmMTdhM2I1OThmZDg2NDE3YTk4MGI1OTFmYmU2IiwidHlwIjoiSldUIn0"
    ".eyJpc3MiOiJodHRwczovL2JpbGktbW9uaXRvci5leGFtcGxlLmNvbSIsInN1YiI6Imh0dHBzOi8vYmlsaS1tb25p"
    "dG9yLmV4YW1wbGUuY29tIiwiYXVkIjoiaHR0cHM6Ly9hdXRob3JpemUuc21hcnRoZWFsdGhpdC5vcmcvdG9rZW4iLC"
    "JleHAiOjE0MjI1Njg4NjAsImp0aSI6InJhbmRvbS1ub24tcmV1c2FibGUtand0LWlkLTEyMyJ9"
    ".D5kAqNJwaftCqsRdVVQDq6dMBxuGFOF5svQJuXbcYp-oEyg5qOwK9ZE5cGLTHxqwfpUPNzRKgVdIGuhawAA-8g0s1"
    "nKQae8CuKs33hhKh4J34xSEwW3MYs1gwI4GHTtR_g3kYSX6QCi14Ed3GIAvYFgqRqt-gD7sewMUXL4SB8I8cXcDbCq"
    "Vizm7uPVhjw6QaeKZygJJ_AVLhM4Xs9LTy4HAhdCHpN0FrNmCerUIYJvHDpcod7A0jDmxdoeW1KIBYlhdhQNwjtsTvT"
    "1ce4qacN_3KIv_fIzCKLIgDv9eWxkjAtxOmIm8aW5gX9xX7X0nbd0QglIyiic_bZVNNEh0kg"
)


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


@pytest.fixture(scope="module")
def client_jwks(rsa_key: RSAKey, ec_key: ECKey) -> dict[str, Any]:
    return {"keys": [rsa_key.as_dict(private=False), ec_key.as_dict(private=False)]}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": NOW + 240,
        "jti": "jti-" + str(overrides.pop("jti_suffix", "1")),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(key: RSAKey | ECKey, payload: dict[str, Any], alg: str = "RS384") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, payload, key, algorithms=[alg])


async def verify(
    token: str, jwks: dict[str, Any], cache: InMemoryReplayCache | None = None
) -> ClientAssertion:
    return await verify_client_assertion(
        token,
        client_id=CLIENT_ID,
        client_jwks=jwks,
        token_url=TOKEN_URL,
        replay_cache=InMemoryReplayCache(clock=lambda: NOW) if cache is None else cache,
        now=NOW,
    )


async def expect_rejected(token: str, jwks: dict[str, Any], reason: str) -> OAuthError:
    with pytest.raises(OAuthError) as caught:
        await verify(token, jwks)
    # SMART: every client authentication failure is answered with invalid_client.
    assert caught.value.error == "invalid_client"
    assert caught.value.status == 401
    assert caught.value.reason == reason
    return caught.value


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


# -- accepted -------------------------------------------------------------------------------


async def test_spec_worked_example_assertion_is_accepted() -> None:
    client = "https://bili-monitor.example.com"
    result = await verify_client_assertion(
        SPEC_ASSERTION,
        client_id=client,
        client_jwks=SPEC_JWKS,
        token_url="https://authorize.smarthealthit.org/token",
        replay_cache=InMemoryReplayCache(clock=lambda: 1422568800),
        now=1422568800,  # a minute before the example's exp
    )
    assert result.client_id == client
    assert result.jti == "random-non-reusable-jwt-id-123"
    assert result.alg == "RS384"
    assert result.kid == "eee9f17a3b598fd86417a980b591fbe6"


async def test_valid_rs384_assertion_is_accepted(rsa_key: RSAKey, client_jwks: dict) -> None:
    result = await verify(sign(rsa_key, claims()), client_jwks)
    assert (result.client_id, result.jti, result.expires_at) == (CLIENT_ID, "jti-1", NOW + 240)


async def test_valid_es384_assertion_is_accepted(ec_key: ECKey, client_jwks: dict) -> None:
    result = await verify(sign(ec_key, claims(), alg="ES384"), client_jwks)
    assert result.alg == "ES384"
    assert result.kid == "ec-1"


async def test_audience_list_containing_token_url_is_accepted(
    rsa_key: RSAKey, client_jwks: dict
) -> None:
    token = sign(rsa_key, claims(aud=["https://other.example", TOKEN_URL]))
    assert (await verify(token, client_jwks)).client_id == CLIENT_ID


def test_peek_client_id_reads_unverified_iss(rsa_key: RSAKey) -> None:
    assert peek_client_id(sign(rsa_key, claims())) == CLIENT_ID
    with pytest.raises(OAuthError) as caught:
        peek_client_id("not-a-jwt")
    assert caught.value.reason == "malformed"


# -- rejected: claims -----------------------------------------------------------------------


async def test_wrong_audience_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    token = sign(rsa_key, claims(aud="https://hestia.example.org/fhir"))
    await expect_rejected(token, client_jwks, "wrong_audience")


async def test_expired_assertion_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    await expect_rejected(sign(rsa_key, claims(exp=NOW - 120)), client_jwks, "expired")


async def test_exp_more_than_five_minutes_ahead_is_rejected(
    rsa_key: RSAKey, client_jwks: dict
) -> None:
    await expect_rejected(sign(rsa_key, claims(exp=NOW + 600)), client_jwks, "exp_too_far")


async def test_missing_exp_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    error = await expect_rejected(sign(rsa_key, claims(exp=None)), client_jwks, "missing_claim")
    assert "exp" in error.description


async def test_missing_jti_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    payload = claims()
    del payload["jti"]
    error = await expect_rejected(sign(rsa_key, payload), client_jwks, "missing_claim")
    assert "jti" in error.description


async def test_iss_different_from_sub_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    token = sign(rsa_key, claims(sub="someone-else"))
    await expect_rejected(token, client_jwks, "iss_sub_mismatch")


async def test_assertion_for_another_client_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    token = sign(rsa_key, claims(iss="other-client", sub="other-client"))
    await expect_rejected(token, client_jwks, "wrong_client")


async def test_nbf_in_the_future_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    await expect_rejected(sign(rsa_key, claims(nbf=NOW + 120)), client_jwks, "not_yet_valid")


async def test_replayed_jti_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    cache = InMemoryReplayCache(clock=lambda: NOW)
    first = sign(rsa_key, claims(jti_suffix="replay"))
    await verify(first, client_jwks, cache)
    # A fresh signature over the same jti is still a replay of that jti.
    second = sign(rsa_key, claims(jti_suffix="replay", exp=NOW + 200))
    for token in (first, second):
        with pytest.raises(OAuthError) as caught:
            await verify(token, client_jwks, cache)
        assert (caught.value.error, caught.value.reason) == ("invalid_client", "replayed_jti")


async def test_same_jti_from_different_clients_is_not_a_replay() -> None:
    cache = InMemoryReplayCache(clock=lambda: NOW)
    assert await cache.seen("client-a", "shared-jti", NOW + 60) is False
    assert await cache.seen("client-b", "shared-jti", NOW + 60) is False
    assert await cache.seen("client-a", "shared-jti", NOW + 60) is True


async def test_replay_cache_forgets_jtis_after_expiry() -> None:
    clock = [float(NOW)]
    cache = InMemoryReplayCache(clock=lambda: clock[0])
    assert await cache.seen("c", "j", NOW + 60) is False
    clock[0] = NOW + 3600
    assert await cache.seen("c", "other", NOW + 3660) is False
    assert cache.size == 1  # the expired entry was purged
    assert await cache.seen("c", "j", NOW + 3660) is False


async def test_rejected_assertion_does_not_burn_its_jti(rsa_key: RSAKey, client_jwks: dict) -> None:
    cache = InMemoryReplayCache(clock=lambda: NOW)
    with pytest.raises(OAuthError):
        await verify(sign(rsa_key, claims(jti_suffix="x", aud="wrong")), client_jwks, cache)
    assert (await verify(sign(rsa_key, claims(jti_suffix="x")), client_jwks, cache)).jti == "jti-x"


# -- rejected: algorithm and key ------------------------------------------------------------


async def test_hs256_assertion_is_rejected(client_jwks: dict) -> None:
    secret = OctKey.import_key(b"a-shared-secret-that-is-long-enough-for-hs256!!")
    token = jwt.encode({"alg": "HS256", "kid": "rsa-1"}, claims(), secret, algorithms=["HS256"])
    await expect_rejected(token, client_jwks, "unsupported_alg")


async def test_alg_none_assertion_is_rejected(client_jwks: dict) -> None:
    token = b64({"alg": "none", "kid": "rsa-1", "typ": "JWT"}) + "." + b64(claims()) + "."
    await expect_rejected(token, client_jwks, "unsupported_alg")


async def test_rs256_assertion_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    await expect_rejected(sign(rsa_key, claims(), alg="RS256"), client_jwks, "unsupported_alg")


async def test_assertion_signed_with_another_key_is_rejected(client_jwks: dict) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, other key
    await expect_rejected(sign(impostor, claims()), client_jwks, "bad_signature")


async def test_unknown_kid_is_rejected(client_jwks: dict) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-registered"})
    await expect_rejected(sign(stranger, claims()), client_jwks, "unknown_key")


async def test_kid_of_wrong_key_type_for_alg_is_rejected(ec_key: ECKey, client_jwks: dict) -> None:
    # Header claims RS384 but names the EC key: no RSA key has that kid.
    header = {"alg": "RS384", "kid": "ec-1", "typ": "JWT"}
    token = b64(header) + "." + b64(claims()) + "." + b64({"sig": "x"})
    await expect_rejected(token, client_jwks, "unknown_key")


async def test_missing_kid_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    token = jwt.encode({"alg": "RS384"}, claims(), rsa_key, algorithms=["RS384"])
    await expect_rejected(token, client_jwks, "missing_kid")


async def test_tampered_payload_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    header, _, signature = sign(rsa_key, claims()).split(".")
    forged = ".".join([header, b64(claims(sub=CLIENT_ID, exp=NOW + 299)), signature])
    await expect_rejected(forged, client_jwks, "bad_signature")


async def test_unregistered_jku_is_rejected(rsa_key: RSAKey, client_jwks: dict) -> None:
    header = {"alg": "RS384", "kid": "rsa-1", "typ": "JWT", "jku": "https://evil.example/jwks"}
    token = jwt.encode(header, claims(), rsa_key, algorithms=["RS384"])
    await expect_rejected(token, client_jwks, "jku_not_registered")


async def test_garbage_is_rejected(client_jwks: dict) -> None:
    await expect_rejected("abc.def", client_jwks, "malformed")
    await expect_rejected("!!!.???.***", client_jwks, "malformed")


@pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")
async def test_client_rsa_key_under_2048_bits_is_not_trusted() -> None:
    weak = RSAKey.generate_key(1024, parameters={"kid": "weak"})
    jwks = {"keys": [weak.as_dict(private=False)]}
    await expect_rejected(sign(weak, claims()), jwks, "unknown_key")

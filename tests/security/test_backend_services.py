"""SMART Backend Services over HTTP: client_credentials with a private_key_jwt assertion
(RS384 and ES384; keys inline or at a JWKS URL), and each assertion check the spec lists.
"""

# The live server runs in its own thread and event loop, so blocking httpx calls from these
# async tests (async only for the database fixtures) cannot stall it; fhirclient is sync.
# ruff: noqa: ASYNC212

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from pymongo.asynchronous.database import AsyncDatabase

from app.security import admin
from tests.security.live_server import LiveServer, unique

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
Db = AsyncDatabase[dict[str, Any]]
Key = RSAKey | ECKey


def new_key(alg: str) -> Key:
    kid = uuid.uuid4().hex
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": kid, "alg": alg})
    return ECKey.generate_key("P-384", parameters={"kid": kid, "alg": alg})


def assertion(key: Key, alg: str, client_id: str, token_url: str, **claims: Any) -> str:
    """A client assertion; `claims` override the defaults, None removes a claim."""
    payload: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, payload, key, algorithms=[alg])


def token_request(http: httpx.Client, signed: str, scope: str = "system/*.rs") -> httpx.Response:
    return http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": signed,
        },
    )


async def backend_client(db: Db, key: Key, scope: str = "system/*.rs") -> str:
    client_id = unique("backend")
    await admin.clients_add(
        db,
        client_id,
        "confidential-asymmetric",
        scope=scope,
        jwks={"keys": [key.as_dict(private=False)]},
    )
    return client_id


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
async def test_client_credentials_with_signed_assertion(
    live: LiveServer, sec_db: Db, http: httpx.Client, alg: str
) -> None:
    key = new_key(alg)
    client_id = await backend_client(sec_db, key)
    response = token_request(http, assertion(key, alg, client_id, live.token_url))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert 0 < body["expires_in"] <= 300  # Backend Services: at most five minutes
    assert "refresh_token" not in body
    read = http.get("/fhir/Patient/p2", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200  # system/ scopes are not compartment-limited


async def test_client_keys_from_a_jwks_url(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    key = new_key("ES384")
    live.client_jwks["keys"] = [key.as_dict(private=False)]
    client_id = unique("backend-url")
    await admin.clients_add(
        sec_db,
        client_id,
        "confidential-asymmetric",
        scope="system/Patient.rs",
        jwks_uri=f"{live.root}/test-jwks",
    )
    ok = token_request(
        http, assertion(key, "ES384", client_id, live.token_url), "system/Patient.rs"
    )
    assert ok.status_code == 200, ok.text


async def test_scope_is_narrowed_and_non_system_scopes_are_not_granted(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    key = new_key("RS384")
    client_id = await backend_client(sec_db, key, scope="system/Observation.rs patient/*.rs")
    narrowed = token_request(
        http,
        assertion(key, "RS384", client_id, live.token_url),
        "system/Observation.rs system/Patient.rs",
    )
    assert narrowed.json()["scope"] == "system/Observation.rs"
    nothing = token_request(
        http, assertion(key, "RS384", client_id, live.token_url), "patient/*.rs"
    )
    assert nothing.status_code == 400 and nothing.json()["error"] == "invalid_scope"


def expect_invalid_client(response: httpx.Response) -> None:
    # SMART: every assertion failure is answered invalid_client (RFC 6749 §5.2: 401).
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["cache-control"] == "no-store"


async def test_replayed_jti_is_rejected(live: LiveServer, sec_db: Db, http: httpx.Client) -> None:
    key = new_key("RS384")
    client_id = await backend_client(sec_db, key)
    signed = assertion(key, "RS384", client_id, live.token_url)
    assert token_request(http, signed).status_code == 200
    expect_invalid_client(token_request(http, signed))
    # The same jti in a freshly signed assertion is still a replay.
    jti = jwt.decode(signed, key, algorithms=["RS384"]).claims["jti"]
    expect_invalid_client(
        token_request(http, assertion(key, "RS384", client_id, live.token_url, jti=jti))
    )


@pytest.mark.parametrize(
    "claims",
    [
        # Offsets from the moment the assertion is made (not from test collection, which can
        # be minutes earlier in a full run).
        pytest.param({"exp": -120}, id="expired"),
        pytest.param({"exp": +600}, id="exp-more-than-5-min-ahead"),
        pytest.param({"aud": "https://other.example.org/token"}, id="wrong-aud"),
        pytest.param({"sub": "someone-else"}, id="sub-not-iss"),
        pytest.param({"jti": None}, id="no-jti"),
    ],
)
async def test_bad_assertions_are_rejected(
    live: LiveServer, sec_db: Db, http: httpx.Client, claims: dict[str, Any]
) -> None:
    key = new_key("ES384")
    client_id = await backend_client(sec_db, key)
    if "exp" in claims:
        claims = {**claims, "exp": int(time.time()) + claims["exp"]}
    signed = assertion(key, "ES384", client_id, live.token_url, **claims)
    expect_invalid_client(token_request(http, signed))


async def test_assertion_signed_by_an_unregistered_key_is_rejected(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    key = new_key("RS384")
    client_id = await backend_client(sec_db, key)
    impostor = RSAKey.generate_key(2048, parameters={"kid": str(key.kid), "alg": "RS384"})
    expect_invalid_client(
        token_request(http, assertion(impostor, "RS384", client_id, live.token_url))
    )


async def test_wrong_assertion_type_and_unknown_client_are_rejected(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    key = new_key("RS384")
    client_id = await backend_client(sec_db, key)
    signed = assertion(key, "RS384", client_id, live.token_url)
    wrong_type = http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "urn:example:other",
            "client_assertion": signed,
        },
    )
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"] == "invalid_request"
    expect_invalid_client(token_request(http, assertion(key, "RS384", "nobody", live.token_url)))


async def test_public_client_cannot_use_client_credentials(sec_db: Db, http: httpx.Client) -> None:
    client_id = unique("public")
    await admin.clients_add(
        sec_db, client_id, "public", scope="system/*.rs", redirect_uris=["http://127.0.0.1:9/cb"]
    )
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs", "client_id": client_id},
    )
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"


async def test_symmetric_client_credentials_with_basic_auth(sec_db: Db, http: httpx.Client) -> None:
    client_id = unique("sym")
    _, secret = await admin.clients_add(
        sec_db, client_id, "confidential-symmetric", scope="system/*.rs"
    )
    assert secret
    ok = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, secret),
    )
    assert ok.status_code == 200
    bad = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        auth=(client_id, "wrong"),
    )
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize("credentials", [b"Basic %%%", b"Basic \xe2\x82\xac=", b"Basic gA=="])
def test_malformed_basic_credentials_are_a_client_error(
    http: httpx.Client, credentials: bytes
) -> None:
    """Not Base64, a byte outside ASCII, Base64 of bytes that are not UTF-8: never a 500."""
    response = http.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.rs"},
        headers={"Authorization": credentials},
    )
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] == "invalid_client"


async def test_backend_token_introspection_by_the_client_itself(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    key = new_key("ES384")
    client_id = await backend_client(sec_db, key)
    token = token_request(http, assertion(key, "ES384", client_id, live.token_url)).json()
    info = http.post(
        "/oauth/introspect",
        data={
            "token": token["access_token"],
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, "ES384", client_id, live.token_url),
        },
    ).json()
    assert info["active"] is True and info["client_id"] == client_id
    assert info["scope"] == "system/*.rs" and info["sub"] == client_id
    # A resource server may introspect with its own bearer token instead.
    by_bearer = http.post(
        "/oauth/introspect",
        data={"token": token["access_token"]},
        headers={"Authorization": f"Bearer {token['access_token']}"},
    )
    assert by_bearer.json()["active"] is True

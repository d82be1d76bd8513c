"""The checks of the ONC (g)(10) and SMART App Launch test kits (Inferno) that no other test
covers, re-expressed from SMART App Launch 2.2 (hl7.org/fhir/smart-app-launch) and the RFCs
it builds on. Those kits need a public HTTPS deployment and cannot run here.

One test per kit check; each docstring names the check it mirrors. Checks already covered
elsewhere are not repeated: docs/smart-conformance.md maps every kit check of the standalone
launch, limited scopes, OpenID Connect, token refresh, backend services, token revocation and
token introspection groups to the test that covers it, here or in another module.
"""

# The live server runs in its own thread and event loop, so blocking httpx calls from these
# async tests (async only for the database fixtures) cannot stall it.
# ruff: noqa: ASYNC212

from __future__ import annotations

import time
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.jwk import KeySet
from pymongo import AsyncMongoClient

from app.security import admin, oauth
from app.security.discovery import OAUTH_URIS
from app.security.keys import KeyRing
from app.security.keystore import KeyStore
from app.security.service import Security, SecurityConfig
from app.security.tokens import issue_access_token
from app.store.client import EmbeddedServer
from tests.security.live_server import LiveServer, unique
from tests.security.test_authorization_code import (
    Db,
    authorize_params,
    csrf_of,
    exchange,
    get_code,
    introspect,
    pkce_pair,
    public_client,
    redirect_query,
    user,
)
from tests.security.test_backend_services import (
    ASSERTION_TYPE,
    assertion,
    backend_client,
    new_key,
)

JSON = "application/json"


def is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip() == JSON


def no_store(response: httpx.Response) -> bool:
    # SMART 2.2 app-launch §"Response": Cache-Control no-store and Pragma no-cache.
    return (
        response.headers.get("cache-control") == "no-store"
        and response.headers.get("pragma") == "no-cache"
    )


async def launched(
    live: LiveServer, db: Db, http: httpx.Client, scope: str, fhir_user: str = "Patient/p1"
) -> tuple[str, httpx.Response]:
    """(client_id, token response) of a standalone launch by a patient user (no picker)."""
    client_id = await public_client(db, scope)
    code, verifier = get_code(http, live, client_id, scope, await user(db, fhir_user=fhir_user))
    return client_id, exchange(http, client_id, code, verifier)


def server_keys(http: httpx.Client, url: str = "/oauth/jwks") -> KeySet:
    return KeySet.import_key_set(http.get(url).json())


# -- discovery -------------------------------------------------------------------------------


def test_well_known_configuration_is_served_as_json(http: httpx.Client) -> None:
    """Kit: SMART Discovery — "Retrieve Configuration from well-known endpoint" (200, a JSON
    object, Content-Type application/json)."""
    response = http.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200 and is_json(response)
    assert isinstance(response.json(), dict)


def test_capability_statement_oauth_uris_match_well_known(
    live: LiveServer, http: httpx.Client
) -> None:
    """Kit: SMART Discovery — "Conformance/CapabilityStatement provides OAuth 2.0 endpoints"
    and "OAuth 2.0 Endpoints in the conformance statement match those from the well-known
    configuration"."""
    config = http.get("/fhir/.well-known/smart-configuration").json()
    metadata = http.get("/fhir/metadata")
    assert metadata.status_code == 200
    security = metadata.json()["rest"][0]["security"]
    (extension,) = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
    uris = {e["url"]: e["valueUri"] for e in extension["extension"]}
    assert uris["authorize"] == config["authorization_endpoint"]
    assert uris["token"] == config["token_endpoint"]
    assert uris["revoke"] == config["revocation_endpoint"]
    assert uris["introspect"] == config["introspection_endpoint"]


def test_well_known_configuration_advertises_backend_services(http: httpx.Client) -> None:
    """Kit: Backend Services Discovery — token_endpoint, client_credentials grant,
    private_key_jwt, RS384 or ES384 in token_endpoint_auth_signing_alg_values_supported,
    system scopes in scopes_supported, client-confidential-asymmetric capability."""
    config = http.get("/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint"]
    assert "client_credentials" in config["grant_types_supported"]
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    # Backend Services: servers SHALL support RS384 and SHOULD support ES384.
    assert {"RS384", "ES384"} <= set(config["token_endpoint_auth_signing_alg_values_supported"])
    assert any(scope.startswith("system/") for scope in config["scopes_supported"])
    assert "client-confidential-asymmetric" in config["capabilities"]


def test_openid_configuration_has_the_required_fields(live: LiveServer, http: httpx.Client) -> None:
    """Kit: OpenID Connect — "OpenID Connect well-known configuration contains all required
    fields" (issuer, authorization_endpoint, token_endpoint, jwks_uri,
    response_types_supported, subject_types_supported, id_token_signing_alg_values_supported),
    and its jwks_uri can be retrieved ("JWKS can be retrieved")."""
    response = http.get("/fhir/.well-known/openid-configuration")
    assert response.status_code == 200 and is_json(response)
    config = response.json()
    for name in (
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert config[name], name
    assert config["issuer"] == live.fhir_base
    keys = http.get(config["jwks_uri"]).json()["keys"]
    assert keys and all(key["kid"] for key in keys)


# -- standalone launch: token exchange -------------------------------------------------------


async def test_token_response_body_has_required_fields_and_types(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Standalone Launch — "Token exchange response body contains required information
    encoded in JSON" (access_token, token_type Bearer, scope, integer expires_in; the patient
    context; need_patient_banner a boolean as `context-banner` is claimed; smart_style_url if
    `context-style` is claimed)."""
    scope = "launch/patient openid fhirUser patient/*.rs offline_access"
    _, response = await launched(live, sec_db, http, scope)
    assert response.status_code == 200 and is_json(response)
    body = response.json()
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert set(body["scope"].split()) <= set(scope.split())
    assert body["patient"] == "p1"
    capabilities = http.get("/fhir/.well-known/smart-configuration").json()["capabilities"]
    if "context-banner" in capabilities:
        assert isinstance(body["need_patient_banner"], bool)
    if "context-style" in capabilities:
        assert body["smart_style_url"].startswith(("http://", "https://"))


async def test_token_response_has_no_store_and_no_cache_headers(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Standalone Launch and Token Refresh — "Response includes correct HTTP
    Cache-Control and Pragma headers" (Cache-Control: no-store, Pragma: no-cache), on the code
    exchange and on the refresh."""
    client_id, response = await launched(live, sec_db, http, "patient/*.rs offline_access")
    assert response.status_code == 200 and no_store(response)
    refreshed = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": response.json()["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200 and no_store(refreshed)


async def test_token_exchange_with_an_invalid_code_fails(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Standalone Launch — "OAuth token exchange fails when supplied invalid code"."""
    client_id = await public_client(sec_db, "user/*.rs")
    verifier, _ = pkce_pair()
    response = exchange(http, client_id, "not-a-code-this-server-issued", verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_token_exchange_with_an_invalid_client_id_fails(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Standalone Launch — "OAuth token exchange fails when supplied invalid client ID"
    (a genuine code and verifier, an unregistered client_id: 400 or 401 invalid_client)."""
    client_id = await public_client(sec_db, "user/*.rs")
    code, verifier = get_code(http, live, client_id, "user/*.rs", await user(sec_db))
    response = exchange(http, unique("nobody"), code, verifier)
    assert response.status_code in (400, 401)
    assert response.json()["error"] == "invalid_client"
    # The code was not burnt by the failed attempt: its own client still redeems it.
    assert exchange(http, client_id, code, verifier).status_code == 200


async def test_authorization_request_by_post_is_accepted(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Standalone Launch with POST (SMART 2.2 `authorize-post`, claimed in the
    capabilities) — the authorization request sent as a form POST leads through the login to
    a redirect with a code and the unchanged state."""
    assert (
        "authorize-post" in http.get("/fhir/.well-known/smart-configuration").json()["capabilities"]
    )
    client_id = await public_client(sec_db, "user/*.rs")
    username = await user(sec_db)
    verifier, challenge = pkce_pair()
    params = authorize_params(live, client_id, "user/*.rs", challenge)
    page = http.post("/oauth/authorize", data=params)
    assert page.status_code == 200 and 'name="password"' in page.text
    done = http.post(
        "/oauth/authorize",
        data={
            "step": "login",
            "csrf_token": csrf_of(page),
            "username": username,
            "password": "correct horse battery",
        },
    )
    query = redirect_query(done)
    assert query["state"] == params["state"]
    assert exchange(http, client_id, query["code"], verifier).status_code == 200


# -- limited scopes --------------------------------------------------------------------------


async def test_limited_access_token_gets_only_what_was_granted(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit (g)(10): Standalone Patient App, Limited Access — "OAuth token exchange response
    body contains the expected scopes" (a subset of those requested, narrower here) and
    "Access to resource types that were not granted is refused" (403 with an
    OperationOutcome, not data)."""
    requested = "launch/patient patient/Patient.rs patient/Observation.rs"
    client_id = await public_client(sec_db, "launch/patient patient/Observation.rs")
    code, verifier = get_code(
        http, live, client_id, requested, await user(sec_db, fhir_user="Patient/p1")
    )
    body = exchange(http, client_id, code, verifier).json()
    assert set(body["scope"].split()) == {"launch/patient", "patient/Observation.rs"}
    assert body["patient"] == "p1"
    refused = http.get(
        "/fhir/Patient/p1", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert refused.status_code == 403
    assert refused.json()["resourceType"] == "OperationOutcome"


# -- OpenID Connect --------------------------------------------------------------------------


async def test_id_token_has_required_claims_and_a_published_key(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: OpenID Connect — "ID token can be decoded", "ID token header contains required
    information" (a `kid` found in the JWKS), "ID token payload has required claims" (iss,
    sub, aud, exp, iat; iss equal to the OpenID configuration's issuer, aud the client_id),
    "ID token signature is valid"."""
    client_id, response = await launched(
        live, sec_db, http, "launch/patient openid fhirUser patient/*.rs"
    )
    id_token = response.json()["id_token"]
    config = http.get("/fhir/.well-known/openid-configuration").json()
    keys = server_keys(http, config["jwks_uri"])
    header = jws.extract_compact(id_token.encode()).protected
    assert header["kid"] in {key.kid for key in keys}
    claims = jwt.decode(
        id_token, keys, algorithms=config["id_token_signing_alg_values_supported"]
    ).claims
    for name in ("iss", "sub", "aud", "exp", "iat"):
        assert claims[name], name
    assert claims["iss"] == config["issuer"]
    assert claims["aud"] == client_id or client_id in claims["aud"]
    assert claims["iat"] <= time.time() + 30 < claims["exp"] + 30


async def test_fhir_user_claim_is_a_readable_resource(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: OpenID Connect — "FHIR resource representing the current user can be retrieved"
    (the fhirUser claim is an absolute URL of a Patient/Practitioner/… the token can read)."""
    _, response = await launched(live, sec_db, http, "launch/patient openid fhirUser patient/*.rs")
    body = response.json()
    claims = jwt.decode(body["id_token"], server_keys(http), algorithms=["RS256"]).claims
    fhir_user = claims["fhirUser"]
    assert fhir_user == f"{live.fhir_base}/Patient/p1"
    resource = http.get(fhir_user, headers={"Authorization": f"Bearer {body['access_token']}"})
    assert resource.status_code == 200
    assert resource.json()["resourceType"] == "Patient" and resource.json()["id"] == "p1"


async def test_id_token_is_signed_with_rs256(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: OpenID Connect — "OpenID Connect well-known configuration contains all required
    fields" (RS256 must be supported) and "ID token header contains required information"
    (alg RS256, SMART App Launch 2.2 requirement 210)."""
    config = http.get("/fhir/.well-known/openid-configuration").json()
    assert "RS256" in config["id_token_signing_alg_values_supported"]
    smart = http.get("/fhir/.well-known/smart-configuration").json()
    assert "RS256" in smart["id_token_signing_alg_values_supported"]
    _, response = await launched(live, sec_db, http, "launch/patient openid fhirUser patient/*.rs")
    id_token = response.json()["id_token"]
    header = jws.extract_compact(id_token.encode()).protected
    assert header["alg"] == "RS256"
    # The key is published at jwks_uri as an RS256 RSA key under its own kid, and the
    # signature verifies with it and RS256 alone.
    published = http.get(config["jwks_uri"]).json()["keys"]
    entry = next(k for k in published if k["kid"] == header["kid"])
    assert entry["kty"] == "RSA" and entry["alg"] == "RS256" and "d" not in entry
    jwt.decode(id_token, KeySet.import_key_set({"keys": [entry]}), algorithms=["RS256"])


async def test_access_tokens_keep_their_algorithm_and_key(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Not a kit check: the RS256 id-token key signs id tokens only. Access tokens stay RS384
    or ES384 (RFC 9068 at+jwt) under a different kid, so neither token verifies as the other."""
    _, response = await launched(live, sec_db, http, "launch/patient openid fhirUser patient/*.rs")
    body = response.json()
    access = jws.extract_compact(body["access_token"].encode()).protected
    identity = jws.extract_compact(body["id_token"].encode()).protected
    assert access["alg"] in ("RS384", "ES384") and access["typ"] == "at+jwt"
    assert access["kid"] != identity["kid"]
    as_bearer = {"Authorization": f"Bearer {body['id_token']}"}
    assert http.get("/fhir/Patient/p1", headers=as_bearer).status_code == 401


# -- token refresh ---------------------------------------------------------------------------


async def test_refresh_response_body_has_required_fields(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Token Refresh — "Refresh token exchange response body contains required
    information encoded in JSON" (access_token, token_type Bearer, scope within the original
    grant, integer expires_in, the launch context kept)."""
    scope = "launch/patient patient/*.rs offline_access"
    client_id, first = await launched(live, sec_db, http, scope)
    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first.json()["refresh_token"],
            "client_id": client_id,
        },
    )
    assert response.status_code == 200 and is_json(response)
    body = response.json()
    assert body["access_token"] and body["token_type"].lower() == "bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert set(body["scope"].split()) <= set(scope.split())
    assert body["patient"] == "p1"


async def test_refresh_with_an_invalid_refresh_token_fails(sec_db: Db, http: httpx.Client) -> None:
    """Kit: Token Refresh — "Refresh token exchange fails when supplied invalid refresh
    token" (400 invalid_grant)."""
    client_id = await public_client(sec_db, "user/*.rs offline_access")
    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": "not-a-refresh-token-of-this-server",
            "client_id": client_id,
        },
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# -- token revocation ------------------------------------------------------------------------


async def test_revoked_refresh_token_is_refused(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit (g)(10): Token Revocation — "Refresh token has been revoked" (after revocation a
    refresh request with it fails with invalid_grant)."""
    client_id, response = await launched(live, sec_db, http, "patient/*.rs offline_access")
    refresh = response.json()["refresh_token"]
    revoked = http.post("/oauth/revoke", data={"token": refresh, "client_id": client_id})
    assert revoked.status_code == 200
    again = http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client_id},
    )
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


# -- token introspection ---------------------------------------------------------------------


async def test_introspection_of_an_active_token_has_the_smart_fields(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Token Introspection — "Token introspection response for an active token contains
    required fields": active, scope, client_id, exp consistent with expires_in; the launch
    context of the token response (patient); the id_token's iss and sub (SHALL) and fhirUser
    (SHOULD) (SMART 2.2 token-introspection.html)."""
    before = int(time.time())
    client_id, response = await launched(
        live, sec_db, http, "launch/patient openid fhirUser patient/*.rs"
    )
    body = response.json()
    id_claims = jwt.decode(body["id_token"], server_keys(http), algorithms=["RS256"]).claims
    info = introspect(http, client_id, body["access_token"])
    assert info["active"] is True
    assert info["scope"] == body["scope"] and info["client_id"] == client_id
    assert before + body["expires_in"] - 5 <= info["exp"] <= int(time.time()) + body["expires_in"]
    assert info["patient"] == body["patient"]
    assert info["iss"] == id_claims["iss"] and info["sub"] == id_claims["sub"]
    assert info["fhirUser"] == id_claims["fhirUser"]


async def test_introspection_of_an_expired_token_is_inactive(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Token Introspection — "Token introspection response for an invalid token": an
    expired access token is `{"active": false}` and nothing else (RFC 7662 §2.2)."""
    client_id = await public_client(sec_db, "user/*.rs")
    # A key the live server trusts now: its ring is shared in the database, but other tests
    # rotate it there, and the server reloads only now and then.
    served = {key["kid"] for key in http.get("/oauth/jwks").json()["keys"]}
    shared = (await KeyStore.open(sec_db)).ring
    ring = KeyRing(next(key for key in shared.keys if key.kid in served))

    def token(issued_at: int) -> str:
        return issue_access_token(
            ring,
            issuer=live.fhir_base,
            audience=live.fhir_base,
            client_id=client_id,
            scope="user/*.rs",
            lifetime=300,
            now=issued_at,
        ).token

    # The same signer's fresh token is active: the expired one fails only for its age.
    assert introspect(http, client_id, token(int(time.time())))["active"] is True
    assert introspect(http, client_id, token(int(time.time()) - 3600)) == {"active": False}


async def test_introspection_and_revocation_follow_another_instances_key_rotation(
    live: LiveServer, database: EmbeddedServer
) -> None:
    """Not a kit check: the regression test of a bug found while mirroring the introspection
    checks. A token signed with a key another instance has just rotated in was introspected
    as inactive, and its revocation was silently dropped, until this instance reloaded."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database.uri)
    try:
        db = client[unique("rotation")]
        this_instance = await Security.open(db, SecurityConfig(fhir_base=live.fhir_base))
        other_instance = await KeyStore.open(db)
        await other_instance.rotate()
        client_id = unique("app")
        await admin.clients_add(
            db, client_id, "public", scope="user/*.rs", redirect_uris=["http://127.0.0.1:9/cb"]
        )
        token = issue_access_token(
            other_instance.ring,
            issuer=live.fhir_base,
            audience=live.fhir_base,
            client_id=client_id,
            scope="user/*.rs",
        ).token
        this_instance.keys._last_reload = 0.0  # as if the reload interval had passed
        form = {"token": token, "client_id": client_id}
        assert (await oauth.introspect(this_instance, form, None))["active"] is True
        await oauth.revoke(this_instance, form, None)
        assert await oauth.introspect(this_instance, form, None) == {"active": False}
    finally:
        await client.close()


# -- backend services ------------------------------------------------------------------------


async def test_backend_request_with_an_invalid_grant_type_fails(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Backend Services — "Authorization request fails when client supplies invalid
    grant_type" (a valid assertion, grant_type not_a_grant_type: 400)."""
    key = new_key("RS384")
    client_id = await backend_client(sec_db, key)
    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "not_a_grant_type",
            "scope": "system/*.rs",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion(key, "RS384", client_id, live.token_url),
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


async def test_backend_request_with_an_invalid_client_assertion_type_is_400(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Kit: Backend Services — "Authorization request fails when supplied invalid
    client_assertion_type" (client_assertion_type not_an_assertion_type: exactly 400)."""
    key = new_key("ES384")
    client_id = await backend_client(sec_db, key)
    response = http.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "scope": "system/*.rs",
            "client_assertion_type": "not_an_assertion_type",
            "client_assertion": assertion(key, "ES384", client_id, live.token_url),
        },
    )
    assert response.status_code == 400

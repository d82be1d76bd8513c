"""Discovery documents (SMART App Launch 2.2 §2.1 conformance, OpenID discovery, the
CapabilityStatement security block fhirclient reads), and the operator functions."""

# The live server runs in its own thread and event loop, so blocking httpx calls from these
# async tests (async only for the database fixtures) cannot stall it; fhirclient is sync.
# ruff: noqa: ASYNC212

from __future__ import annotations

from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from app.security import admin, keystore
from app.security.clients import ClientConflict
from app.security.discovery import OAUTH_URIS, capability_security
from app.security.keys import KeyRing
from app.security.passwords import hash_password, verify_password
from app.security.service import Security, SecurityConfig
from app.store.client import EmbeddedServer
from tests.security.live_server import LiveServer, unique

Db = AsyncDatabase[dict[str, Any]]


def test_smart_configuration_has_every_required_field(live: LiveServer, http: httpx.Client) -> None:
    response = http.get("/fhir/.well-known/smart-configuration")
    assert response.status_code == 200
    conf = response.json()
    # Required by SMART 2.2 for the capabilities we claim (launch, sso-openid-connect).
    for name in (
        "issuer",
        "jwks_uri",
        "authorization_endpoint",
        "token_endpoint",
        "grant_types_supported",
        "capabilities",
        "code_challenge_methods_supported",
    ):
        assert conf[name], name
    assert conf["code_challenge_methods_supported"] == ["S256"]  # never "plain"
    assert conf["token_endpoint"] == live.token_url
    assert conf["authorization_endpoint"] == live.authorize_url
    assert set(conf["grant_types_supported"]) == {
        "authorization_code",
        "client_credentials",
        "refresh_token",
    }
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    for capability in (
        "launch-standalone",
        "launch-ehr",
        "client-public",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "context-standalone-patient",
        "permission-v2",
        "permission-v1",
        "permission-offline",
        "permission-patient",
    ):
        assert capability in conf["capabilities"]
    # Not implemented, so not claimed.
    for capability in ("context-standalone-encounter", "context-style"):
        assert capability not in conf["capabilities"]
    for endpoint in ("introspection_endpoint", "revocation_endpoint"):
        # Live endpoints: an empty request is refused as an OAuth error, not a 404.
        refused = http.post(conf[endpoint])
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    assert http.get(conf["jwks_uri"]).status_code == 200


def test_openid_configuration_matches(live: LiveServer, http: httpx.Client) -> None:
    conf = http.get("/fhir/.well-known/openid-configuration").json()
    assert conf["issuer"] == live.fhir_base
    # OpenID Connect Core §15.1: providers MUST support RS256 for id tokens.
    assert conf["id_token_signing_alg_values_supported"] == ["RS256"]


def test_jwks_publishes_public_keys_only(http: httpx.Client) -> None:
    keys = http.get("/oauth/jwks").json()["keys"]
    assert keys and all("d" not in k and k["kid"] and k["use"] == "sig" for k in keys)


def test_capability_security_block_has_oauth_uris(live: LiveServer) -> None:
    block = capability_security(SecurityConfig(fhir_base=live.fhir_base))
    assert block["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    (extension,) = [e for e in block["extension"] if e["url"] == OAUTH_URIS]
    uris = {e["url"]: e["valueUri"] for e in extension["extension"]}
    assert uris == {
        "authorize": live.authorize_url,
        "token": live.token_url,
        "revoke": f"{live.root}/oauth/revoke",
        "introspect": f"{live.root}/oauth/introspect",
    }


def test_password_hash_round_trip() -> None:
    stored = hash_password("s3cret-enough")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_password("s3cret-enough", stored)
    assert not verify_password("s3cret-enougH", stored)
    assert hash_password("s3cret-enough") != stored  # salted


async def test_clients_and_users_admin(sec_db: Db) -> None:
    client_id = unique("adm")
    client, secret = await admin.clients_add(
        sec_db, client_id, "confidential-symmetric", scope="system/*.rs"
    )
    assert secret and client.check_secret(secret)
    listed = {c["client_id"]: c for c in await admin.clients_list(sec_db)}
    assert "secret_hash" not in listed[client_id] and secret not in str(listed)
    with pytest.raises(ClientConflict):
        await admin.clients_add(sec_db, client_id, "public", scope="user/*.rs")
    with pytest.raises(ValueError, match="redirect"):
        await admin.clients_add(
            sec_db, unique("x"), "public", scope="user/*.rs", redirect_uris=["javascript:alert(1)"]
        )
    with pytest.raises(ValueError, match="jwks"):
        await admin.clients_add(sec_db, unique("x"), "confidential-asymmetric", scope="system/*.rs")
    with pytest.raises(ValueError, match="unrecognised"):
        await admin.clients_add(sec_db, unique("x"), "public", scope="patient/Observation.xyz")
    assert await admin.clients_remove(sec_db, client_id)
    assert not await admin.clients_remove(sec_db, client_id)

    username = unique("nurse")
    await admin.users_add(
        sec_db, username, "long enough pw", fhir_user="Practitioner/n1", roles=["nurse"]
    )
    assert any(u["username"] == username for u in await admin.users_list(sec_db))
    with pytest.raises(ValueError):
        await admin.users_add(sec_db, unique("u"), "short")
    with pytest.raises(ValueError):
        await admin.users_add(sec_db, unique("u"), "long enough pw", fhir_user="Device/1")
    assert await admin.users_remove(sec_db, username)


async def test_operator_token_is_accepted_by_the_server(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    token = await admin.issue_operator_token(sec_db, live.fhir_base, "patient/*.rs", patient="p1")
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 200
    assert http.get("/fhir/Patient/p2", headers=bearer).status_code == 404
    with pytest.raises(ValueError, match="--patient"):
        await admin.issue_operator_token(sec_db, live.fhir_base, "patient/*.rs")
    claims = jwt.decode(
        token, KeySet.import_key_set(http.get("/oauth/jwks").json()), algorithms=["RS384", "ES384"]
    ).claims
    assert claims["patient"] == "p1" and claims["aud"] == live.fhir_base


async def test_dev_bootstrap_creates_a_working_client_once(database: EmbeddedServer) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database.uri)
    try:
        db = client[unique("boot")]
        security = await Security.open(db, SecurityConfig(fhir_base="http://127.0.0.1:1/fhir"))
        lines = await admin.bootstrap_dev_client(security)
        assert lines is not None
        text = "\n".join(lines)
        assert admin.DEV_CLIENT_ID in text and "client_credentials" in text
        registered = await security.clients.get(admin.DEV_CLIENT_ID)
        assert registered is not None and registered.client_type == "confidential-symmetric"
        secret = text.split("shown only now: ")[1].split()[0]
        assert registered.check_secret(secret)
        assert await admin.bootstrap_dev_client(security) is None  # only when none exist
    finally:
        await client.close()


async def test_key_store_keeps_an_rs256_id_token_ring_beside_the_access_ring(
    database: EmbeddedServer,
) -> None:
    """Id tokens have their own RS256 ring (OpenID Connect Core §15.1); a database from
    before it gains one without losing its access-token keys; rotation renews both and keeps
    the previous keys published, so tokens already issued still verify."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(database.uri)
    try:
        db = client[unique("keys")]
        existing = KeyRing.generate("ES384")
        await db[keystore.COLLECTION].insert_one({"_id": "signing", "ring": existing.to_dict()})
        store = await keystore.KeyStore.open(db)
        assert store.ring.current.kid == existing.current.kid
        assert store.id_ring.current.alg == "RS256"
        published = {k["kid"]: k for k in store.jwks()["keys"]}
        assert published[existing.current.kid]["alg"] == "ES384"
        assert published[store.id_ring.current.kid]["alg"] == "RS256"
        assert published[store.id_ring.current.kid]["kty"] == "RSA"

        before = set(published)
        access_kid, id_kid = await admin.rotate_signing_key(db)
        reopened = await keystore.KeyStore.open(db)  # another instance, after the rotation
        assert (reopened.ring.current.kid, reopened.id_ring.current.kid) == (access_kid, id_kid)
        assert reopened.id_ring.current.alg == "RS256"
        assert {k["kid"] for k in reopened.jwks()["keys"]} == before | {access_kid, id_kid}
    finally:
        await client.close()

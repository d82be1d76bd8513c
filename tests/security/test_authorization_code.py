"""Standalone and EHR launch over HTTP: authorize → login form → code → token → introspect,
refresh with rotation, revocation; the negative cases SMART App Launch 2.2 and the ONC
(g)(10) standalone-launch checks name (aud, PKCE, plain, redirect URI, state, CSRF).
"""

# The live server runs in its own thread and event loop, so blocking httpx calls from these
# async tests (async only for the database fixtures) cannot stall it; fhirclient is sync.
# ruff: noqa: ASYNC212

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhirclient import client as fhirclient
from joserfc import jwt
from joserfc.jwk import KeySet
from pymongo.asynchronous.database import AsyncDatabase

from app.security import admin
from tests.security.live_server import LiveServer, unique

REDIRECT = "http://127.0.0.1:9/callback"
PASSWORD = "correct horse battery"
Db = AsyncDatabase[dict[str, Any]]


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    # RFC 7636 §4.2 computed independently of app.security.pkce.
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def public_client(db: Db, scope: str) -> str:
    client_id = unique("app")
    await admin.clients_add(db, client_id, "public", scope=scope, redirect_uris=[REDIRECT])
    return client_id


async def user(db: Db, fhir_user: str | None = "Practitioner/dr1") -> str:
    username = unique("user")
    await admin.users_add(db, username, PASSWORD, fhir_user=fhir_user, roles=["clinician"])
    return username


def authorize_params(
    live: LiveServer, client_id: str, scope: str, challenge: str
) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": scope,
        "state": secrets.token_urlsafe(8),
        "aud": live.fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def redirect_query(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def sign_in(
    http: httpx.Client, params: dict[str, str], username: str, password: str = PASSWORD
) -> httpx.Response:
    page = http.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    assert "<form" in page.text and 'name="password"' in page.text
    return http.post(
        "/oauth/authorize",
        data={
            "step": "login",
            "csrf_token": csrf_of(page),
            "username": username,
            "password": password,
        },
    )


def get_code(
    http: httpx.Client, live: LiveServer, client_id: str, scope: str, username: str
) -> tuple[str, str]:
    verifier, challenge = pkce_pair()
    params = authorize_params(live, client_id, scope, challenge)
    query = redirect_query(sign_in(http, params, username))
    assert query["state"] == params["state"]
    return query["code"], verifier


def exchange(http: httpx.Client, client_id: str, code: str, verifier: str) -> httpx.Response:
    return http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "code_verifier": verifier,
        },
    )


def introspect(http: httpx.Client, client_id: str, token: str) -> dict[str, Any]:
    response = http.post("/oauth/introspect", data={"token": token, "client_id": client_id})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# -- the happy paths -------------------------------------------------------------------------


async def test_standalone_launch_driven_by_fhirclient(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "launch/patient openid fhirUser patient/*.rs offline_access"
    client_id = await public_client(sec_db, scope)
    username = await user(sec_db, fhir_user="Patient/p1")
    smart = fhirclient.FHIRClient(
        settings={
            "app_id": client_id,
            "api_base": live.fhir_base,
            "redirect_uri": REDIRECT,
            "scope": scope,
        }
    )
    url = smart.authorize_url
    assert url.startswith(live.authorize_url)
    sent = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert sent["code_challenge_method"] == "S256" and sent["aud"] == live.fhir_base

    page = http.get(url)
    callback = http.post(
        "/oauth/authorize",
        data={
            "step": "login",
            "csrf_token": csrf_of(page),
            "username": username,
            "password": PASSWORD,
        },
    )
    assert callback.status_code == 303
    # A patient user is their own patient context: no picker.
    smart.handle_callback(callback.headers["location"])
    assert smart.patient_id == "p1"
    assert smart.ready

    patient = smart.server.request_json("Patient/p1")
    assert patient["id"] == "p1" and patient["name"][0]["text"] == "Alice Adams"
    # patient/ scope: another patient's record reads as absent, not forbidden.
    other = http.get(
        "/fhir/Patient/p2", headers={"Authorization": f"Bearer {smart.server.auth.access_token}"}
    )
    assert other.status_code == 404


async def test_token_response_carries_context_id_token_and_no_store(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "launch/patient openid fhirUser patient/Observation.rs offline_access"
    client_id = await public_client(sec_db, scope)
    username = await user(sec_db)  # a practitioner: gets the patient picker
    verifier, challenge = pkce_pair()
    params = {**authorize_params(live, client_id, scope, challenge), "nonce": "n-0S6_WzA2Mj"}
    picker = sign_in(http, params, username)
    assert picker.status_code == 200 and 'name="patient"' in picker.text
    assert "Alice Adams" in picker.text and "Bob Brown" in picker.text
    done = http.post(
        "/oauth/authorize", data={"step": "patient", "csrf_token": csrf_of(picker), "patient": "p2"}
    )
    code = redirect_query(done)["code"]

    response = exchange(http, client_id, code, verifier)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["patient"] == "p2"
    assert 0 < body["expires_in"] <= 3600
    assert set(body["scope"].split()) == set(scope.split())
    assert body["refresh_token"]

    jwks = KeySet.import_key_set(http.get("/oauth/jwks").json())
    id_token = jwt.decode(body["id_token"], jwks, algorithms=["RS256"])
    assert id_token.claims["aud"] == client_id
    assert id_token.claims["iss"] == live.fhir_base
    assert id_token.claims["nonce"] == "n-0S6_WzA2Mj"
    assert id_token.claims["fhirUser"] == f"{live.fhir_base}/Practitioner/dr1"

    info = introspect(http, client_id, body["access_token"])
    assert info["active"] is True
    assert info["client_id"] == client_id and info["patient"] == "p2"
    assert set(info["scope"].split()) == set(scope.split())
    assert info["exp"] > info["iat"]


async def test_ehr_launch_uses_the_launch_context(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "launch patient/*.rs"
    client_id = await public_client(sec_db, scope)
    username = await user(sec_db)
    launch = await admin.create_launch(sec_db, patient="p1", encounter="e7")
    verifier, challenge = pkce_pair()
    params = {**authorize_params(live, client_id, scope, challenge), "launch": launch}
    code = redirect_query(sign_in(http, params, username))["code"]  # no picker needed
    body = exchange(http, client_id, code, verifier).json()
    assert body["patient"] == "p1" and body["encounter"] == "e7"


async def test_ehr_launch_with_unknown_launch_id_is_refused(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "launch patient/*.rs")
    _, challenge = pkce_pair()
    params = {
        **authorize_params(live, client_id, "launch patient/*.rs", challenge),
        "launch": "no-such-launch",
    }
    query = redirect_query(http.get("/oauth/authorize", params=params))
    assert query["error"] == "invalid_request" and query["state"] == params["state"]


async def test_scopes_are_narrowed_to_what_the_client_may_have(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/Observation.rs")
    username = await user(sec_db)
    code, verifier = get_code(
        http, live, client_id, "user/Observation.rs user/Patient.rs system/*.cruds", username
    )
    assert exchange(http, client_id, code, verifier).json()["scope"] == "user/Observation.rs"


async def test_confidential_symmetric_client_authenticates_with_basic(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = unique("conf")
    _, secret = await admin.clients_add(
        sec_db, client_id, "confidential-symmetric", scope="user/*.rs", redirect_uris=[REDIRECT]
    )
    assert secret
    username = await user(sec_db)
    code, verifier = get_code(http, live, client_id, "user/*.rs", username)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    without_secret = http.post("/oauth/token", data={**form, "client_id": client_id})
    assert without_secret.status_code == 401
    assert without_secret.json()["error"] == "invalid_client"
    ok = http.post("/oauth/token", data=form, auth=(client_id, secret))
    assert ok.status_code == 200, ok.text


# -- refresh, revocation ---------------------------------------------------------------------


async def test_refresh_rotates_and_a_reused_refresh_token_ends_the_grant(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "user/*.rs offline_access"
    client_id = await public_client(sec_db, scope)
    code, verifier = get_code(http, live, client_id, scope, await user(sec_db))
    first = exchange(http, client_id, code, verifier).json()

    refreshed = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client_id,
        },
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"
    second = refreshed.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert introspect(http, client_id, second["access_token"])["active"] is True

    reused = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client_id,
        },
    )
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    # Reuse means theft or a broken app: the whole grant ends, new tokens included.
    assert introspect(http, client_id, second["refresh_token"]) == {"active": False}
    assert introspect(http, client_id, second["access_token"]) == {"active": False}


async def test_refresh_token_is_bound_to_its_client(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "user/*.rs offline_access"
    client_id = await public_client(sec_db, scope)
    thief = await public_client(sec_db, scope)
    code, verifier = get_code(http, live, client_id, scope, await user(sec_db))
    refresh = exchange(http, client_id, code, verifier).json()["refresh_token"]
    stolen = http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": thief},
    )
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    mine = http.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": client_id},
    )
    assert mine.status_code == 200


async def test_refresh_may_narrow_but_not_widen_scope(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "user/Observation.rs user/Patient.rs online_access"
    client_id = await public_client(sec_db, scope + " user/*.cruds")
    code, verifier = get_code(http, live, client_id, scope, await user(sec_db))
    refresh = exchange(http, client_id, code, verifier).json()["refresh_token"]
    narrowed = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": client_id,
            "scope": "user/Patient.rs",
        },
    ).json()
    assert narrowed["scope"] == "user/Patient.rs"
    wider = http.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": narrowed["refresh_token"],
            "client_id": client_id,
            "scope": "user/Encounter.rs",
        },
    )
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"


async def test_revoked_access_token_is_inactive_and_refused_by_the_fhir_api(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "user/*.rs"
    client_id = await public_client(sec_db, scope)
    code, verifier = get_code(http, live, client_id, scope, await user(sec_db))
    token = exchange(http, client_id, code, verifier).json()["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 200

    revoked = http.post("/oauth/revoke", data={"token": token, "client_id": client_id})
    assert revoked.status_code == 200
    assert introspect(http, client_id, token) == {"active": False}
    after = http.get("/fhir/Patient/p1", headers=bearer)
    assert after.status_code == 401
    assert after.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in after.headers["www-authenticate"]


async def test_revoking_a_refresh_token_revokes_its_access_tokens(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    scope = "user/*.rs offline_access"
    client_id = await public_client(sec_db, scope)
    code, verifier = get_code(http, live, client_id, scope, await user(sec_db))
    body = exchange(http, client_id, code, verifier).json()
    http.post("/oauth/revoke", data={"token": body["refresh_token"], "client_id": client_id})
    assert introspect(http, client_id, body["refresh_token"]) == {"active": False}
    assert introspect(http, client_id, body["access_token"]) == {"active": False}


async def test_revoking_an_unknown_token_answers_200(http: httpx.Client, sec_db: Db) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    response = http.post("/oauth/revoke", data={"token": "nonsense", "client_id": client_id})
    assert response.status_code == 200


async def test_introspection_requires_a_known_caller(http: httpx.Client) -> None:
    response = http.post("/oauth/introspect", data={"token": "x"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


async def test_missing_and_bad_bearer_tokens_get_401_with_challenge(http: httpx.Client) -> None:
    missing = http.get("/fhir/Patient/p1")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer realm=")
    assert missing.json()["resourceType"] == "OperationOutcome"
    bad = http.get("/fhir/Patient/p1", headers={"Authorization": "Bearer abc.def.ghi"})
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]


# -- refused authorization requests ------------------------------------------------------------


async def test_wrong_aud_is_refused(live: LiveServer, sec_db: Db, http: httpx.Client) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    _, challenge = pkce_pair()
    params = {
        **authorize_params(live, client_id, "user/*.rs", challenge),
        "aud": "https://attacker.example.org/fhir",
    }
    query = redirect_query(http.get("/oauth/authorize", params=params))
    assert query["error"] == "invalid_request" and "aud" in query["error_description"]


@pytest.mark.parametrize(
    ("change", "description"),
    [
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge_method": None}, "S256"),
        ({"code_challenge": None}, "code_challenge"),
    ],
)
async def test_authorization_without_s256_pkce_is_refused(
    live: LiveServer, sec_db: Db, http: httpx.Client, change: dict[str, Any], description: str
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    verifier, challenge = pkce_pair()
    params = authorize_params(live, client_id, "user/*.rs", challenge)
    if change.get("code_challenge_method") == "plain":
        params["code_challenge"] = verifier  # what `plain` would send
    params = {k: v for k, v in {**params, **change}.items() if v is not None}
    query = redirect_query(http.get("/oauth/authorize", params=params))
    assert query["error"] == "invalid_request" and description in query["error_description"]


async def test_missing_or_wrong_code_verifier_is_refused(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    username = await user(sec_db)
    code, _ = get_code(http, live, client_id, "user/*.rs", username)
    missing = http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
        },
    )
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"

    code, _ = get_code(http, live, client_id, "user/*.rs", username)
    wrong_verifier, _ = pkce_pair()
    wrong = exchange(http, client_id, code, wrong_verifier)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"


async def test_code_is_single_use_and_a_replay_revokes_its_tokens(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    code, verifier = get_code(http, live, client_id, "user/*.rs", await user(sec_db))
    token = exchange(http, client_id, code, verifier).json()["access_token"]
    again = exchange(http, client_id, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert introspect(http, client_id, token) == {"active": False}


async def test_code_is_bound_to_client_and_redirect_uri(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    other = await public_client(sec_db, "user/*.rs")
    username = await user(sec_db)
    code, verifier = get_code(http, live, client_id, "user/*.rs", username)
    assert exchange(http, other, code, verifier).json()["error"] == "invalid_grant"
    code, verifier = get_code(http, live, client_id, "user/*.rs", username)
    moved = http.post(
        "/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "client_id": client_id,
            "redirect_uri": "http://127.0.0.1:9/elsewhere",
            "code_verifier": verifier,
        },
    )
    assert moved.json()["error"] == "invalid_grant"


async def test_unregistered_redirect_uri_is_never_redirected_to(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    _, challenge = pkce_pair()
    params = {
        **authorize_params(live, client_id, "user/*.rs", challenge),
        "redirect_uri": "https://attacker.example.org/cb",
    }
    response = http.get("/oauth/authorize", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    unknown = http.get("/oauth/authorize", params={**params, "client_id": "nobody"})
    assert unknown.status_code == 400 and "location" not in unknown.headers


async def test_state_is_required(live: LiveServer, sec_db: Db, http: httpx.Client) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    _, challenge = pkce_pair()
    params = authorize_params(live, client_id, "user/*.rs", challenge)
    del params["state"]
    assert redirect_query(http.get("/oauth/authorize", params=params))["error"] == (
        "invalid_request"
    )


async def test_login_form_rejects_bad_password_and_forged_posts(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    username = await user(sec_db)
    _, challenge = pkce_pair()
    params = authorize_params(live, client_id, "user/*.rs", challenge)
    wrong = sign_in(http, params, username, password="not the password")
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    assert "location" not in wrong.headers
    # A cross-site post has the cookie but not the CSRF token from the page.
    forged = http.post(
        "/oauth/authorize",
        data={"step": "login", "csrf_token": "guess", "username": username, "password": PASSWORD},
    )
    assert forged.status_code == 400 and "location" not in forged.headers
    # Without the browser's session cookie the page's token is worthless too.
    with httpx.Client(base_url=live.root) as stranger:
        stolen = stranger.post(
            "/oauth/authorize",
            data={
                "step": "login",
                "csrf_token": csrf_of(wrong),
                "username": username,
                "password": PASSWORD,
            },
        )
    assert stolen.status_code == 400


async def test_deny_button_redirects_with_access_denied(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    client_id = await public_client(sec_db, "user/*.rs")
    _, challenge = pkce_pair()
    params = authorize_params(live, client_id, "user/*.rs", challenge)
    page = http.get("/oauth/authorize", params=params)
    denied = http.post("/oauth/authorize", data={"step": "deny", "csrf_token": csrf_of(page)})
    query = redirect_query(denied)
    assert query["error"] == "access_denied" and query["state"] == params["state"]


async def test_token_endpoint_errors_are_rfc6749_json(http: httpx.Client) -> None:
    unsupported = http.post("/oauth/token", data={"grant_type": "password"})
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"
    assert unsupported.headers["cache-control"] == "no-store"
    not_form = http.post("/oauth/token", json={"grant_type": "client_credentials"})
    assert not_form.status_code == 400 and not_form.json()["error"] == "invalid_request"

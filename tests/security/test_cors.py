"""CORS for browser-based SMART apps, over HTTP against the real app (`hestia serve`).

A browser app on another origin first sends a preflight (Fetch standard, CORS protocol:
OPTIONS with Origin and Access-Control-Request-Method/-Headers) for any request carrying
`Authorization` or a non-simple Content-Type, then the request itself; it may read the
response only if it carries a matching Access-Control-Allow-Origin, and only the
non-safelisted headers named in Access-Control-Expose-Headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.settings import Settings
from app.store.client import EmbeddedServer
from tests.conftest import RunningServer, start_hestia, stop_hestia

APP_ORIGIN = "https://smart-app.example.org"
FHIR_REQUEST_HEADERS = "authorization, content-type, if-match, if-none-match, if-none-exist, prefer"


def header_set(response: httpx.Response, name: str) -> set[str]:
    return {v.strip().lower() for v in response.headers.get(name, "").split(",") if v.strip()}


def preflight(
    url: str, method: str, request_headers: str, origin: str = APP_ORIGIN
) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": request_headers,
        },
    )


# -- default: any origin, no credentials -----------------------------------------------------


def test_preflight_to_the_fhir_api_is_answered_before_authentication(
    secured_hestia: RunningServer,
) -> None:
    # Without a token a POST /fhir/Patient is a 401; its preflight carries no token by
    # definition and must still succeed.
    response = preflight(f"{secured_hestia.fhir}/Patient", "POST", FHIR_REQUEST_HEADERS)
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN)
    assert "POST" in response.headers["access-control-allow-methods"]
    assert set(FHIR_REQUEST_HEADERS.split(", ")) <= header_set(
        response, "access-control-allow-headers"
    )
    # Bearer tokens, not cookies: never credentialed CORS.
    assert "access-control-allow-credentials" not in response.headers


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_preflight_to_a_resource_instance_allows_every_fhir_method(
    secured_hestia: RunningServer, method: str
) -> None:
    response = preflight(f"{secured_hestia.fhir}/Patient/123", method, "authorization")
    assert response.status_code in (200, 204)
    assert method in response.headers["access-control-allow-methods"]


def test_preflight_to_the_token_endpoint_succeeds(secured_hestia: RunningServer) -> None:
    # A public client posts the code exchange with fetch(); urlencoded bodies are "simple",
    # but apps commonly add Authorization (Basic) or Accept, which need a preflight.
    response = preflight(
        f"{secured_hestia.base}/oauth/token", "POST", "authorization, content-type"
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN)
    assert {"authorization", "content-type"} <= header_set(response, "access-control-allow-headers")


def test_cross_origin_metadata_and_discovery_are_readable(secured_hestia: RunningServer) -> None:
    for url in (
        f"{secured_hestia.fhir}/metadata",
        f"{secured_hestia.fhir}/.well-known/smart-configuration",
        f"{secured_hestia.fhir}/.well-known/openid-configuration",
        f"{secured_hestia.base}/oauth/jwks",
    ):
        response = httpx.get(url, headers={"Origin": APP_ORIGIN})
        assert response.status_code == 200, url
        assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN), url


def test_fhir_responses_expose_the_headers_fhir_clients_read(
    secured_hestia: RunningServer,
) -> None:
    # A 401 from the FHIR API: the app must be able to read the challenge.
    response = httpx.get(f"{secured_hestia.fhir}/Patient", headers={"Origin": APP_ORIGIN})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN)
    exposed = header_set(response, "access-control-expose-headers")
    assert {"location", "etag", "content-location", "last-modified", "www-authenticate"} <= exposed


def test_token_endpoint_errors_are_readable_cross_origin(secured_hestia: RunningServer) -> None:
    response = httpx.post(
        f"{secured_hestia.base}/oauth/token",
        data={"grant_type": "authorization_code", "code": "nope", "client_id": "nobody"},
        headers={"Origin": APP_ORIGIN},
    )
    assert response.status_code in (400, 401)
    assert response.headers["access-control-allow-origin"] in ("*", APP_ORIGIN)


def test_authorize_page_is_not_cors_enabled(secured_hestia: RunningServer) -> None:
    """The authorize endpoint and its login form are top-level navigations carrying the
    sign-in cookie: no other origin's script may read them."""
    authorize = f"{secured_hestia.base}/oauth/authorize"
    page = httpx.get(
        authorize,
        params={"response_type": "code", "client_id": "nobody", "state": "s"},
        headers={"Origin": APP_ORIGIN},
    )
    assert page.status_code in (200, 302, 303, 400)  # whatever the page says, it is served
    assert "access-control-allow-origin" not in page.headers
    # A login-form POST from a script: no CORS headers either.
    posted = httpx.post(authorize, data={"step": "login"}, headers={"Origin": APP_ORIGIN})
    assert "access-control-allow-origin" not in posted.headers
    refused = preflight(authorize, "POST", "content-type")
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-methods" not in refused.headers


# -- an explicit list of origins -------------------------------------------------------------

ALLOWED = "https://portal.hospital.example"


@pytest.fixture(scope="module")
def listed_origins(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    server = start_hestia(
        tmp_path_factory.mktemp("cors"),
        {
            "HESTIA_MONGODB_URI": database.uri,
            "HESTIA_DATABASE": f"cors_{uuid.uuid4().hex[:8]}",
            "HESTIA_AUDIT": "off",
            # The trailing slash is how operators often paste an origin; browsers send none.
            "HESTIA_CORS_ORIGINS": f"{ALLOWED}/, https://other.hospital.example",
        },
        name="cors",
    )
    yield server
    stop_hestia(server)


def test_listed_origin_is_echoed_and_others_are_refused(listed_origins: RunningServer) -> None:
    metadata = f"{listed_origins.fhir}/metadata"
    allowed = httpx.get(metadata, headers={"Origin": ALLOWED})
    assert allowed.headers["access-control-allow-origin"] == ALLOWED
    # The answer depends on Origin, so shared caches must key on it.
    assert "origin" in header_set(allowed, "vary")
    stranger = httpx.get(metadata, headers={"Origin": "https://evil.example"})
    assert stranger.status_code == 200
    assert "access-control-allow-origin" not in stranger.headers
    assert preflight(
        f"{listed_origins.fhir}/Patient", "GET", "authorization", ALLOWED
    ).status_code in (
        200,
        204,
    )
    refused = preflight(
        f"{listed_origins.fhir}/Patient", "GET", "authorization", "https://evil.example"
    )
    assert "access-control-allow-origin" not in refused.headers


def test_cors_origins_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        None: ("*",),  # unset: the default
        "": ("*",),
        "*": ("*",),
        "https://a.example, https://b.example:8443/": (
            "https://a.example",
            "https://b.example:8443",
        ),
        "https://a.example,*": ("*",),
        "off": (),
    }
    for raw, expected in cases.items():
        if raw is None:
            monkeypatch.delenv("HESTIA_CORS_ORIGINS", raising=False)
        else:
            monkeypatch.setenv("HESTIA_CORS_ORIGINS", raw)
        assert Settings.from_env().cors_origins == expected, raw

"""The login page in a real browser: headless Debian Chromium, driven by Selenium, from the
authorization request to a token that reads the chosen Patient.

The app's side is played by the test: it builds the authorize URL (PKCE S256, `aud`), runs
the redirect_uri as a small local HTTP server that captures `code` and `state`, and
exchanges the code with httpx. Everything between (login form, patient picker, the 303 back
to the app) is the browser's doing, so cookies, CSP, form posts and redirects are exercised
as a person's browser would.

Chromium comes from Debian (`scripts/ensure-chromium`, run by `scripts/test`); Selenium is
pointed at /usr/bin/chromedriver so it never tries to download a driver.
"""

# The live server and the callback server run in their own threads, so the blocking Selenium,
# queue and httpx calls of this async test (async only for the database fixture) cannot stall
# them.
# ruff: noqa: ASYNC212

from __future__ import annotations

import base64
import hashlib
import queue
import secrets
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from app.security import admin
from tests.security.live_server import PATIENT_NAMES, LiveServer, unique

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps dialling Google services, which
# this machine's closed network refuses; none of it is needed to drive a page.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PASSWORD = "correct horse battery"
WAIT = 20.0  # seconds for any one page or redirect

Db = AsyncDatabase[dict[str, Any]]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


class Callback:
    """The app's redirect_uri: a loopback HTTP server that hands each request's query over."""

    def __init__(self) -> None:
        self.queries: queue.Queue[dict[str, list[str]]] = queue.Queue()
        received = self.queries

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                received.put(parse_qs(urlsplit(self.path).query))
                body = b"<!DOCTYPE html><title>callback received</title><p id=done>done</p>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}/callback"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Callback:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: scripts/ensure-chromium installs Debian's "
            "chromium and chromium-driver (apt-get was unavailable or not allowed)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    # RFC 7636 §4.2, computed independently of app.security.pkce.
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


async def test_login_page_in_chromium_from_authorize_to_token(
    live: LiveServer, sec_db: Db, chromium: Any
) -> None:
    scope = "launch/patient openid fhirUser patient/*.rs"
    username = unique("browser-user")
    await admin.users_add(
        sec_db, username, PASSWORD, fhir_user="Practitioner/dr1", roles=["clinician"]
    )
    with Callback() as callback:
        client_id = unique("browser-app")
        await admin.clients_add(
            sec_db, client_id, "public", scope=scope, redirect_uris=[callback.uri]
        )
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(12)
        chromium.get(
            f"{live.authorize_url}?"
            + urlencode(
                {
                    "response_type": "code",
                    "client_id": client_id,
                    "redirect_uri": callback.uri,
                    "scope": scope,
                    "state": state,
                    "aud": live.fhir_base,
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            )
        )
        wait = WebDriverWait(chromium, WAIT)

        # The login form, filled and submitted as a person would.
        wait.until(expected_conditions.element_to_be_clickable((By.ID, "sign-in")))
        assert chromium.title == "Sign in to Hestia"
        chromium.find_element(By.ID, "username").send_keys(username)
        chromium.find_element(By.ID, "password").send_keys(PASSWORD)
        chromium.find_element(By.ID, "sign-in").click()

        # A practitioner has no patient of their own: launch/patient shows the picker.
        wait.until(expected_conditions.element_to_be_clickable((By.ID, "choose")))
        assert chromium.title == "Choose a patient"
        radios = chromium.find_elements(By.CSS_SELECTOR, 'input[type=radio][name="patient"]')
        assert {radio.get_attribute("value") for radio in radios} >= set(PATIENT_NAMES)
        (bob,) = [radio for radio in radios if radio.get_attribute("value") == "p2"]
        bob.click()
        chromium.find_element(By.ID, "choose").click()

        # The 303 lands in the app's redirect_uri with the code and the state it sent.
        try:
            query = callback.queries.get(timeout=WAIT)
        except queue.Empty:
            # The browser's console says why (a CSP refusal of the redirect, for one).
            pytest.fail(f"no redirect to the app; browser log: {chromium.get_log('browser')!r}")
        wait.until(expected_conditions.url_contains(callback.uri))
        assert query["state"] == [state]
        assert "error" not in query, query
        (code,) = query["code"]

    with httpx.Client(base_url=live.root, timeout=30) as http:
        response = http.post(
            "/oauth/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": callback.uri,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["token_type"] == "Bearer" and body["patient"] == "p2"
        assert body["id_token"]

        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        patient = http.get("/fhir/Patient/p2", headers=bearer)
        assert patient.status_code == 200, patient.text
        assert patient.json()["name"][0]["text"] == PATIENT_NAMES["p2"]
        # The picked patient is the token's whole world.
        assert http.get("/fhir/Patient/p1", headers=bearer).status_code == 404


async def test_pages_let_their_forms_redirect_to_the_app(
    live: LiveServer, sec_db: Db, http: httpx.Client
) -> None:
    """Without a browser: the CSP of the sign-in pages lists the app's origin in form-action,
    which the browser test shows is needed for the final 303, and nothing more."""
    redirect_uri = "http://127.0.0.1:9/callback"
    client_id = unique("csp-app")
    await admin.clients_add(
        sec_db, client_id, "public", scope="user/*.rs", redirect_uris=[redirect_uri]
    )
    _, challenge = pkce_pair()
    page = http.get(
        "/oauth/authorize",
        params={
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": "user/*.rs",
            "state": "s",
            "aud": live.fhir_base,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert page.status_code == 200
    directives = dict(
        d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";")
    )
    assert directives["form-action"].split() == ["'self'", "http://127.0.0.1:9"]
    assert directives["frame-ancestors"] == "'none'"
    # An error page has no form to submit: only 'self'.
    unknown = http.get("/oauth/authorize", params={"client_id": "nobody"})
    assert "form-action 'self';" in unknown.headers["content-security-policy"]

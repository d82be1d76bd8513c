"""SMART App Launch 2.2 HTTP endpoints: discovery, authorize (with login and patient picker),
token, introspect, revoke, jwks.

Needs `app.state.security` (an `app.security.service.Security`). Include this router BEFORE
the FHIR router, whose `/fhir/{type}/{id}` route would otherwise take `/fhir/.well-known/…`.
OAuth endpoints answer errors as RFC 6749 JSON, never as OperationOutcome.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.fhir.outcome import FhirError, NotFound
from app.security import oauth, pages
from app.security.discovery import openid_configuration, smart_configuration
from app.security.errors import OAuthError
from app.security.patients import list_patients, patient_exists
from app.security.service import Security

log = logging.getLogger("hestia.security")
# Two routers, so that the app can route them apart (app/main.py): discovery lives under
# /fhir and must be matched before the FHIR routes, the OAuth endpoints after them.
discovery_router = APIRouter()
router = APIRouter()

SESSION_COOKIE = "hestia_oauth_session"
MAX_LOGIN_ATTEMPTS = 5
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FORM_TYPE = "application/x-www-form-urlencoded"


def _security(request: Request) -> Security:
    security: Security | None = request.app.state.security
    if security is None:
        raise NotFound("Authentication is off on this server (HESTIA_AUTH=off): no OAuth endpoints")
    return security


# -- discovery -------------------------------------------------------------------------------


@discovery_router.get("/fhir/.well-known/smart-configuration")
async def smart_config(request: Request) -> JSONResponse:
    return JSONResponse(smart_configuration(_security(request).config))


@discovery_router.get("/fhir/.well-known/openid-configuration")
async def openid_config(request: Request) -> JSONResponse:
    return JSONResponse(openid_configuration(_security(request).config))


@router.get("/oauth/jwks")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(
        _security(request).keys.jwks(), headers={"Cache-Control": "public, max-age=300"}
    )


# -- authorize -------------------------------------------------------------------------------


@router.get("/oauth/authorize")
async def authorize_get(request: Request) -> Response:
    params, duplicate = _single_values(request.query_params.multi_items())
    if duplicate:
        return _page(pages.error_page(f"Parameter {duplicate[:40]} was sent more than once."), 400)
    return await _start(request, params)


@router.post("/oauth/authorize")
async def authorize_post(request: Request) -> Response:
    form = await _read_form(request)
    if isinstance(form, Response):
        return form
    if "response_type" in form:
        return await _start(request, form)  # SMART `authorize-post`: the request itself
    security = _security(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    session = await security.sessions.get(session_id)
    csrf = form.get("csrf_token", "")
    if (
        session is None
        or session_id is None
        or not hmac.compare_digest(str(session["csrf"]).encode(), csrf.encode())
    ):
        return _page(
            pages.error_page(
                "This sign-in page has expired or was not opened by this browser. "
                "Start again from the application."
            ),
            400,
        )
    pending: dict[str, Any] = session["request"]
    step = form.get("step")
    if step == "deny":
        await security.sessions.finish(session_id)
        return RedirectResponse(oauth.denied_redirect(pending), 303)
    if step == "login":
        return await _login(security, session_id, session, form)
    if step == "patient":
        return await _pick_patient(security, session_id, session, form)
    return _page(pages.error_page("Unknown step."), 400)


async def _start(request: Request, params: Mapping[str, str]) -> Response:
    security = _security(request)
    try:
        pending = await oauth.validate_authorization_request(security, params)
    except oauth.PageError as exc:
        return _page(pages.error_page(exc.message), 400)
    except oauth.RedirectError as exc:
        log.info("authorization refused: %s", exc.error.reason)
        return RedirectResponse(exc.location, 302)
    session_id, csrf = await security.sessions.create(pending)
    response = _page(
        pages.login_page(client_name=pending["client_name"], scope=pending["scope"], csrf=csrf),
        redirect_uri=pending["redirect_uri"],
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=security.config.session_lifetime,
        path="/oauth",
        httponly=True,
        secure=security.config.secure_cookies,
        samesite="lax",
    )
    return response


async def _login(
    security: Security, session_id: str, session: Mapping[str, Any], form: Mapping[str, str]
) -> Response:
    pending: dict[str, Any] = session["request"]
    user = await security.users.authenticate(form.get("username", ""), form.get("password", ""))
    if user is None:
        attempts = int(session.get("attempts", 0)) + 1
        if attempts >= MAX_LOGIN_ATTEMPTS:
            await security.sessions.finish(session_id)
            return RedirectResponse(oauth.denied_redirect(pending), 303)
        await security.sessions.update(session_id, {"attempts": attempts})
        return _page(
            pages.login_page(
                client_name=pending["client_name"],
                scope=pending["scope"],
                csrf=session["csrf"],
                error="Unknown user or wrong password.",
            ),
            401,
            redirect_uri=pending["redirect_uri"],
        )
    patient = pending.get("patient") or (user.patient_id if pending["needs_patient"] else None)
    if pending["needs_patient"] and patient is None:
        await security.sessions.update(session_id, {"username": user.username})
        return _page(
            pages.patient_picker(patients=await list_patients(security.db), csrf=session["csrf"]),
            redirect_uri=pending["redirect_uri"],
        )
    return await _finish(security, session_id, pending, user.username, patient)


async def _pick_patient(
    security: Security, session_id: str, session: Mapping[str, Any], form: Mapping[str, str]
) -> Response:
    username = session.get("username")
    if not username:
        return _page(pages.error_page("Sign in first."), 400)
    chosen = (form.get("patient_id") or form.get("patient") or "").strip()
    if not chosen or not await patient_exists(security.db, chosen):
        return _page(
            pages.patient_picker(
                patients=await list_patients(security.db),
                csrf=session["csrf"],
                error="Choose a stored patient.",
            ),
            400,
            redirect_uri=session["request"]["redirect_uri"],
        )
    return await _finish(security, session_id, session["request"], username, chosen)


async def _finish(
    security: Security,
    session_id: str,
    pending: Mapping[str, Any],
    username: str,
    patient: str | None,
) -> Response:
    user = await security.users.get(username)
    # finish() is the atomic step: a double-submitted form yields one code, not two.
    if user is None or not await security.sessions.finish(session_id):
        return _page(pages.error_page("This sign-in has already been completed."), 400)
    location = await oauth.issue_code(security, pending, user, patient)
    response = RedirectResponse(location, 303)
    response.delete_cookie(SESSION_COOKIE, path="/oauth")
    return response


# -- token, introspection, revocation --------------------------------------------------------


@router.post("/oauth/token")
async def token(request: Request) -> Response:
    return await _oauth_call(request, oauth.token)


@router.post("/oauth/introspect")
async def introspect(request: Request) -> Response:
    return await _oauth_call(request, oauth.introspect)


@router.post("/oauth/revoke")
async def revoke(request: Request) -> Response:
    async def call(security: Security, form: Mapping[str, str], auth: str | None) -> None:
        await oauth.revoke(security, form, auth)

    return await _oauth_call(request, call)


async def _oauth_call(request: Request, handler: Any) -> Response:
    form = await _read_form(request)
    if isinstance(form, Response):
        return _oauth_error(
            OAuthError("invalid_request", f"the body must be {FORM_TYPE}, each parameter once")
        )
    authorization = request.headers.get("authorization")
    try:
        result = await handler(_security(request), form, authorization)
    except OAuthError as exc:
        log.info("%s refused: %s (%s)", request.url.path, exc.error, exc.reason)
        basic = bool(authorization and authorization.lower().startswith("basic "))
        return _oauth_error(exc, basic_challenge=basic)
    except FhirError as exc:  # a bad bearer token presented to introspection
        return JSONResponse(
            {"error": "invalid_token", "error_description": exc.diagnostics},
            exc.status,
            headers={**NO_STORE, **exc.headers},
        )
    if result is None:
        return Response(status_code=200, headers=NO_STORE)
    return JSONResponse(result, headers=NO_STORE)


def _oauth_error(exc: OAuthError, *, basic_challenge: bool = False) -> JSONResponse:
    headers = dict(NO_STORE)
    if exc.status == 401:
        # RFC 6749 §5.2: a 401 names the scheme the client tried.
        headers["WWW-Authenticate"] = 'Basic realm="hestia"' if basic_challenge else "Bearer"
    return JSONResponse(exc.to_json(), exc.status, headers=headers)


# -- helpers ---------------------------------------------------------------------------------


async def _read_form(request: Request) -> dict[str, str] | Response:
    """The urlencoded body as single values; a Response (400) if not one."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        return _page(pages.error_page(f"The request body must be {FORM_TYPE}."), 400)
    raw = await request.form(max_files=0, max_fields=64)
    values, duplicate = _single_values([(k, v) for k, v in raw.multi_items() if isinstance(v, str)])
    if duplicate:
        return _page(pages.error_page(f"Parameter {duplicate[:40]} was sent twice."), 400)
    return values


def _single_values(items: list[tuple[str, str]]) -> tuple[dict[str, str], str | None]:
    # RFC 6749 §3.1: request parameters MUST NOT be included more than once.
    values: dict[str, str] = {}
    for key, value in items:
        if key in values:
            return values, key
        values[key] = value
    return values, None


def _page(html: str, status: int = 200, *, redirect_uri: str | None = None) -> HTMLResponse:
    """An HTML page; `redirect_uri`, for pages whose forms end in a redirect to the app."""
    return HTMLResponse(html, status, headers=pages.security_headers(redirect_uri))

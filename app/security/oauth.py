"""The authorization server's logic, without HTTP: authorize, token, introspect, revoke.

app/api/smart.py turns requests into calls here and `OAuthError`s into RFC 6749 JSON or
redirects. Where SMART App Launch 2.2 is stricter than OAuth 2.0 it wins: PKCE S256 for
every client, `aud` must be this FHIR server, `state` is required.

authlib is not used: it has no async server for FastAPI, and what it would add over
joserfc (grant plumbing) is smaller than the SMART-specific rules written here.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

from app.security import pkce
from app.security.assertions import CLIENT_ASSERTION_TYPE, peek_client_id, verify_client_assertion
from app.security.clients import Client
from app.security.errors import OAuthError, OAuthErrorCode
from app.security.grants import AuthorizationContext, new_grant_id, utcnow
from app.security.policy import authenticate
from app.security.scopes import ScopeSet, parse_scopes
from app.security.service import Security
from app.security.tokens import (
    TokenClaims,
    issue_access_token,
    issue_id_token,
    verify_access_token,
)
from app.security.users import User

JsonDict = dict[str, Any]
BACKEND_TOKEN_LIFETIME = 300
_FORM_LIMIT = 4096  # longest accepted value of one authorization parameter


# -- client authentication -------------------------------------------------------------------


@dataclass(frozen=True)
class AuthenticatedClient:
    client: Client
    method: str  # "none", "client_secret_basic" or "private_key_jwt"


async def authenticate_client(
    security: Security, form: Mapping[str, str], authorization: str | None
) -> AuthenticatedClient:
    """Who is calling the token/introspect/revoke endpoint; `invalid_client` if unproven."""
    assertion = form.get("client_assertion")
    basic = _basic_credentials(authorization)
    if assertion is not None:
        if basic is not None:
            raise _client_error("use one client authentication method, not several")
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            # A malformed request (400), as the SMART Backend Services test kit expects; the
            # client has not yet failed to prove who it is.
            raise OAuthError(
                "invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )
        client_id = peek_client_id(assertion)
        client = await _known_client(security, client_id, form)
        if client.client_type != "confidential-asymmetric":
            raise _client_error("this client does not authenticate with private_key_jwt")
        await _verify_assertion(security, client, assertion)
        return AuthenticatedClient(client, "private_key_jwt")
    if basic is not None:
        client_id, secret = basic
        client = await _known_client(security, client_id, form)
        if client.client_type != "confidential-symmetric" or not client.check_secret(secret):
            raise _client_error("client authentication failed", reason="bad_secret")
        return AuthenticatedClient(client, "client_secret_basic")
    if "client_secret" in form:
        raise _client_error("send the client secret with HTTP Basic (client_secret_basic)")
    client = await _known_client(security, form.get("client_id", ""), form)
    if client.confidential:
        raise _client_error("this client must authenticate", reason="auth_required")
    return AuthenticatedClient(client, "none")


async def _known_client(security: Security, client_id: str, form: Mapping[str, str]) -> Client:
    if not client_id:
        raise _client_error("client_id is required", reason="missing_client")
    if form.get("client_id") not in (None, client_id):
        raise _client_error("client_id does not match the authenticated client")
    client = await security.clients.get(client_id)
    if client is None:
        raise _client_error("unknown client", reason="unknown_client")
    return client


async def _verify_assertion(security: Security, client: Client, assertion: str) -> None:
    async def verify(jwks: Mapping[str, Any]) -> None:
        await verify_client_assertion(
            assertion,
            client_id=client.client_id,
            client_jwks=jwks,
            token_url=security.config.token_url,
            replay_cache=security.replay_cache,
            registered_jwks_uri=client.jwks_uri,
        )

    try:
        await verify(await security.clients.jwks_for(client))
    except OAuthError as exc:
        if exc.reason != "unknown_key" or not client.jwks_uri:
            raise
        # The client may have rotated its keys since we cached its JWK Set.
        await verify(await security.clients.jwks_for(client, refresh=True))


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError as exc:  # not Base64 (a character outside ASCII too), or not UTF-8
        raise _client_error("malformed HTTP Basic credentials") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _client_error("malformed HTTP Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _client_error(description: str, *, reason: str = "client_auth") -> OAuthError:
    return OAuthError("invalid_client", description, reason=reason)


# -- authorization endpoint ------------------------------------------------------------------


class PageError(Exception):
    """An authorization error that must NOT redirect: the client or redirect URI is unknown."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RedirectError(Exception):
    """An authorization error reported to the client by redirecting to its redirect URI."""

    def __init__(self, redirect_uri: str, error: OAuthError, state: str | None) -> None:
        super().__init__(error.description)
        self.error = error
        params = {"error": error.error, "error_description": error.description}
        if state is not None:
            params["state"] = state
        self.location = add_query(redirect_uri, params)


def add_query(uri: str, params: Mapping[str, str]) -> str:
    parts = urlsplit(uri)
    query = "&".join(p for p in (parts.query, urlencode(dict(params))) if p)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


async def validate_authorization_request(security: Security, params: Mapping[str, str]) -> JsonDict:
    """Check an authorization request; returns what to keep in the login session.

    Raises `PageError` (show, never redirect) for an unknown client or redirect URI, and
    `RedirectError` for every other problem, as RFC 6749 §4.1.2.1 requires.
    """
    for name, value in params.items():
        if len(value) > _FORM_LIMIT:
            raise PageError(f"parameter {name[:40]} is too long")
    client = await security.clients.get(params.get("client_id", ""))
    if client is None:
        raise PageError("Unknown client_id: this application is not registered here.")
    redirect_uri = params.get("redirect_uri")
    if redirect_uri is None and len(client.redirect_uris) == 1:
        redirect_uri = client.redirect_uris[0]
    if redirect_uri is None or redirect_uri not in client.redirect_uris:
        raise PageError("The redirect_uri is not registered for this application.")
    state = params.get("state")

    def fail(error: OAuthErrorCode, description: str, reason: str) -> RedirectError:
        return RedirectError(redirect_uri, OAuthError(error, description, reason=reason), state)

    if params.get("response_type") != "code":
        raise fail("unsupported_response_type", "response_type must be code", "response_type")
    if not state:
        raise fail("invalid_request", "state is required", "missing_state")
    if not security.config.is_audience(params.get("aud")):
        raise fail(
            "invalid_request",
            f"aud must be this FHIR server's base URL {security.config.base}",
            "wrong_aud",
        )
    try:
        pkce.check_challenge(params.get("code_challenge"), params.get("code_challenge_method"))
    except OAuthError as exc:
        raise RedirectError(redirect_uri, exc, state) from exc

    requested = parse_scopes(params.get("scope"))
    granted = _user_facing(requested.intersect(parse_scopes(client.scope)))
    if not granted.grants and not granted.other:
        raise fail("invalid_scope", "none of the requested scopes may be granted", "no_scope")

    launch_patient = launch_encounter = None
    if granted.launch:
        launch_id = params.get("launch")
        launch = await security.launches.get(launch_id) if launch_id else None
        if launch is None:
            raise fail("invalid_request", "the launch parameter is missing or unknown", "launch")
        launch_patient, launch_encounter = launch.get("patient"), launch.get("encounter")

    needs_patient = "patient" in granted.launch_contexts or "patient" in granted.context
    return {
        "client_id": client.client_id,
        "client_name": client.name or client.client_id,
        "redirect_uri": redirect_uri,
        "scope": str(granted),
        "state": state,
        "code_challenge": params["code_challenge"],
        "code_challenge_method": params["code_challenge_method"],
        "nonce": params.get("nonce"),
        "patient": launch_patient,
        "encounter": launch_encounter,
        "needs_patient": needs_patient and launch_patient is None,
    }


def _user_facing(scopes: ScopeSet) -> ScopeSet:
    """`system/` scopes are for Backend Services; a user's authorization never grants them."""
    return ScopeSet(
        grants=tuple(g for g in scopes.grants if g.level != "system"),
        other=scopes.other,
        ignored=scopes.ignored,
    )


async def issue_code(
    security: Security, request: Mapping[str, Any], user: User, patient: str | None
) -> str:
    """The redirect (with `code` and `state`) that ends a successful authorization."""
    context = AuthorizationContext(
        client_id=request["client_id"],
        scope=request["scope"],
        grant_id=new_grant_id(),
        username=user.username,
        fhir_user=user.fhir_user,
        patient=patient or request.get("patient"),
        encounter=request.get("encounter"),
        nonce=request.get("nonce"),
        auth_time=int(time.time()),
    )
    code = await security.codes.issue(
        context,
        redirect_uri=request["redirect_uri"],
        code_challenge=request["code_challenge"],
        code_challenge_method=request["code_challenge_method"],
    )
    return add_query(request["redirect_uri"], {"code": code, "state": request["state"]})


def denied_redirect(request: Mapping[str, Any]) -> str:
    return add_query(
        request["redirect_uri"],
        {
            "error": "access_denied",
            "error_description": "the user denied the request",
            "state": request["state"],
        },
    )


# -- token endpoint --------------------------------------------------------------------------


async def token(security: Security, form: Mapping[str, str], authorization: str | None) -> JsonDict:
    """The token endpoint (RFC 6749 §3.2) for the three grant types SMART uses."""
    grant_type = form.get("grant_type")
    if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
        raise OAuthError(
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
            reason="grant_type",
        )
    caller = await authenticate_client(security, form, authorization)
    # Sign with the newest key even if another instance rotated it (cheap: rate-limited).
    await security.keys.reload_if_stale()
    if grant_type == "authorization_code":
        return await _redeem_code(security, caller.client, form)
    if grant_type == "refresh_token":
        return await _refresh(security, caller.client, form)
    return await _client_credentials(security, caller, form)


async def _redeem_code(security: Security, client: Client, form: Mapping[str, str]) -> JsonDict:
    code = form.get("code")
    if not code:
        raise OAuthError("invalid_request", "code is required", reason="missing_code")
    record, replayed = await security.codes.redeem(code)
    if replayed is not None:
        # A code used twice has leaked: revoke everything issued with it (RFC 6749 §4.1.2).
        await _revoke_grant(security, replayed["grant_id"])
        raise OAuthError("invalid_grant", "the code was already used", reason="code_reused")
    if record is None:
        raise OAuthError("invalid_grant", "the code is unknown or expired", reason="bad_code")
    if record["client_id"] != client.client_id:
        raise OAuthError("invalid_grant", "the code was issued to another client", reason="client")
    if form.get("redirect_uri") != record["redirect_uri"]:
        raise OAuthError(
            "invalid_grant", "redirect_uri differs from the authorization request", reason="uri"
        )
    pkce.verify(
        form.get("code_verifier"), record["code_challenge"], record["code_challenge_method"]
    )
    context = AuthorizationContext.from_doc(record)
    return await _token_response(security, context, context.scope, with_id_token=True)


async def _refresh(security: Security, client: Client, form: Mapping[str, str]) -> JsonDict:
    presented = form.get("refresh_token")
    if not presented:
        raise OAuthError("invalid_request", "refresh_token is required", reason="missing_refresh")
    current = await security.refresh_tokens.find(presented)
    if current is None or current["client_id"] != client.client_id:
        # Another client's token is answered like an unknown one: nothing to learn from it.
        raise OAuthError("invalid_grant", "the refresh token is not valid", reason="bad_refresh")
    record, reused = await security.refresh_tokens.rotate(presented)
    if reused is not None:
        # A rotated token came back: either the app or a thief holds a copy; end the grant.
        await _revoke_grant(security, reused["grant_id"])
        raise OAuthError(
            "invalid_grant", "the refresh token was already used", reason="refresh_reused"
        )
    if record is None:
        raise OAuthError("invalid_grant", "the refresh token is not valid", reason="bad_refresh")
    context = AuthorizationContext.from_doc(record)
    scope = context.scope
    if form.get("scope"):
        narrowed = parse_scopes(form["scope"]).intersect(parse_scopes(context.scope))
        if not narrowed.grants and not narrowed.other:
            raise OAuthError(
                "invalid_scope", "the requested scope exceeds the original grant", reason="scope"
            )
        scope = str(narrowed)
    return await _token_response(
        security, context, scope, with_id_token=False, refresh_lifetime=record.get("lifetime")
    )


async def _client_credentials(
    security: Security, caller: AuthenticatedClient, form: Mapping[str, str]
) -> JsonDict:
    if not caller.client.confidential:
        raise OAuthError(
            "unauthorized_client",
            "client_credentials needs a confidential client",
            reason="public_client",
        )
    requested = parse_scopes(form.get("scope"))
    granted = requested.intersect(parse_scopes(caller.client.scope))
    system = ScopeSet(grants=tuple(g for g in granted.grants if g.level == "system"))
    if not system.grants:
        raise OAuthError(
            "invalid_scope",
            "client_credentials grants only system/ scopes allowed for this client",
            reason="no_scope",
        )
    config = security.config
    issued = issue_access_token(
        security.keys.ring,
        issuer=config.issuer,
        audience=config.base,
        client_id=caller.client.client_id,
        scope=str(system),
        # SMART Backend Services: a backend token should live no longer than five minutes.
        lifetime=min(config.access_token_lifetime, BACKEND_TOKEN_LIFETIME),
    )
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_at - int(time.time()),
        "scope": str(system),
    }


async def _token_response(
    security: Security,
    context: AuthorizationContext,
    scope: str,
    *,
    with_id_token: bool,
    refresh_lifetime: int | None = None,
) -> JsonDict:
    config = security.config
    scopes = parse_scopes(scope)
    issued = issue_access_token(
        security.keys.ring,
        issuer=config.issuer,
        audience=config.base,
        client_id=context.client_id,
        scope=scope,
        subject=context.username,
        # Always carried, scope or not: policy.py limits a patient-user's user/ scopes by it.
        fhir_user=context.fhir_user,
        patient=context.patient,
        encounter=context.encounter,
        lifetime=config.access_token_lifetime,
        extra_claims={"grant_id": context.grant_id},
    )
    body: JsonDict = {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": issued.expires_at - int(time.time()),
        "scope": scope,
    }
    if context.patient:
        body["patient"] = context.patient
        body["need_patient_banner"] = True
    if context.encounter:
        body["encounter"] = context.encounter
    if with_id_token and scopes.openid and context.username:
        body["id_token"] = issue_id_token(
            security.keys.id_ring,
            issuer=config.issuer,
            client_id=context.client_id,
            subject=context.username,
            fhir_user=_absolute(config.base, context.fhir_user) if scopes.fhir_user else None,
            nonce=context.nonce,
            auth_time=context.auth_time,
        )
    original = parse_scopes(context.scope)
    if original.wants_refresh_token:
        lifetime = refresh_lifetime or (
            config.offline_refresh_lifetime
            if original.offline_access
            else config.online_refresh_lifetime
        )
        body["refresh_token"], _ = await security.refresh_tokens.issue(context, lifetime=lifetime)
    return body


def _absolute(base: str, reference: str | None) -> str | None:
    if reference is None or "://" in reference:
        return reference
    return f"{base}/{reference}"


async def _revoke_grant(security: Security, grant_id: str) -> None:
    await security.refresh_tokens.revoke_grant(grant_id)
    until = utcnow() + timedelta(
        seconds=max(security.config.offline_refresh_lifetime, security.config.access_token_lifetime)
    )
    await security.revocations.revoke_grant(grant_id, until)


# -- introspection and revocation ------------------------------------------------------------


async def introspect(
    security: Security, form: Mapping[str, str], authorization: str | None
) -> JsonDict:
    """RFC 7662. The caller is a client (any kind, by its usual authentication) or a holder
    of a valid access token (a resource server). Public clients see only their own tokens.
    """
    own_client: str | None = None
    if authorization and authorization.strip().lower().startswith("bearer "):
        # Any valid access token may introspect: its holder acts as a resource server.
        await authenticate(authorization, security)
    else:
        caller = await authenticate_client(security, form, authorization)
        if not caller.client.confidential:
            own_client = caller.client.client_id
    presented = form.get("token")
    if not presented:
        raise OAuthError("invalid_request", "token is required", reason="missing_token")
    answer = await _introspect_access_token(security, presented)
    if answer is None:
        answer = await _introspect_refresh_token(security, presented)
    if answer is None or (own_client is not None and answer.get("client_id") != own_client):
        return {"active": False}
    return answer


async def _own_access_token(security: Security, presented: str) -> TokenClaims | None:
    """The claims of a valid access token of this server; None if it is not one."""
    config = security.config
    try:
        return verify_access_token(
            presented, security.keys.ring, issuer=config.issuer, audience=config.base
        )
    except OAuthError as exc:
        # Another instance may have rotated the signing key since we loaded the ring; without
        # the reload its fresh tokens would introspect inactive and revocations be lost.
        if exc.reason != "unknown_kid" or not await security.keys.reload_if_stale():
            return None
    try:
        return verify_access_token(
            presented, security.keys.ring, issuer=config.issuer, audience=config.base
        )
    except OAuthError:
        return None


async def _introspect_access_token(security: Security, presented: str) -> JsonDict | None:
    config = security.config
    claims = await _own_access_token(security, presented)
    if claims is None:
        return None
    grant_id = claims.extra.get("grant_id")
    if await security.revocations.is_revoked(
        claims.jti, grant_id if isinstance(grant_id, str) else None
    ):
        return None
    answer: JsonDict = {
        "active": True,
        "token_type": "Bearer",
        "scope": claims.scope,
        "client_id": claims.client_id,
        "sub": claims.subject,
        "iss": claims.issuer,
        "aud": claims.audience[0] if len(claims.audience) == 1 else list(claims.audience),
        "exp": claims.expires_at,
        "iat": claims.issued_at,
        "jti": claims.jti,
    }
    if claims.subject and claims.subject != claims.client_id:
        answer["username"] = claims.subject
    for name, value in (
        ("patient", claims.patient),
        ("encounter", claims.encounter),
        ("fhirUser", _absolute(config.base, claims.fhir_user)),
    ):
        if value is not None:
            answer[name] = value
    return answer


async def _introspect_refresh_token(security: Security, presented: str) -> JsonDict | None:
    record = await security.refresh_tokens.find_active(presented)
    if record is None:
        return None
    if await security.revocations.is_revoked(None, record["grant_id"]):
        return None
    answer: JsonDict = {
        "active": True,
        "token_type": "refresh_token",
        "scope": record["scope"],
        "client_id": record["client_id"],
        "exp": int(record["expires_at"].timestamp()),
        "iss": security.config.issuer,
    }
    if record.get("username"):
        answer["sub"] = answer["username"] = record["username"]
    if record.get("patient"):
        answer["patient"] = record["patient"]
    return answer


async def revoke(security: Security, form: Mapping[str, str], authorization: str | None) -> None:
    """RFC 7009: revoke an access or refresh token of the calling client.

    Unknown tokens and other clients' tokens are ignored silently (§2.2): the answer must
    not tell the caller whether a token exists.
    """
    caller = await authenticate_client(security, form, authorization)
    presented = form.get("token")
    if not presented:
        raise OAuthError("invalid_request", "token is required", reason="missing_token")
    claims = await _own_access_token(security, presented)
    if claims is not None:
        if claims.client_id == caller.client.client_id and claims.jti:
            await security.revocations.revoke_token(claims.jti, claims.expires_at)
        return
    record = await security.refresh_tokens.find(presented)
    if record is not None and record["client_id"] == caller.client.client_id:
        # Revoking a refresh token ends the grant, with its access tokens (RFC 7009 §2.1).
        await _revoke_grant(security, record["grant_id"])

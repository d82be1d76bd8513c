"""Access tokens, id tokens and refresh tokens.

Access tokens are JWTs in the RFC 9068 profile (`typ: at+jwt`), signed with the key ring's
current key and checked against every key of the ring, so a rotation does not log anyone
out. Id tokens are signed with RS256 by a ring of their own (see keys.py), which access-token
verification never consults; the `typ` check is the second guard, so that an id token
(audience = client_id) can never be replayed as an access token where audiences collide.

Claims carried (RFC 9068 + SMART): iss, aud, sub, client_id, scope, jti, iat, nbf, exp, and
the launch context fhirUser, patient, encounter.

Tokens from an external identity provider are checked with `verify_external_token`, given
its issuer and its JWKS (fetching and caching the JWKS is the caller's job).

Refresh tokens (and authorization codes) are opaque random strings; the store keeps only
`hash_opaque_token(token)`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError

from app.security.errors import OAuthError
from app.security.keys import (
    AsymmetricKey,
    KeyRing,
    MalformedJWT,
    candidate_keys,
    read_unverified,
)
from app.security.scopes import ScopeSet, parse_scopes

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  # a JOSE media type, not a secret
DEFAULT_ACCESS_TOKEN_LIFETIME = 3600  # seconds
DEFAULT_ID_TOKEN_LIFETIME = 3600
DEFAULT_LEEWAY = 30  # seconds of clock skew tolerated on exp/nbf/iat
OWN_ALGORITHMS = ("RS384", "ES384")
# What identity providers commonly sign with; HMAC and "none" are never accepted.
EXTERNAL_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")

_REGISTERED = frozenset(
    {"iss", "aud", "sub", "client_id", "scope", "jti", "iat", "nbf", "exp", "fhirUser"}
    | {"patient", "encounter", "azp", "scp"}
)


class IssuedToken(NamedTuple):
    token: str
    jti: str
    expires_at: int  # epoch seconds


@dataclass(frozen=True)
class TokenClaims:
    """The verified content of an access token."""

    issuer: str
    audience: tuple[str, ...]
    subject: str | None
    client_id: str | None
    scope: str
    jti: str | None
    issued_at: int | None
    expires_at: int
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # every other claim

    @property
    def scopes(self) -> ScopeSet:
        return parse_scopes(self.scope)


# -- issuing ---------------------------------------------------------------------------------


def issue_access_token(
    keys: KeyRing,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    scope: str,
    subject: str | None = None,
    fhir_user: str | None = None,
    patient: str | None = None,
    encounter: str | None = None,
    lifetime: int = DEFAULT_ACCESS_TOKEN_LIFETIME,
    now: int | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> IssuedToken:
    """Sign an access token with the current key.

    `audience` is the FHIR base URL the token is for. `subject` defaults to `client_id`, as
    RFC 9068 §2.2 asks for tokens issued to a client on its own behalf (client_credentials).
    """
    issued_at = _now(now)
    jti = new_token_id()
    expires_at = issued_at + lifetime
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update(
        {
            "iss": issuer,
            "aud": audience,
            "sub": subject or client_id,
            "client_id": client_id,
            "scope": scope,
            "jti": jti,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
        }
    )
    for name, value in (("fhirUser", fhir_user), ("patient", patient), ("encounter", encounter)):
        if value is not None:
            claims[name] = value
    return IssuedToken(_sign(keys, claims, ACCESS_TOKEN_TYPE), jti, expires_at)


def issue_id_token(
    keys: KeyRing,
    *,
    issuer: str,
    client_id: str,
    subject: str,
    fhir_user: str | None = None,
    nonce: str | None = None,
    auth_time: int | None = None,
    lifetime: int = DEFAULT_ID_TOKEN_LIFETIME,
    now: int | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """An OpenID Connect id token (audience = the client) for `openid` / `fhirUser` scopes.

    `keys` is the id-token ring (`KeyStore.id_ring`, RS256), not the access-token ring.

    `fhir_user` is the URL of the user's FHIR resource (Patient, Practitioner,
    PractitionerRole, RelatedPerson or Person), absolute or relative to the FHIR base.
    `nonce` must be the one from the authorization request, when it had one.
    """
    issued_at = _now(now)
    claims: dict[str, Any] = dict(extra_claims or {})
    claims.update(
        {
            "iss": issuer,
            "sub": subject,
            "aud": client_id,
            "iat": issued_at,
            "exp": issued_at + lifetime,
        }
    )
    if fhir_user is not None:
        claims["fhirUser"] = fhir_user
    if nonce is not None:
        claims["nonce"] = nonce
    if auth_time is not None:
        claims["auth_time"] = auth_time
    return _sign(keys, claims, "JWT")


def _sign(keys: KeyRing, claims: dict[str, Any], typ: str) -> str:
    signing = keys.current
    header = {"alg": signing.alg, "kid": signing.kid, "typ": typ}
    return jwt.encode(header, claims, signing.key, algorithms=[signing.alg])


# -- verifying -------------------------------------------------------------------------------


def verify_access_token(
    token: str,
    keys: KeyRing,
    *,
    issuer: str,
    audience: str,
    now: int | None = None,
    leeway: int = DEFAULT_LEEWAY,
) -> TokenClaims:
    """Verify one of our own access tokens; raise `OAuthError("invalid_token")` if not valid.

    Checks, in order: JWS syntax, `typ` at+jwt, algorithm, `kid` known to the ring,
    signature, `exp`, `nbf`, `iss`, `aud`.
    """
    header, _ = _read(token)
    if str(header.get("typ", "")).lower() not in (ACCESS_TOKEN_TYPE, "application/at+jwt"):
        raise _invalid("the token is not an access token (typ is not at+jwt)", "wrong_typ")
    alg = _allowed_alg(header, OWN_ALGORITHMS)
    kid = header.get("kid")
    signing_key = keys.find(kid) if isinstance(kid, str) else None
    if signing_key is None:
        raise _invalid("the token was signed with an unknown key", "unknown_kid")
    if signing_key.alg != alg:
        raise _invalid(f"key {kid} does not sign with {alg}", "wrong_alg")
    claims = _verify_signature(token, signing_key.key, alg)
    return _check_claims(claims, issuer=issuer, audience=audience, now=_now(now), leeway=leeway)


def verify_external_token(
    token: str,
    *,
    jwks: Mapping[str, Any],
    issuer: str,
    audience: str,
    algorithms: Collection[str] = EXTERNAL_ALGORITHMS,
    now: int | None = None,
    leeway: int = DEFAULT_LEEWAY,
) -> TokenClaims:
    """Verify an access token from an external identity provider, given its JWK Set.

    Scopes are read from `scope` (space-separated) or `scp` (string or list, as some
    providers send); the client from `client_id` or `azp`.
    """
    header, _ = _read(token)
    alg = _allowed_alg(header, tuple(a for a in algorithms if a in EXTERNAL_ALGORITHMS))
    kid = header.get("kid")
    keys = candidate_keys(jwks, kid if isinstance(kid, str) else None, alg)
    if len(keys) != 1:
        if not keys:
            raise _invalid("no key of the issuer's JWKS matches the token's kid", "unknown_kid")
        raise _invalid("several keys of the issuer's JWKS match the token", "ambiguous_kid")
    claims = _verify_signature(token, keys[0], alg)
    return _check_claims(claims, issuer=issuer, audience=audience, now=_now(now), leeway=leeway)


def _read(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return read_unverified(token)
    except MalformedJWT as exc:
        raise _invalid(f"malformed token: {exc}", "malformed") from exc


def _allowed_alg(header: Mapping[str, Any], allowed: Sequence[str]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed:
        raise _invalid(f"token algorithm {alg!r} is not accepted", "wrong_alg")
    return alg


def _verify_signature(token: str, key: AsymmetricKey, alg: str) -> dict[str, Any]:
    try:
        return dict(jwt.decode(token, key, algorithms=[alg]).claims)
    except BadSignatureError as exc:
        raise _invalid("the token signature is not valid", "bad_signature") from exc
    except JoseError as exc:
        raise _invalid(f"the token cannot be verified: {exc}", "bad_signature") from exc


def _check_claims(
    claims: dict[str, Any], *, issuer: str, audience: str, now: int, leeway: int
) -> TokenClaims:
    exp = claims.get("exp")
    if not _is_time(exp):
        raise _invalid("the token has no valid exp claim", "missing_claim")
    if exp <= now - leeway:
        raise _invalid("the token has expired", "expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_time(nbf) or nbf > now + leeway):
        raise _invalid("the token is not valid yet (nbf)", "not_yet_valid")
    if claims.get("iss") != issuer:
        raise _invalid("the token was issued by another issuer", "wrong_issuer")
    audiences = _audiences(claims.get("aud"))
    if audience not in audiences:
        raise _invalid("the token is not meant for this server (aud)", "wrong_audience")
    iat = claims.get("iat")
    return TokenClaims(
        issuer=issuer,
        audience=audiences,
        subject=_str_or_none(claims.get("sub")),
        client_id=_str_or_none(claims.get("client_id")) or _str_or_none(claims.get("azp")),
        scope=_scope_text(claims),
        jti=_str_or_none(claims.get("jti")),
        issued_at=int(iat) if _is_time(iat) else None,
        expires_at=int(exp),
        fhir_user=_str_or_none(claims.get("fhirUser")),
        patient=_str_or_none(claims.get("patient")),
        encounter=_str_or_none(claims.get("encounter")),
        extra={k: v for k, v in claims.items() if k not in _REGISTERED},
    )


def _audiences(aud: object) -> tuple[str, ...]:
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(a for a in aud if isinstance(a, str))
    return ()


def _scope_text(claims: Mapping[str, Any]) -> str:
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, list):
        return " ".join(s for s in scope if isinstance(s, str))
    return scope if isinstance(scope, str) else ""


def _is_time(value: object) -> TypeGuard[int | float]:
    # bool is an int subclass; `true` is not a timestamp.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _invalid(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_token", description, reason=reason)


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


# -- opaque tokens ---------------------------------------------------------------------------


def new_token_id() -> str:
    """A unique `jti`: 128 random bits."""
    return secrets.token_urlsafe(16)


def new_refresh_token() -> str:
    """A refresh token: 256 random bits, URL-safe. Store only `hash_opaque_token` of it."""
    return secrets.token_urlsafe(32)


def new_authorization_code() -> str:
    """An authorization code: 256 random bits. Store only `hash_opaque_token` of it."""
    return secrets.token_urlsafe(32)


def hash_opaque_token(token: str) -> str:
    """The value to store and look up instead of a refresh token or authorization code.

    A plain SHA-256 is enough here, unlike for passwords: the token has 256 bits of entropy,
    so there is nothing to brute-force, and an unsalted hash lets the store find the row by
    an indexed equality lookup. A leaked table then yields no usable token.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()

"""Client authentication with a signed JWT (`private_key_jwt`), as SMART Backend Services use.

The token request carries `client_assertion=<JWT>` and
`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
The checks follow SMART App Launch 2.2 (client-confidential-asymmetric.html) and
RFC 7523 §3:

* header: `alg` is RS384 or ES384 (never `none` or an HMAC); `kid` is present; `typ`, if
  present, is `JWT`; a `jku`, if present, must equal the client's registered JWKS URL;
* key: exactly one key of the client's JWK Set has that `kid` and a `kty` fitting `alg`;
* signature valid with that key;
* claims: `iss` == `sub` == client_id; `aud` is the token URL; `exp` present, not past and at
  most five minutes ahead; `nbf`, if present, not in the future; `jti` present and not seen
  before for this client while the assertion could still be used.

The spec requires every failure to be answered with `invalid_client`; each raises
`OAuthError("invalid_client", description, reason=...)` with its own `reason`.

Typical token-endpoint use::

    client_id = peek_client_id(form["client_assertion"])   # unverified, to find the client
    client = await clients.get(client_id)                   # 401 invalid_client if unknown
    jwks = await fetch_jwks(client.jwks_uri)                 # caller caches per Cache-Control
    assertion = await verify_client_assertion(
        form["client_assertion"], client_id=client.id, client_jwks=jwks,
        token_url=settings.token_url, replay_cache=replay_cache,
        registered_jwks_uri=client.jwks_uri,
    )
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from joserfc import jwt
from joserfc.errors import BadSignatureError, JoseError

from app.security.errors import OAuthError
from app.security.keys import MalformedJWT, candidate_keys, read_unverified

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_LIFETIME = 300  # seconds: "no more than five minutes in the future"
DEFAULT_LEEWAY = 30  # seconds of clock skew tolerated


class ReplayCache(Protocol):
    """Remembers assertion `jti`s until their assertion expires.

    `seen` records the pair and answers whether it was already recorded, in one atomic step,
    so two concurrent requests with the same assertion cannot both pass. A database-backed
    implementation can use a unique index on (client_id, jti) with a TTL index on
    `expires_at`, treating a duplicate-key error as "seen".
    """

    async def seen(self, client_id: str, jti: str, expires_at: int) -> bool: ...


class InMemoryReplayCache:
    """A per-process replay cache. Enough for one instance; several need a shared store."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._expiry: dict[tuple[str, str], int] = {}
        self._clock = clock
        self._next_purge = 0.0

    async def seen(self, client_id: str, jti: str, expires_at: int) -> bool:
        # No await between the lookup and the insert, so the check-and-record is atomic
        # within the event loop without a lock.
        now = self._clock()
        self._purge(now)
        key = (client_id, jti)
        previous = self._expiry.get(key)
        if previous is not None and previous >= now:
            return True
        # Keep the jti a little past exp: verification tolerates that much clock skew.
        self._expiry[key] = int(expires_at) + DEFAULT_LEEWAY
        return False

    @property
    def size(self) -> int:
        # Not __len__: an empty cache must not be falsy (`cache or default` would swap it).
        return len(self._expiry)

    def _purge(self, now: float) -> None:
        # Entries live at most ~5.5 minutes, so purging every few seconds bounds memory
        # by the request rate without scanning the dict on every call.
        if now < self._next_purge:
            return
        self._expiry = {k: exp for k, exp in self._expiry.items() if exp >= now}
        self._next_purge = now + 5


@dataclass(frozen=True)
class ClientAssertion:
    """A verified client assertion."""

    client_id: str
    jti: str
    expires_at: int
    kid: str
    alg: str
    claims: Mapping[str, Any]


def peek_client_id(assertion: str) -> str:
    """The `iss` of an assertion, UNVERIFIED: only to look up which client it claims to be."""
    try:
        _, claims = read_unverified(assertion)
    except MalformedJWT as exc:
        raise _fail(f"client_assertion is malformed: {exc}", "malformed") from exc
    iss = claims.get("iss")
    if not isinstance(iss, str) or not iss:
        raise _fail("client_assertion has no iss claim", "missing_claim")
    return iss


async def verify_client_assertion(
    assertion: str,
    *,
    client_id: str,
    client_jwks: Mapping[str, Any],
    token_url: str,
    replay_cache: ReplayCache,
    registered_jwks_uri: str | None = None,
    now: int | None = None,
    leeway: int = DEFAULT_LEEWAY,
) -> ClientAssertion:
    """Verify a `client_assertion` for the registered client `client_id`.

    `client_jwks` is the client's JWK Set (registered inline, or fetched by the caller from
    its `jwks_uri`). Raises `OAuthError("invalid_client")` with a distinct `reason`:
    malformed, unsupported_alg, missing_kid, wrong_typ, jku_not_registered, unknown_key,
    ambiguous_key, bad_signature, missing_claim, iss_sub_mismatch, wrong_client,
    wrong_audience, expired, exp_too_far, not_yet_valid, replayed_jti.
    """
    current = int(time.time()) if now is None else now
    try:
        header, _ = read_unverified(assertion)
    except MalformedJWT as exc:
        raise _fail(f"client_assertion is malformed: {exc}", "malformed") from exc

    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise _fail(
            f"client_assertion alg {alg!r} is not accepted; use RS384 or ES384", "unsupported_alg"
        )
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _fail("client_assertion header has no kid", "missing_kid")
    typ = header.get("typ")
    if typ is not None and str(typ).upper() != "JWT":
        raise _fail(f"client_assertion typ must be JWT, got {typ!r}", "wrong_typ")
    jku = header.get("jku")
    if jku is not None and jku != registered_jwks_uri:
        raise _fail(
            "client_assertion jku is not the client's registered JWKS URL", "jku_not_registered"
        )

    keys = candidate_keys(client_jwks, kid, alg)
    if not keys:
        raise _fail(f"no {alg} key with kid {kid!r} in the client's JWK Set", "unknown_key")
    if len(keys) > 1:
        raise _fail(f"several keys with kid {kid!r} in the client's JWK Set", "ambiguous_key")
    try:
        claims = dict(jwt.decode(assertion, keys[0], algorithms=[alg]).claims)
    except BadSignatureError as exc:
        raise _fail("client_assertion signature is not valid", "bad_signature") from exc
    except JoseError as exc:
        raise _fail(f"client_assertion cannot be verified: {exc}", "bad_signature") from exc

    for name in ("iss", "sub", "aud", "exp", "jti"):
        if claims.get(name) in (None, ""):
            raise _fail(f"client_assertion has no {name} claim", "missing_claim")
    if claims["iss"] != claims["sub"]:
        raise _fail(
            "client_assertion iss and sub differ; both must be the client_id", "iss_sub_mismatch"
        )
    if claims["iss"] != client_id:
        raise _fail("client_assertion iss is not the authenticating client_id", "wrong_client")
    aud = claims["aud"]
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if token_url not in audiences:
        raise _fail(f"client_assertion aud must be the token URL {token_url}", "wrong_audience")

    exp = claims["exp"]
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _fail("client_assertion exp is not a number", "missing_claim")
    if exp <= current - leeway:
        raise _fail("client_assertion has expired", "expired")
    if exp > current + MAX_ASSERTION_LIFETIME + leeway:
        raise _fail("client_assertion exp is more than five minutes in the future", "exp_too_far")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and nbf > current + leeway:
        raise _fail("client_assertion is not valid yet (nbf)", "not_yet_valid")

    jti = claims["jti"]
    if not isinstance(jti, str):
        raise _fail("client_assertion jti is not a string", "missing_claim")
    # Last, so that assertions failing any other check never occupy the cache.
    if await replay_cache.seen(client_id, jti, int(exp)):
        raise _fail("client_assertion jti was already used", "replayed_jti")
    return ClientAssertion(
        client_id=client_id, jti=jti, expires_at=int(exp), kid=kid, alg=alg, claims=claims
    )


def _fail(description: str, reason: str) -> OAuthError:
    return OAuthError("invalid_client", description, reason=reason)

"""Everything the security layer needs at run time, built once per app instance.

    security = await Security.open(database.db, SecurityConfig(fhir_base=settings.fhir_base))
    app.state.security = security            # the SMART router and `authenticate` read it

All URLs derive from the FHIR base: the OAuth endpoints live at `<root>/oauth/...`, where
`<root>` is the FHIR base without its trailing `/fhir` (override with `auth_base`).
The issuer of tokens is the FHIR base itself, so `<fhir base>/.well-known/openid-configuration`
is the OpenID discovery document.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from app.security import grants
from app.security.clients import ClientRegistry
from app.security.errors import OAuthError
from app.security.grants import (
    CodeStore,
    LaunchStore,
    MongoReplayCache,
    RefreshTokenStore,
    RevocationList,
    SessionStore,
)
from app.security.jwks import MIN_REFRESH_SECONDS, JwksCache, JwksError
from app.security.keystore import KeyStore
from app.security.users import UserStore

DAY = 86_400


@dataclass(frozen=True)
class ExternalIssuer:
    """An external identity provider whose access tokens Hestia accepts.

    Its tokens are JWTs whose `iss` is `issuer`, signed by a key of the JWK Set at
    `jwks_uri`, carrying SMART scopes in `scope` or `scp` and, as SMART context, `patient`
    and `fhirUser` claims (see policy.py for what they reach). A token naming a `kid` the
    cached JWK Set lacks makes Hestia refetch it (the IdP rotated), at most once every
    `min_refresh_seconds`.
    """

    issuer: str
    jwks_uri: str
    audience: str = ""  # the `aud` its tokens carry for Hestia; default the FHIR base
    min_refresh_seconds: float = MIN_REFRESH_SECONDS


def parse_external_issuers(text: str) -> tuple[ExternalIssuer, ...]:
    """`HESTIA_EXTERNAL_ISSUERS`: a JSON list of objects (or one object) with `issuer`,
    `jwks_uri` and optionally `audience` and `min_refresh_seconds`. Empty: none.

    Raises ValueError naming the problem, so a mistyped setting stops the server at start-up
    rather than silently refusing every token of the IdP.
    """
    if not text.strip():
        return ()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"HESTIA_EXTERNAL_ISSUERS is not JSON: {exc}") from exc
    entries = [data] if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError("HESTIA_EXTERNAL_ISSUERS must be a JSON list of objects")
    issuers: list[ExternalIssuer] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError("each HESTIA_EXTERNAL_ISSUERS entry must be a JSON object")
        unknown = set(entry) - _ISSUER_FIELDS
        if unknown:
            raise ValueError(f"HESTIA_EXTERNAL_ISSUERS: unknown field(s) {sorted(unknown)}")
        issuer, jwks_uri = entry.get("issuer"), entry.get("jwks_uri")
        if not isinstance(issuer, str) or not issuer:
            raise ValueError("each HESTIA_EXTERNAL_ISSUERS entry needs an 'issuer'")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError(f"issuer {issuer}: 'jwks_uri' must be an http(s) URL")
        audience = entry.get("audience", "")
        refresh = entry.get("min_refresh_seconds", MIN_REFRESH_SECONDS)
        if not isinstance(audience, str):
            raise ValueError(f"issuer {issuer}: 'audience' must be a string")
        if not isinstance(refresh, int | float) or isinstance(refresh, bool) or refresh < 0:
            raise ValueError(f"issuer {issuer}: 'min_refresh_seconds' must be a number >= 0")
        issuers.append(ExternalIssuer(issuer, jwks_uri, audience, float(refresh)))
    if len({i.issuer for i in issuers}) != len(issuers):
        raise ValueError("HESTIA_EXTERNAL_ISSUERS names an issuer twice")
    return tuple(issuers)


_ISSUER_FIELDS = frozenset({"issuer", "jwks_uri", "audience", "min_refresh_seconds"})


@dataclass(frozen=True)
class SecurityConfig:
    fhir_base: str
    auth_base: str = ""
    access_token_lifetime: int = 3600
    code_lifetime: int = 120
    session_lifetime: int = 600
    offline_refresh_lifetime: int = 90 * DAY
    # online_access: "valid while the user is online"; approximated by a working day.
    online_refresh_lifetime: int = DAY // 2
    external_issuers: tuple[ExternalIssuer, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if any(i.issuer.rstrip("/") == self.issuer for i in self.external_issuers):
            # Our own tokens would then be checked against the IdP's keys and all fail.
            raise ValueError("an external issuer cannot be this server's own issuer")

    @property
    def base(self) -> str:
        return self.fhir_base.rstrip("/")

    @property
    def oauth_root(self) -> str:
        if self.auth_base:
            return self.auth_base.rstrip("/")
        return self.base.removesuffix("/fhir") + "/oauth"

    @property
    def issuer(self) -> str:
        return self.base

    @property
    def authorize_url(self) -> str:
        return f"{self.oauth_root}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.oauth_root}/token"

    @property
    def introspect_url(self) -> str:
        return f"{self.oauth_root}/introspect"

    @property
    def revoke_url(self) -> str:
        return f"{self.oauth_root}/revoke"

    @property
    def jwks_url(self) -> str:
        return f"{self.oauth_root}/jwks"

    @property
    def secure_cookies(self) -> bool:
        return self.base.startswith("https://")

    def is_audience(self, aud: str | None) -> bool:
        """SMART `aud`: the FHIR base URL, tolerant of a trailing slash only."""
        return aud is not None and aud.rstrip("/") == self.base


@dataclass
class Security:
    config: SecurityConfig
    db: AsyncDatabase[dict[str, Any]]
    keys: KeyStore
    clients: ClientRegistry
    users: UserStore
    sessions: SessionStore
    codes: CodeStore
    refresh_tokens: RefreshTokenStore
    revocations: RevocationList
    launches: LaunchStore
    replay_cache: MongoReplayCache
    _external_jwks: JwksCache = field(default_factory=JwksCache)

    async def external_jwks(self, issuer: ExternalIssuer, *, refresh: bool = False) -> Any:
        """The JWK Set of an external identity provider (cached; see jwks.py)."""
        try:
            return await self._external_jwks.get(
                issuer.jwks_uri, refresh=refresh, min_refresh=issuer.min_refresh_seconds
            )
        except JwksError as exc:
            raise OAuthError(
                "invalid_token", "the token issuer's keys are unavailable", reason="jwks_fetch"
            ) from exc

    @classmethod
    async def open(cls, db: AsyncDatabase[dict[str, Any]], config: SecurityConfig) -> Security:
        await grants.ensure_indexes(db)
        return cls(
            config=config,
            db=db,
            keys=await KeyStore.open(db),
            clients=ClientRegistry(db),
            users=UserStore(db),
            sessions=SessionStore(db, config.session_lifetime),
            codes=CodeStore(db, config.code_lifetime),
            refresh_tokens=RefreshTokenStore(db),
            revocations=RevocationList(db),
            launches=LaunchStore(db),
            replay_cache=MongoReplayCache(db),
        )

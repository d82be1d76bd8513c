"""Everything the security layer needs at run time, built once per app instance.

    security = await Security.open(database.db, SecurityConfig(fhir_base=settings.fhir_base))
    app.state.security = security            # the SMART router and `authenticate` read it

All URLs derive from the FHIR base: the OAuth endpoints live at `<root>/oauth/...`, where
`<root>` is the FHIR base without its trailing `/fhir` (override with `auth_base`).
The issuer of tokens is the FHIR base itself, so `<fhir base>/.well-known/openid-configuration`
is the OpenID discovery document.
"""

from __future__ import annotations

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
from app.security.jwks import JwksCache, JwksError
from app.security.keystore import KeyStore
from app.security.users import UserStore

DAY = 86_400


@dataclass(frozen=True)
class ExternalIssuer:
    """An external identity provider whose access tokens Hestia accepts."""

    issuer: str
    jwks_uri: str
    audience: str = ""  # the `aud` its tokens carry for Hestia; default the FHIR base


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
            return await self._external_jwks.get(issuer.jwks_uri, refresh=refresh)
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

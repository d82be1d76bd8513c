"""The OAuth client registry (collection `oauth_clients`).

Three kinds of client, as SMART App Launch 2.2 names them:

* `public`: a browser or native app; authenticates with nothing but PKCE;
* `confidential-symmetric`: a server-side app with a shared secret (`client_secret_basic`);
  only a hash of the secret is stored, the secret is shown once when the client is added;
* `confidential-asymmetric`: `private_key_jwt` with RS384/ES384, its public keys registered
  inline (`jwks`) or fetched from a `jwks_uri`.

Each client has the redirect URIs it may use (compared exactly: RFC 9700 §4.1.3) and the
scopes it may be granted; a request is narrowed to those.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.security.errors import OAuthError
from app.security.jwks import JwksCache, JwksError
from app.security.keys import candidate_keys
from app.security.scopes import parse_scopes
from app.security.tokens import hash_opaque_token

ClientType = Literal["public", "confidential-symmetric", "confidential-asymmetric"]
CLIENT_TYPES: tuple[ClientType, ...] = get_args(ClientType)
COLLECTION = "oauth_clients"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._~\-]{1,128}")


class ClientConflict(ValueError):
    """A client with that id already exists."""


@dataclass(frozen=True)
class Client:
    client_id: str
    client_type: ClientType
    name: str = ""
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""  # the scopes this client may be granted
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None
    secret_hash: str | None = field(default=None, repr=False)

    @property
    def confidential(self) -> bool:
        return self.client_type != "public"

    def check_secret(self, secret: str) -> bool:
        if self.secret_hash is None:
            return False
        return secrets.compare_digest(hash_opaque_token(secret), self.secret_hash)

    def summary(self) -> dict[str, Any]:
        """What `clients list` shows: everything but the secret hash."""
        out: dict[str, Any] = {
            "client_id": self.client_id,
            "type": self.client_type,
            "name": self.name,
            "redirect_uris": list(self.redirect_uris),
            "scope": self.scope,
        }
        if self.jwks_uri:
            out["jwks_uri"] = self.jwks_uri
        if self.jwks is not None:
            out["jwks_kids"] = [k.get("kid") for k in self.jwks.get("keys", [])]
        return out


class ClientRegistry:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._collection = db[COLLECTION]
        self._jwks = JwksCache()

    async def add(
        self,
        client_id: str,
        client_type: ClientType,
        *,
        scope: str,
        redirect_uris: list[str] | tuple[str, ...] = (),
        name: str = "",
        jwks: Mapping[str, Any] | None = None,
        jwks_uri: str | None = None,
    ) -> tuple[Client, str | None]:
        """Register a client; returns it and, for a symmetric client, its new secret."""
        _validate(client_id, client_type, scope, redirect_uris, jwks, jwks_uri)
        secret = secrets.token_urlsafe(32) if client_type == "confidential-symmetric" else None
        doc: dict[str, Any] = {
            "_id": client_id,
            "type": client_type,
            "name": name,
            "redirect_uris": list(redirect_uris),
            "scope": " ".join(parse_scopes(scope).scopes()),
            "created": datetime.now(UTC),
        }
        if jwks is not None:
            doc["jwks"] = {"keys": [dict(k) for k in jwks.get("keys", [])]}
        if jwks_uri:
            doc["jwks_uri"] = jwks_uri
        if secret is not None:
            # The secret has 256 random bits, so a fast hash is enough (nothing to brute-force).
            doc["secret_hash"] = hash_opaque_token(secret)
        try:
            await self._collection.insert_one(doc)
        except DuplicateKeyError as exc:
            raise ClientConflict(f"client {client_id!r} already exists") from exc
        return _from_doc(doc), secret

    async def get(self, client_id: str) -> Client | None:
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            return None
        doc = await self._collection.find_one({"_id": client_id})
        return _from_doc(doc) if doc else None

    async def list(self) -> list[Client]:
        return [_from_doc(d) async for d in self._collection.find({}).sort("_id", 1)]

    async def remove(self, client_id: str) -> bool:
        result = await self._collection.delete_one({"_id": client_id})
        return result.deleted_count == 1

    async def count(self) -> int:
        return await self._collection.count_documents({})

    async def jwks_for(self, client: Client, *, refresh: bool = False) -> Mapping[str, Any]:
        """The client's JWK Set: inline, or fetched from its `jwks_uri` (cached).

        `refresh` re-fetches a URL-registered set, after an unknown `kid` (the client may
        have rotated its keys).
        """
        if client.jwks is not None:
            return client.jwks
        if not client.jwks_uri:
            raise OAuthError(
                "invalid_client", "the client has no registered keys", reason="no_keys"
            )
        try:
            return await self._jwks.get(client.jwks_uri, refresh=refresh)
        except JwksError as exc:
            raise OAuthError(
                "invalid_client", "the client's JWKS URL cannot be used", reason="jwks_fetch"
            ) from exc


def _validate(
    client_id: str,
    client_type: str,
    scope: str,
    redirect_uris: list[str] | tuple[str, ...],
    jwks: Mapping[str, Any] | None,
    jwks_uri: str | None,
) -> None:
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError("client_id must be 1-128 characters of [A-Za-z0-9._~-]")
    if client_type not in CLIENT_TYPES:
        raise ValueError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    parsed = parse_scopes(scope)
    if parsed.ignored:
        bad = ", ".join(f"{i.scope} ({i.reason})" for i in parsed.ignored)
        raise ValueError(f"unrecognised scopes: {bad}")
    for uri in redirect_uris:
        if not uri.startswith(("https://", "http://")) or "#" in uri:
            raise ValueError(f"redirect URI {uri!r} must be an absolute http(s) URL, no fragment")
    if client_type == "confidential-asymmetric":
        if (jwks is None) == (not jwks_uri):
            raise ValueError("an asymmetric client needs exactly one of jwks or jwks_uri")
        if jwks_uri and not _acceptable_jwks_uri(jwks_uri):
            raise ValueError("jwks_uri must be https (plain http only on a loopback host)")
        if jwks is not None and not any(
            candidate_keys(jwks, k.get("kid"), str(k.get("alg") or _default_alg(k)))
            for k in jwks.get("keys", [])
            if isinstance(k, Mapping)
        ):
            raise ValueError("the JWKS has no usable RS384/ES384 public key with a kid")
    elif jwks is not None or jwks_uri:
        raise ValueError("only confidential-asymmetric clients have keys")


def _acceptable_jwks_uri(uri: str) -> bool:
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")


def _default_alg(jwk: Mapping[str, Any]) -> str:
    return "ES384" if jwk.get("kty") == "EC" else "RS384"


def _from_doc(doc: Mapping[str, Any]) -> Client:
    return Client(
        client_id=doc["_id"],
        client_type=doc["type"],
        name=doc.get("name", ""),
        redirect_uris=tuple(doc.get("redirect_uris", ())),
        scope=doc.get("scope", ""),
        jwks=doc.get("jwks"),
        jwks_uri=doc.get("jwks_uri"),
        secret_hash=doc.get("secret_hash"),
    )

"""Shared state of the authorization server, all in MongoDB so several app instances agree.

Collections (each with a TTL index on `expires_at`; reads also check the expiry themselves,
because TTL deletion runs only once a minute):

* `oauth_sessions`: authorization requests between `/authorize` and the redirect back
  (login, patient picker), keyed by a random id held in a cookie, with a CSRF token;
* `oauth_codes`: authorization codes, by SHA-256 of the code, single use;
* `oauth_refresh_tokens`: refresh tokens, by SHA-256, rotated on every use; every token of
  one authorization shares a `grant_id`, so reuse of a rotated token revokes the family;
* `oauth_revoked`: revoked access-token `jti`s and revoked `grant_id`s (a revoked grant
  invalidates every access token issued under it);
* `oauth_launches`: EHR launch ids and the context they stand for;
* `oauth_assertion_jtis`: client assertion `jti`s seen (replay cache).

Every single-use check is one atomic MongoDB operation (insert with a unique `_id`, or
`find_one_and_update` on an unused flag), so two instances cannot both accept the same code,
refresh token or assertion.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.security.assertions import DEFAULT_LEEWAY
from app.security.tokens import hash_opaque_token, new_authorization_code, new_refresh_token

SESSIONS = "oauth_sessions"
CODES = "oauth_codes"
REFRESH_TOKENS = "oauth_refresh_tokens"
REVOKED = "oauth_revoked"
LAUNCHES = "oauth_launches"
ASSERTION_JTIS = "oauth_assertion_jtis"
TTL_COLLECTIONS = (SESSIONS, CODES, REFRESH_TOKENS, REVOKED, LAUNCHES, ASSERTION_JTIS)

JsonDict = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


def _at(epoch: int | float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


async def ensure_indexes(db: AsyncDatabase[JsonDict]) -> None:
    for name in TTL_COLLECTIONS:
        await db[name].create_index("expires_at", expireAfterSeconds=0)
    await db[REFRESH_TOKENS].create_index("grant_id")


@dataclass(frozen=True)
class AuthorizationContext:
    """Who authorized what: carried from the login through the code to every refresh."""

    client_id: str
    scope: str
    grant_id: str
    username: str | None = None
    fhir_user: str | None = None
    patient: str | None = None
    encounter: str | None = None
    nonce: str | None = None
    auth_time: int | None = None

    def to_doc(self) -> JsonDict:
        return {
            "client_id": self.client_id,
            "scope": self.scope,
            "grant_id": self.grant_id,
            "username": self.username,
            "fhir_user": self.fhir_user,
            "patient": self.patient,
            "encounter": self.encounter,
            "nonce": self.nonce,
            "auth_time": self.auth_time,
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> AuthorizationContext:
        return cls(
            client_id=doc["client_id"],
            scope=doc["scope"],
            grant_id=doc["grant_id"],
            username=doc.get("username"),
            fhir_user=doc.get("fhir_user"),
            patient=doc.get("patient"),
            encounter=doc.get("encounter"),
            nonce=doc.get("nonce"),
            auth_time=doc.get("auth_time"),
        )


def new_grant_id() -> str:
    return secrets.token_urlsafe(16)


class SessionStore:
    """Pending authorization requests (the browser's state between the login steps)."""

    def __init__(self, db: AsyncDatabase[JsonDict], lifetime: int = 600) -> None:
        self._collection = db[SESSIONS]
        self._lifetime = lifetime

    async def create(self, request: Mapping[str, Any]) -> tuple[str, str]:
        """Store the validated request; returns (session id, CSRF token)."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        await self._collection.insert_one(
            {
                "_id": hash_opaque_token(session_id),
                "csrf": csrf,
                "request": dict(request),
                "expires_at": utcnow() + timedelta(seconds=self._lifetime),
            }
        )
        return session_id, csrf

    async def get(self, session_id: str | None) -> JsonDict | None:
        if not session_id:
            return None
        return await self._collection.find_one(
            {"_id": hash_opaque_token(session_id), "expires_at": {"$gt": utcnow()}}
        )

    async def update(self, session_id: str, changes: Mapping[str, Any]) -> None:
        await self._collection.update_one(
            {"_id": hash_opaque_token(session_id)}, {"$set": dict(changes)}
        )

    async def finish(self, session_id: str) -> bool:
        """Delete the session; False if another request finished it first."""
        result = await self._collection.delete_one({"_id": hash_opaque_token(session_id)})
        return result.deleted_count == 1


class CodeStore:
    def __init__(self, db: AsyncDatabase[JsonDict], lifetime: int = 120) -> None:
        self._collection = db[CODES]
        self._lifetime = lifetime

    async def issue(
        self,
        context: AuthorizationContext,
        *,
        redirect_uri: str,
        code_challenge: str,
        code_challenge_method: str,
    ) -> str:
        code = new_authorization_code()
        await self._collection.insert_one(
            {
                "_id": hash_opaque_token(code),
                **context.to_doc(),
                "redirect_uri": redirect_uri,
                "code_challenge": code_challenge,
                "code_challenge_method": code_challenge_method,
                "used": False,
                "expires_at": utcnow() + timedelta(seconds=self._lifetime),
            }
        )
        return code

    async def redeem(self, code: str) -> tuple[JsonDict | None, JsonDict | None]:
        """(the code's record, None) on first use; (None, the record) if it was used before.

        (None, None) if it is unknown or expired. The second use of a code means it leaked:
        the caller revokes its grant (RFC 6749 §4.1.2).
        """
        key = hash_opaque_token(code)
        doc = await self._collection.find_one_and_update(
            {"_id": key, "used": False, "expires_at": {"$gt": utcnow()}},
            {"$set": {"used": True}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is not None:
            return doc, None
        return None, await self._collection.find_one({"_id": key, "used": True})


class RefreshTokenStore:
    def __init__(self, db: AsyncDatabase[JsonDict]) -> None:
        self._collection = db[REFRESH_TOKENS]

    async def issue(self, context: AuthorizationContext, *, lifetime: int) -> tuple[str, int]:
        token = new_refresh_token()
        expires = utcnow() + timedelta(seconds=lifetime)
        await self._collection.insert_one(
            {
                "_id": hash_opaque_token(token),
                **context.to_doc(),
                "used": False,
                "revoked": False,
                "lifetime": lifetime,
                "expires_at": expires,
            }
        )
        return token, int(expires.timestamp())

    async def rotate(self, token: str) -> tuple[JsonDict | None, JsonDict | None]:
        """Consume a refresh token: (record, None) if valid; (None, record) if reused.

        (None, None) if unknown, expired or revoked.
        """
        key = hash_opaque_token(token)
        doc = await self._collection.find_one_and_update(
            {"_id": key, "used": False, "revoked": False, "expires_at": {"$gt": utcnow()}},
            {"$set": {"used": True}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is not None:
            return doc, None
        return None, await self._collection.find_one({"_id": key, "used": True})

    async def find_active(self, token: str) -> JsonDict | None:
        return await self._collection.find_one(
            {
                "_id": hash_opaque_token(token),
                "used": False,
                "revoked": False,
                "expires_at": {"$gt": utcnow()},
            }
        )

    async def find(self, token: str) -> JsonDict | None:
        return await self._collection.find_one({"_id": hash_opaque_token(token)})

    async def revoke_grant(self, grant_id: str) -> None:
        await self._collection.update_many({"grant_id": grant_id}, {"$set": {"revoked": True}})


class RevocationList:
    """Revoked access tokens (by jti) and grants; checked on every authenticated request.

    Subscribed to the database's ChangeFeed, it mirrors the (small) list in memory, so the
    check costs no database round trip. Revocations made by this process are mirrored at
    once; those made by other instances arrive within the feed's lag. While the feed is down,
    every check asks the database.
    """

    def __init__(self, db: AsyncDatabase[JsonDict]) -> None:
        self._collection = db[REVOKED]
        self._mirror: set[str] | None = None
        self._pending: set[str] = set()
        self._reload: asyncio.Task[None] | None = None

    async def revoke_token(self, jti: str, expires_at: int) -> None:
        # Kept until the token would have expired anyway, plus the verification leeway.
        await self._upsert(f"jti:{jti}", _at(expires_at + DEFAULT_LEEWAY))

    async def revoke_grant(self, grant_id: str, until: datetime) -> None:
        await self._upsert(f"grant:{grant_id}", until)

    async def is_revoked(self, jti: str | None, grant_id: str | None) -> bool:
        keys = [f"jti:{jti}"] if jti else []
        if grant_id:
            keys.append(f"grant:{grant_id}")
        if not keys:
            return False
        mirror = self._mirror
        if mirror is not None:
            return any(key in mirror for key in keys)
        found = await self._collection.find_one({"_id": {"$in": keys}}, projection={"_id": 1})
        return found is not None

    async def _upsert(self, key: str, until: datetime) -> None:
        await self._collection.update_one(
            {"_id": key}, {"$max": {"expires_at": until}}, upsert=True
        )
        self._remember(key)

    # ChangeFeed subscriber

    def on_live(self, live: bool) -> None:
        self._mirror = None
        self._pending = set()
        if self._reload is not None:
            self._reload.cancel()
            self._reload = None
        if live:
            self._reload = asyncio.get_running_loop().create_task(self._load())

    def on_change(
        self, collection: str, operation: str, key: Any, document: dict[str, Any] | None
    ) -> None:
        if collection != REVOKED or key is None:
            return
        if operation == "delete":
            # Expired entries are removed by the TTL index: their tokens are expired too.
            if self._mirror is not None:
                self._mirror.discard(str(key))
            return
        self._remember(str(key))

    def _remember(self, key: str) -> None:
        if self._mirror is not None:
            self._mirror.add(key)
        else:
            self._pending.add(key)

    async def _load(self) -> None:
        try:
            ids = {str(doc["_id"]) async for doc in self._collection.find({}, {"_id": 1})}
        except PyMongoError:
            return  # stays on database checks until the feed restarts
        self._mirror = ids | self._pending
        self._pending = set()


class LaunchStore:
    """EHR launch ids: an opaque id standing for a patient (and encounter) context."""

    def __init__(self, db: AsyncDatabase[JsonDict]) -> None:
        self._collection = db[LAUNCHES]

    async def create(
        self, *, patient: str | None, encounter: str | None = None, lifetime: int = 3600
    ) -> str:
        launch_id = secrets.token_urlsafe(24)
        await self._collection.insert_one(
            {
                "_id": launch_id,
                "patient": patient,
                "encounter": encounter,
                "expires_at": utcnow() + timedelta(seconds=lifetime),
            }
        )
        return launch_id

    async def get(self, launch_id: str) -> JsonDict | None:
        if not isinstance(launch_id, str) or len(launch_id) > 256:
            return None
        return await self._collection.find_one({"_id": launch_id, "expires_at": {"$gt": utcnow()}})


class MongoReplayCache:
    """`assertions.ReplayCache` on a shared collection: `_id` uniqueness is the atomic check."""

    def __init__(self, db: AsyncDatabase[JsonDict]) -> None:
        self._collection = db[ASSERTION_JTIS]

    async def seen(self, client_id: str, jti: str, expires_at: int) -> bool:
        key = {"client": client_id, "jti": jti}
        try:
            await self._collection.insert_one(
                {"_id": key, "expires_at": _at(expires_at + DEFAULT_LEEWAY)}
            )
        except DuplicateKeyError:
            # An entry whose TTL passed but was not yet deleted: the assertion carrying it
            # has expired too, so a fresh assertion may reuse the jti; take over the entry.
            result = await self._collection.update_one(
                {"_id": key, "expires_at": {"$lte": utcnow()}},
                {"$set": {"expires_at": _at(expires_at + DEFAULT_LEEWAY)}},
            )
            return result.modified_count == 0
        return False

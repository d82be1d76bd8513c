"""The signing key ring, kept in MongoDB (collection `oauth_keys`) so every instance shares it.

The ring holds private keys: the database is where the operator already keeps PHI, so it
is protected at least as well as a key file would be; deployments wanting an HSM/KMS replace
this module. Instances reload the ring when they meet an unknown `kid` (another instance
rotated), at most once per `RELOAD_INTERVAL`, so forged kids cannot hammer the database.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.security.keys import DEFAULT_ALGORITHM, KeyRing, SigningAlgorithm

COLLECTION = "oauth_keys"
_RING_ID = "signing"
RELOAD_INTERVAL = 10.0  # seconds


class KeyStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], ring: KeyRing) -> None:
        self._collection = db[COLLECTION]
        self.ring = ring
        self._last_reload = time.monotonic()

    @classmethod
    async def open(
        cls, db: AsyncDatabase[dict[str, Any]], alg: SigningAlgorithm = DEFAULT_ALGORITHM
    ) -> KeyStore:
        """Load the shared ring, creating it on first start (first writer wins)."""
        collection = db[COLLECTION]
        doc = await collection.find_one({"_id": _RING_ID})
        if doc is None:
            ring = KeyRing.generate(alg)
            try:
                await collection.insert_one({"_id": _RING_ID, "ring": ring.to_dict()})
                return cls(db, ring)
            except DuplicateKeyError:
                doc = await collection.find_one({"_id": _RING_ID})
        assert doc is not None  # inserted by us or by the instance that won the race
        return cls(db, KeyRing.from_dict(doc["ring"]))

    async def reload_if_stale(self) -> bool:
        """Reload the ring from the database unless done recently; True if reloaded."""
        if time.monotonic() - self._last_reload < RELOAD_INTERVAL:
            return False
        self._last_reload = time.monotonic()
        doc = await self._collection.find_one({"_id": _RING_ID})
        if doc is None:
            return False
        self.ring = KeyRing.from_dict(doc["ring"])
        return True

    async def rotate(self, keep_previous: int = 2) -> str:
        """Make a new current key, publish it to every instance; returns its kid."""
        doc = await self._collection.find_one({"_id": _RING_ID})
        ring = KeyRing.from_dict(doc["ring"]) if doc else self.ring
        new = ring.rotate(keep_previous=keep_previous)
        await self._collection.replace_one(
            {"_id": _RING_ID}, {"_id": _RING_ID, "ring": ring.to_dict()}, upsert=True
        )
        self.ring = ring
        return new.kid

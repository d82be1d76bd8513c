"""The signing key rings, kept in MongoDB (collection `oauth_keys`) so every instance shares them.

Two rings, one document each: `signing` signs access tokens (RS384 by default), `id_token`
signs OpenID Connect id tokens (RS256). Both rotate together and both are published at
`jwks_uri`.

The rings hold private keys: the database is where the operator already keeps PHI, so it
is protected at least as well as a key file would be; deployments wanting an HSM/KMS replace
this module. Instances reload the rings when they meet an unknown `kid` (another instance
rotated), at most once per `RELOAD_INTERVAL`, so forged kids cannot hammer the database.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.security.keys import DEFAULT_ALGORITHM, ID_TOKEN_ALGORITHM, KeyRing, SigningAlgorithm

COLLECTION = "oauth_keys"
_RING_ID = "signing"
_ID_RING_ID = "id_token"
RELOAD_INTERVAL = 10.0  # seconds

Collection = AsyncCollection[dict[str, Any]]


class KeyStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], ring: KeyRing, id_ring: KeyRing) -> None:
        self._collection = db[COLLECTION]
        self.ring = ring  # access tokens
        self.id_ring = id_ring  # id tokens
        self._last_reload = time.monotonic()

    @classmethod
    async def open(
        cls, db: AsyncDatabase[dict[str, Any]], alg: SigningAlgorithm = DEFAULT_ALGORITHM
    ) -> KeyStore:
        """Load the shared rings, creating each on first start (first writer wins).

        A database written before id tokens had their own ring gets the RS256 ring added.
        """
        collection = db[COLLECTION]
        ring = await _load_or_create(collection, _RING_ID, alg)
        id_ring = await _load_or_create(collection, _ID_RING_ID, ID_TOKEN_ALGORITHM)
        return cls(db, ring, id_ring)

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set served at `jwks_uri`: access-token and id-token keys."""
        return {"keys": [k.public_jwk() for k in (*self.ring.keys, *self.id_ring.keys)]}

    async def reload_if_stale(self) -> bool:
        """Reload the rings from the database unless done recently; True if reloaded."""
        if time.monotonic() - self._last_reload < RELOAD_INTERVAL:
            return False
        self._last_reload = time.monotonic()
        docs = {doc["_id"]: doc async for doc in self._collection.find({})}
        if _RING_ID not in docs:
            return False
        self.ring = KeyRing.from_dict(docs[_RING_ID]["ring"])
        if _ID_RING_ID in docs:
            self.id_ring = KeyRing.from_dict(docs[_ID_RING_ID]["ring"])
        return True

    async def rotate(self, keep_previous: int = 2) -> list[str]:
        """New current keys in both rings, published to every instance; their kids.

        The access-token kid comes first, then the id-token kid.
        """
        rotated: list[str] = []
        for ring_id, alg in ((_RING_ID, DEFAULT_ALGORITHM), (_ID_RING_ID, ID_TOKEN_ALGORITHM)):
            doc = await self._collection.find_one({"_id": ring_id})
            ring = KeyRing.from_dict(doc["ring"]) if doc else KeyRing.generate(alg)
            rotated.append(ring.rotate(keep_previous=keep_previous).kid)
            await self._collection.replace_one(
                {"_id": ring_id}, {"_id": ring_id, "ring": ring.to_dict()}, upsert=True
            )
            if ring_id == _RING_ID:
                self.ring = ring
            else:
                self.id_ring = ring
        return rotated


async def _load_or_create(collection: Collection, ring_id: str, alg: SigningAlgorithm) -> KeyRing:
    doc = await collection.find_one({"_id": ring_id})
    if doc is None:
        ring = KeyRing.generate(alg)
        try:
            await collection.insert_one({"_id": ring_id, "ring": ring.to_dict()})
            return ring
        except DuplicateKeyError:
            doc = await collection.find_one({"_id": ring_id})
    assert doc is not None  # inserted by us or by the instance that won the race
    return KeyRing.from_dict(doc["ring"])

"""Which storage format a database holds, so that no server reads a format it does not know.

The same idea as MongoDB's featureCompatibilityVersion. Each server claims the format it
writes when it starts, in one document of `store_format`, and the stored number only rises.
A server older than the store's format refuses to start instead of misreading documents, so
an instance of an older version started after an upgrade stops with a message. (Versions
before format 2 do not check: stop them before starting a format 2 server, see README.)

Formats:
  1  resource bodies as nested documents (every version before 2026-12-03; no record)
  2  resource bodies as JSON text (app/store/bodies.py); format 1 bodies are still read
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

FORMAT = 2
COLLECTION = "store_format"
_RECORD = "format"


class NewerStoreFormat(Exception):
    """The store was written by a newer Hestia than this one."""


async def stored_format(db: AsyncDatabase[Any]) -> int:
    record = await db[COLLECTION].find_one({"_id": _RECORD})
    return 1 if record is None else int(record["format"])


async def claim_format(db: AsyncDatabase[Any]) -> int:
    """Record that this version writes the store (format FORMAT), unless a newer one does."""
    for attempt in range(2):
        try:
            # `$max` never lowers it: a newer server's claim stays, and is read back below.
            await db[COLLECTION].update_one(
                {"_id": _RECORD}, {"$max": {"format": FORMAT}}, upsert=True
            )
            break
        except DuplicateKeyError:
            # Another worker starting at the same moment inserted it: update it instead.
            if attempt:
                raise
    found = await stored_format(db)
    if found > FORMAT:
        raise NewerStoreFormat(
            f"This database holds store format {found}, written by a newer version of Hestia; "
            f"this version knows formats up to {FORMAT}. Run the newer version."
        )
    return found

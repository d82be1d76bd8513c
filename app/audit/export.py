"""`hestia audit export`: AuditEvents recorded in [since, until) as NDJSON for a SIEM."""

from __future__ import annotations

from datetime import datetime
from typing import Any, BinaryIO

import orjson
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.chain import EVENTS


async def export(
    database: AsyncDatabase[Any],
    since: datetime | None,
    until: datetime | None,
    out: BinaryIO,
    *,
    with_chain: bool = False,
) -> int:
    """Write one AuditEvent per line, oldest first; returns how many were written.

    With `with_chain` each line is `{"seq", "prev", "hash", "event"}` instead, so the receiver
    can re-check the chain (and keep the last hash as an external witness of the head).
    """
    window: dict[str, datetime] = {}
    if since is not None:
        window["$gte"] = since
    if until is not None:
        window["$lt"] = until
    query = {"recorded": window} if window else {}
    cursor = database[EVENTS].find(query).sort([("recorded", ASCENDING), ("_id", ASCENDING)])
    count = 0
    async for document in cursor:
        if with_chain:
            line: Any = {
                "seq": int(document["_id"]),
                "prev": document["prev"],
                "hash": document["hash"],
                "event": document["resource"],
            }
        else:
            line = document["resource"]
        out.write(orjson.dumps(line) + b"\n")
        count += 1
    return count

"""`hestia audit export`: AuditEvents recorded in [since, until) as NDJSON for a SIEM."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, BinaryIO

import orjson
from pymongo.asynchronous.database import AsyncDatabase

from app.audit.journal import journal_events


async def export(
    database: AsyncDatabase[Any],
    since: datetime | None,
    until: datetime | None,
    out: BinaryIO,
    *,
    with_chain: bool = False,
) -> int:
    """Write one AuditEvent per line, in chain order; returns how many were written.

    Read from the journal, the durable record, so that an export never waits for the search
    index. With `with_chain` each line is `{"seq", "prev", "hash", "event"}` instead, so the
    receiver can re-check the chain (and keep the last hash as an external witness of the head).
    """
    since, until = _aware(since), _aware(until)
    count = 0
    async for event in journal_events(database):
        recorded = _aware(event["recorded"])
        assert recorded is not None
        if (since is not None and recorded < since) or (until is not None and recorded >= until):
            continue
        if with_chain:
            line: Any = {
                "seq": int(event["_id"]),
                "prev": event["prev"],
                "hash": event["hash"],
                "event": event["resource"],
            }
        else:
            line = event["resource"]
        out.write(orjson.dumps(line) + b"\n")
        count += 1
    return count


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value

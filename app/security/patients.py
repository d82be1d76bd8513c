"""The patients the picker offers, read from the current-version Patient collection.

Read-only and limited to what a picker needs (id and a display name); the store's layout
(`_id`, `resource`, `deleted`) is documented in DESIGN.md.
"""

from __future__ import annotations

import re
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from app.store.bodies import load_body

PICKER_SIZE = 50
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


async def list_patients(
    db: AsyncDatabase[dict[str, Any]], limit: int = PICKER_SIZE
) -> list[tuple[str, str]]:
    cursor = (
        db["Patient"]
        .find({"deleted": False}, projection={"resource": 1})
        .sort("_id", 1)
        .limit(limit)
    )
    return [(str(doc["_id"]), display_name(load_body(doc["resource"]))) async for doc in cursor]


async def patient_exists(db: AsyncDatabase[dict[str, Any]], patient_id: str) -> bool:
    if not _ID.fullmatch(patient_id):
        return False
    found = await db["Patient"].find_one(
        {"_id": patient_id, "deleted": False}, projection={"_id": 1}
    )
    return found is not None


def display_name(resource: dict[str, Any]) -> str:
    for name in resource.get("name") or []:
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str):
            return str(name["text"])
        given = " ".join(g for g in name.get("given") or [] if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        text = f"{given} {family}".strip()
        if text:
            return text
    return "(no name)"

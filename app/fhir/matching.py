"""Criteria matching for conditional interactions (TEMPORARY: `_id` and `identifier` only).

Replaced by the search engine once it lands; kept deliberately tiny.
"""

from __future__ import annotations

from typing import Any

from app.fhir.outcome import BadRequest
from app.store.versions import Store

JsonDict = dict[str, Any]


def compile_basic(criteria: list[tuple[str, str]]) -> JsonDict:
    clauses: list[JsonDict] = [{"deleted": False}]
    for name, value in criteria:
        if name == "_id":
            clauses.append({"_id": {"$in": [str(v) for v in value.split(",")]}})
        elif name == "identifier":
            keys = [v if "|" in v else v for v in value.split(",")]
            clauses.append({"s.identifier": {"$in": keys}})
        elif name.startswith("_") and name in ("_format", "_pretty", "_count"):
            continue
        else:
            raise BadRequest(
                f"Search parameter '{name[:60]}' is not supported yet", expression=[name[:60]]
            )
    return {"$and": clauses}


class BasicMatcher:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def __call__(self, resource_type: str, criteria: list[tuple[str, str]]) -> list[str]:
        docs = await self.store.find(
            resource_type, compile_basic(criteria), limit=2, projection={"_id": 1}
        )
        return [str(d["_id"]) for d in docs]

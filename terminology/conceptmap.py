"""ConceptMap lookup: translate a source code through a FHIR ConceptMap stored as JSON data.

The maps live in `terminology/conceptmaps/*.json` (FHIR R4 ConceptMap resources) so the code
tables can be reviewed, versioned and served like any other terminology content. They are
loaded once, lazily, into plain dicts: a lookup is two dict accesses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

CONCEPTMAP_DIR = Path(__file__).parent / "conceptmaps"
_V2_TABLE_ALIAS = re.compile(r"HL7(\d{4})")
_MAPPED = frozenset(
    {"relatedto", "equivalent", "equal", "wider", "subsumes", "narrower", "specializes", "inexact"}
)


@dataclass(frozen=True, slots=True)
class Coding:
    system: str | None
    code: str
    display: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.system:
            out["system"] = self.system
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        return out


# (source system, code) → Coding, per map.
_Table = dict[tuple[str, str], Coding]


@lru_cache(maxsize=512)
def _normalise_system(system: str | None) -> str:
    """`HL70001` is accepted as an alias of the v2 table's canonical code system URI."""
    if not system:
        return ""
    alias = _V2_TABLE_ALIAS.fullmatch(system)
    if alias:
        return f"http://terminology.hl7.org/CodeSystem/v2-{alias.group(1)}"
    return system


def _index(conceptmap: dict[str, Any]) -> _Table:
    table: _Table = {}
    for group in conceptmap.get("group", []):
        source = _normalise_system(group.get("source"))
        target_system = group.get("target")
        for element in group.get("element", []):
            for target in element.get("target", []):
                if target.get("equivalence", "equivalent") not in _MAPPED or "code" not in target:
                    continue
                coding = Coding(target_system, target["code"], target.get("display"))
                table.setdefault((source, element["code"]), coding)
                table.setdefault(("", element["code"]), coding)
    return table


@lru_cache(maxsize=1)
def _load_all() -> dict[str, _Table]:
    maps: dict[str, _Table] = {}
    for path in sorted(CONCEPTMAP_DIR.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        table = _index(resource)
        for key in (resource.get("url"), resource.get("name"), resource.get("id")):
            if key:
                maps[key] = table
    return maps


def conceptmap_ids() -> list[str]:
    return sorted({key for key in _load_all() if not key.startswith("http")})


def translate(conceptmap: str, source_system: str | None, code: str) -> Coding | None:
    """Target Coding for `code` in `conceptmap` (url, name or id), or None when unmapped.

    `source_system` selects the ConceptMap group; None matches any group. Unknown maps are a
    programming error and raise KeyError.
    """
    table = _load_all()[conceptmap]
    return table.get((_normalise_system(source_system), code))

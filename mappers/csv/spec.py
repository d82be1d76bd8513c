"""Declarative CSV maps (YAML in `maps/`): loading, validation and compilation.

A map declares:
- `name`, `resource`, and `signature` (header columns that identify the feed);
- `id`: `namespace` + key `columns` → deterministic id (uuid5), so re-uploads are no-ops;
- `columns`: per column a `type` (string, id, date, datetime, instant, decimal, integer,
  code, reference), `required` (empty → row rejected), `exists` (a reference that must name a
  resource already stored, checked by the ingestion layer), `expected` (empty → data-quality
  warning), `lookup` (code → value table in `lookups`), `known` (code missing from the
  lookup → row rejected), `default`, and for references `target` and `namespace`;
- `value` (optional, Observation): the value / unit / kind / code columns and the target
  UCUM unit per code;
- `template`: the resource, where a string "{{COLUMN}}" is replaced by the typed cell
  value and "text {{COLUMN}}" is interpolated. An object or list whose placeholders are
  all empty is left out, so optional columns never produce empty elements.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from app.fhir.outcome import BadRequest
from mappers.csv.values import (
    CellError,
    deterministic_id,
    parse_date,
    parse_date_time,
    parse_decimal,
    parse_id,
    parse_instant,
    parse_integer,
)

MAPS_DIR = Path(__file__).parent / "maps"

JsonDict = dict[str, Any]


class _Missing:
    """Marks a template node whose placeholders were all empty."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

Cells = dict[str, Any]
Node = Callable[[Cells], Any]

_PLACEHOLDER = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_TYPES = {"string", "id", "date", "datetime", "instant", "decimal", "integer", "code", "reference"}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = False
    expected: bool = False
    lookup: dict[str, Any] | None = None
    known: bool = False
    default: str | None = None
    target: str | None = None
    namespace: str | None = None
    # A reference that must name a resource already on the server (checked at ingestion).
    must_exist: bool = False

    def parse(self, raw: str, default_zone: str | None) -> Any:
        """Typed value of a non-empty cell; raises CellError."""
        kind = self.type
        if kind == "string":
            return raw
        if kind == "decimal":
            return parse_decimal(raw)
        if kind == "datetime":
            return parse_date_time(raw, default_zone)
        if kind == "instant":
            return parse_instant(raw, default_zone)
        if kind == "date":
            return parse_date(raw)
        if kind == "id":
            return parse_id(raw)
        if kind == "integer":
            return parse_integer(raw)
        if kind == "reference":
            ident = parse_id(raw)
            if self.namespace:
                ident = deterministic_id(self.namespace, [ident])
            return f"{self.target}/{ident}"
        # code
        if self.lookup is None:
            return raw
        found = self.lookup.get(raw)
        if found is None:
            raise CellError(f"unknown code '{raw}'")
        return found


@dataclass(frozen=True)
class ValueSpec:
    column: str
    unit_column: str | None = None
    kind_column: str | None = None
    numeric_kinds: frozenset[str] = frozenset({"numeric"})
    code_column: str | None = None
    target_units: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CsvMap:
    name: str
    resource: str
    signature: tuple[str, ...]
    id_namespace: str
    id_columns: tuple[str, ...]
    columns: dict[str, Column]
    template: Node
    value: ValueSpec | None
    default_zone: str | None
    description: str = ""


# --- template compilation ---------------------------------------------------------------
# Nodes are closures built once per map; evaluation per row is plain dict building.


def _compile(node: Any, columns: dict[str, Column]) -> tuple[Node, bool]:
    """Compile a template node; the flag says whether it holds any placeholder."""
    if isinstance(node, str):
        return _compile_string(node, columns)
    if isinstance(node, dict):
        return _compile_dict(node, columns)
    if isinstance(node, list):
        return _compile_list(node, columns)
    return (lambda _cells, v=node: v), False


def _check(name: str, columns: dict[str, Column]) -> str:
    if name not in columns:
        raise ValueError(f"template names column '{name}' that the map does not declare")
    return name


def _compile_string(text: str, columns: dict[str, Column]) -> tuple[Node, bool]:
    names = _PLACEHOLDER.findall(text)
    if not names:
        return (lambda _cells: text), False
    whole = _PLACEHOLDER.fullmatch(text)
    if whole:
        key = _check(whole.group(1), columns)
        return (lambda cells: cells.get(key, MISSING)), True
    keys = [_check(n, columns) for n in names]

    def interpolate(cells: Cells) -> Any:
        if any(cells.get(k, MISSING) is MISSING for k in keys):
            return MISSING
        return _PLACEHOLDER.sub(lambda m: str(cells[m.group(1).strip()]), text)

    return interpolate, True


def _compile_dict(node: dict[str, Any], columns: dict[str, Column]) -> tuple[Node, bool]:
    children = [(str(k), *_compile(v, columns)) for k, v in node.items()]
    has_placeholder = any(flag for _, _, flag in children)

    def build(cells: Cells) -> Any:
        out: JsonDict = {}
        filled = False
        for key, child, flag in children:
            value = child(cells)
            if value is MISSING:
                continue
            out[key] = value
            filled = filled or flag
        if has_placeholder and not filled:
            return MISSING
        return out

    return build, has_placeholder


def _compile_list(node: list[Any], columns: dict[str, Column]) -> tuple[Node, bool]:
    children = [_compile(v, columns) for v in node]
    has_placeholder = any(flag for _, flag in children)

    def build(cells: Cells) -> Any:
        out = []
        filled = False
        for child, flag in children:
            value = child(cells)
            if value is MISSING:
                continue
            out.append(value)
            filled = filled or flag
        if not out or (has_placeholder and not filled):
            return MISSING
        return out

    return build, has_placeholder


# --- loading ----------------------------------------------------------------------------


def compile_map(doc: dict[str, Any]) -> CsvMap:
    """Validate and compile a map document; raises ValueError naming the problem."""
    for key in ("name", "resource", "signature", "id", "columns", "template"):
        if key not in doc:
            raise ValueError(f"CSV map lacks '{key}'")
    lookups: dict[str, dict[str, Any]] = doc.get("lookups", {})
    columns: dict[str, Column] = {}
    for name, spec in doc["columns"].items():
        spec = spec or {}
        kind = spec.get("type", "string")
        if kind not in _TYPES:
            raise ValueError(f"column '{name}': unknown type '{kind}'")
        lookup_name = spec.get("lookup")
        if lookup_name is not None and lookup_name not in lookups:
            raise ValueError(f"column '{name}': unknown lookup '{lookup_name}'")
        if kind == "reference" and not spec.get("target"):
            raise ValueError(f"column '{name}': a reference needs a target resource type")
        columns[name] = Column(
            name=name,
            type=kind,
            required=bool(spec.get("required", False)),
            expected=bool(spec.get("expected", False)),
            lookup={str(k): v for k, v in lookups[lookup_name].items()} if lookup_name else None,
            known=bool(spec.get("known", False)),
            default=spec.get("default"),
            target=spec.get("target"),
            namespace=spec.get("namespace"),
            must_exist=bool(spec.get("exists", False)),
        )
        if columns[name].must_exist and kind != "reference":
            raise ValueError(f"column '{name}': only a reference can be required to exist")
    id_columns = tuple(doc["id"]["columns"])
    for name in (*id_columns, *doc["signature"]):
        _check(name, columns)
    value = None
    if "value" in doc:
        v = doc["value"]
        for key in ("column", "unit_column", "kind_column", "code_column"):
            if v.get(key) is not None:
                _check(v[key], columns)
        value = ValueSpec(
            column=v["column"],
            unit_column=v.get("unit_column"),
            kind_column=v.get("kind_column"),
            numeric_kinds=frozenset(v.get("numeric_kinds", ["numeric"])),
            code_column=v.get("code_column"),
            target_units={str(k): str(u) for k, u in (v.get("target_units") or {}).items()},
        )
    template, _ = _compile(doc["template"], columns)
    return CsvMap(
        name=doc["name"],
        resource=doc["resource"],
        signature=tuple(doc["signature"]),
        id_namespace=doc["id"]["namespace"],
        id_columns=id_columns,
        columns=columns,
        template=template,
        value=value,
        default_zone=doc.get("timezone"),
        description=doc.get("description", ""),
    )


@cache
def available_maps() -> dict[str, CsvMap]:
    """Every map shipped in `maps/`, by name."""
    out = {}
    for path in sorted(MAPS_DIR.glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            compiled = compile_map(yaml.safe_load(fh))
        out[compiled.name] = compiled
    return out


def load_map(name: str) -> CsvMap:
    try:
        return available_maps()[name]
    except KeyError:
        known = ", ".join(sorted(available_maps()))
        raise BadRequest(f"unknown CSV map '{name}' (known: {known})") from None

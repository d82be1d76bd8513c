"""Read the operations out of a FHIRPath Patch Parameters resource (R4 fhirpatch.html).

Each `parameter` named `operation` has parts `type`, `path` and, depending on the type, `name`,
`value`, `index`, `source` and `destination`. Anything else is a malformed patch (400): it is
better to refuse a typo than to apply half of what the client meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.fhir.outcome import BadRequest

OPERATION_TYPES = frozenset({"add", "insert", "delete", "replace", "move"})
_PART_NAMES = frozenset({"type", "path", "name", "value", "index", "source", "destination"})
# Which parts each type needs (fhirpatch.html, table of operations).
_REQUIRED: dict[str, tuple[str, ...]] = {
    "add": ("name", "value"),
    "insert": ("value", "index"),
    "delete": (),
    "replace": ("value",),
    "move": ("source", "destination"),
}


@dataclass(frozen=True)
class Operation:
    type: str
    path: str
    where: str  # FHIRPath of this operation in the Parameters, for OperationOutcome.expression
    name: str | None = None
    value: dict[str, Any] | None = None  # the `value` part itself: value[x] or nested parts
    index: int | None = None
    source: int | None = None
    destination: int | None = None


def parse_operations(parameters: Any) -> list[Operation]:
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise BadRequest("A FHIRPath Patch body must be a Parameters resource")
    entries = parameters.get("parameter", [])
    if not isinstance(entries, list):
        raise BadRequest(
            "Parameters.parameter must be an array", expression=["Parameters.parameter"]
        )
    return [
        _parse_operation(entry, f"Parameters.parameter[{i}]") for i, entry in enumerate(entries)
    ]


def _parse_operation(entry: Any, where: str) -> Operation:
    if not isinstance(entry, dict) or entry.get("name") != "operation":
        raise BadRequest(
            f"{where} must be a parameter named 'operation'", expression=[f"{where}.name"]
        )
    parts = _parts_by_name(entry.get("part"), where)
    op_type = _primitive(parts, "type", ("valueCode", "valueString"), str, where)
    if op_type not in OPERATION_TYPES:
        raise BadRequest(
            f"{where}: operation type {op_type!r} is not one of "
            f"{', '.join(sorted(OPERATION_TYPES))}",
            expression=[f"{where}.part.where(name='type')"],
        )
    path = _primitive(parts, "path", ("valueString",), str, where)
    for required in _REQUIRED[op_type]:
        if required not in parts:
            raise BadRequest(
                f"{where}: a {op_type} operation needs a '{required}' part",
                expression=[f"{where}.part"],
            )
    return Operation(
        type=op_type,
        path=path,
        where=where,
        name=_primitive(parts, "name", ("valueString",), str, where) if "name" in parts else None,
        value=parts.get("value"),
        index=_index(parts, "index", where),
        source=_index(parts, "source", where),
        destination=_index(parts, "destination", where),
    )


def _parts_by_name(parts: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(parts, list):
        raise BadRequest(f"{where} has no 'part' array", expression=[f"{where}.part"])
    by_name: dict[str, dict[str, Any]] = {}
    for i, part in enumerate(parts):
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str) or name not in _PART_NAMES:
            raise BadRequest(
                f"{where}.part[{i}] has name {name!r}; expected one of "
                f"{', '.join(sorted(_PART_NAMES))}",
                expression=[f"{where}.part[{i}].name"],
            )
        if name in by_name:
            raise BadRequest(
                f"{where} has more than one '{name}' part", expression=[f"{where}.part[{i}]"]
            )
        assert isinstance(part, dict)  # a part with a string name is an object
        by_name[name] = part
    if "type" not in by_name or "path" not in by_name:
        raise BadRequest(
            f"{where}: every operation needs 'type' and 'path' parts", expression=[f"{where}.part"]
        )
    return by_name


def _primitive(
    parts: dict[str, dict[str, Any]],
    name: str,
    keys: tuple[str, ...],
    kind: type,
    where: str,
) -> Any:
    part = parts[name]
    for key in keys:
        value = part.get(key)
        if isinstance(value, kind) and not isinstance(value, bool):
            return value
    raise BadRequest(
        f"{where}: part '{name}' must carry {' or '.join(keys)}",
        expression=[f"{where}.part.where(name='{name}')"],
    )


def _index(parts: dict[str, dict[str, Any]], name: str, where: str) -> int | None:
    if name not in parts:
        return None
    value: int = _primitive(parts, name, ("valueInteger",), int, where)
    if value < 0:
        raise BadRequest(
            f"{where}: part '{name}' must not be negative",
            expression=[f"{where}.part.where(name='{name}')"],
        )
    return value

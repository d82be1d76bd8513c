"""JSON Patch (RFC 6902) with JSON Pointers (RFC 6901), for `application/json-patch+json`.

Written here rather than taken from a library so that every failure names the operation that
caused it (`[2].path`) in the OperationOutcome, and so that a failure is always a FhirError,
never a KeyError or IndexError escaping to the API layer as a 500.

A patch document that is malformed is a 400 (BadRequest); a well-formed patch that cannot be
applied to this resource (missing target, failed `test`) is a 422 (Unprocessable).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from app.fhir.outcome import BadRequest, Unprocessable
from app.fhir.patch.guard import check_identity_kept

OPERATIONS = frozenset({"add", "remove", "replace", "move", "copy", "test"})
_NEEDS_VALUE = frozenset({"add", "replace", "test"})
_NEEDS_FROM = frozenset({"move", "copy"})
# RFC 6901 §4: array indices are decimal without leading zeros.
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_END_OF_ARRAY = "-"


def apply_json_patch(resource: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a JSON Patch document to a copy of `resource` and return the copy.

    Operations apply in order and atomically: if one fails nothing is returned. The patch may
    not change `resourceType` or `id`.
    """
    if not isinstance(patch, list):
        raise BadRequest("A JSON Patch document must be a JSON array of operation objects")
    document: Any = copy.deepcopy(resource)
    for index, operation in enumerate(patch):
        document = _apply_operation(document, operation, f"[{index}]")
    if not isinstance(document, dict):
        raise Unprocessable("The patched document is not a JSON object, so it is not a resource")
    check_identity_kept(resource, document)
    return document


def _apply_operation(document: Any, operation: Any, where: str) -> Any:
    if not isinstance(operation, dict):
        raise BadRequest(f"Operation {where} is not a JSON object", expression=[where])
    op = operation.get("op")
    if not isinstance(op, str) or op not in OPERATIONS:
        raise BadRequest(
            f"Operation {where} has op {op!r}; expected one of {', '.join(sorted(OPERATIONS))}",
            expression=[f"{where}.op"],
        )
    path = parse_pointer(operation.get("path"), f"{where}.path")
    if op in _NEEDS_VALUE and "value" not in operation:
        raise BadRequest(
            f"Operation {where} ({op}) has no 'value' member", expression=[f"{where}.value"]
        )
    source: list[str] = []
    if op in _NEEDS_FROM:
        source = parse_pointer(operation.get("from"), f"{where}.from")

    if op == "add":
        return _add(document, path, copy.deepcopy(operation["value"]), f"{where}.path")
    if op == "remove":
        document, _ = _remove(document, path, f"{where}.path")
        return document
    if op == "replace":
        _get(document, path, f"{where}.path")  # the target must exist
        if not path:
            return copy.deepcopy(operation["value"])
        document, _ = _remove(document, path, f"{where}.path")
        return _add(document, path, copy.deepcopy(operation["value"]), f"{where}.path")
    if op == "move":
        if path[: len(source)] == source and len(path) > len(source):
            raise Unprocessable(
                f"Operation {where} moves a value into one of its own children",
                expression=[f"{where}.from"],
            )
        document, value = _remove(document, source, f"{where}.from")
        return _add(document, path, value, f"{where}.path")
    if op == "copy":
        value = copy.deepcopy(_get(document, source, f"{where}.from"))
        return _add(document, path, value, f"{where}.path")
    # op == "test"
    actual = _get(document, path, f"{where}.path")
    if not json_equal(actual, operation["value"]):
        raise Unprocessable(
            f"Operation {where} (test) failed: the value at {operation['path']!r} differs",
            expression=[f"{where}.value"],
        )
    return document


def parse_pointer(pointer: Any, where: str) -> list[str]:
    """RFC 6901 pointer → reference tokens ('' is the whole document)."""
    if not isinstance(pointer, str):
        raise BadRequest(f"{where} must be a JSON Pointer string", expression=[where])
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise BadRequest(
            f"{where} {pointer!r} is not a JSON Pointer: it must be empty or start with '/'",
            expression=[where],
        )
    tokens = []
    for raw in pointer[1:].split("/"):
        if re.search(r"~(?![01])", raw):
            raise BadRequest(
                f"{where} {pointer!r} has a '~' not followed by 0 or 1", expression=[where]
            )
        # Order matters (RFC 6901 §4): '~01' is '~1', not '/'.
        tokens.append(raw.replace("~1", "/").replace("~0", "~"))
    return tokens


def _array_index(token: str, size: int, where: str, *, allow_end: bool) -> int:
    if allow_end and token == _END_OF_ARRAY:
        return size
    if not _ARRAY_INDEX.fullmatch(token):
        raise Unprocessable(f"{where}: {token!r} is not an array index", expression=[where])
    index = int(token)
    limit = size if allow_end else size - 1
    if index > limit:
        raise Unprocessable(
            f"{where}: index {index} is out of range for an array of {size}", expression=[where]
        )
    return index


def _get(document: Any, path: list[str], where: str) -> Any:
    current = document
    for token in path:
        if isinstance(current, dict):
            if token not in current:
                raise Unprocessable(f"{where}: member {token!r} does not exist", expression=[where])
            current = current[token]
        elif isinstance(current, list):
            current = current[_array_index(token, len(current), where, allow_end=False)]
        else:
            raise Unprocessable(
                f"{where}: {token!r} reaches into a value that is neither object nor array",
                expression=[where],
            )
    return current


def _add(document: Any, path: list[str], value: Any, where: str) -> Any:
    if not path:
        return value
    parent = _get(document, path[:-1], where)
    last = path[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(last, len(parent), where, allow_end=True), value)
    else:
        raise Unprocessable(
            f"{where}: the parent of the target is neither object nor array", expression=[where]
        )
    return document


def _remove(document: Any, path: list[str], where: str) -> tuple[Any, Any]:
    """(document without the target, the removed value)."""
    if not path:
        raise Unprocessable(f"{where}: the whole document cannot be removed", expression=[where])
    parent = _get(document, path[:-1], where)
    last = path[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise Unprocessable(f"{where}: member {last!r} does not exist", expression=[where])
        return document, parent.pop(last)
    if isinstance(parent, list):
        return document, parent.pop(_array_index(last, len(parent), where, allow_end=False))
    raise Unprocessable(
        f"{where}: the parent of the target is neither object nor array", expression=[where]
    )


def json_equal(left: Any, right: Any) -> bool:
    """JSON equality (RFC 6902 §4.6): unlike Python's ==, true is not 1 and "1" is not 1."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    return type(left) is type(right) and left == right

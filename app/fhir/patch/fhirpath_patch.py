"""FHIRPath Patch (R4 fhirpatch.html): apply a Parameters resource of operations.

Rules taken from the specification:
- add, insert, replace and move need their path to match exactly one element;
- delete of a path that matches nothing is not an error, but it may delete only one element;
- add may create a non-repeating element only if it is not there yet, and appends to a
  repeating one;
- insert and move work on a list, named by a path that ends in the list's element name.

Operations apply in order to a copy; the input resource is never changed.
"""

from __future__ import annotations

import copy
from typing import Any

from app.fhir.outcome import Unprocessable
from app.fhir.patch import elements
from app.fhir.patch.guard import check_identity_kept
from app.fhir.patch.json_elements import (
    ElementValue,
    add_element,
    insert_item,
    list_size,
    pop_item,
    prune_empty,
    remove_element,
    replace_item,
    set_element,
)
from app.fhir.patch.locate import Node, locate, parse_path
from app.fhir.patch.operations import Operation, parse_operations
from app.fhir.patch.values import build_value, resolve_target, value_suffix

JsonDict = dict[str, Any]


def apply_fhirpath_patch(resource: JsonDict, parameters: Any) -> JsonDict:
    """Apply a FHIRPath Patch Parameters resource to a copy of `resource` and return it."""
    operations = parse_operations(parameters)
    patched = copy.deepcopy(resource)
    for operation in operations:
        _APPLY[operation.type](patched, operation)
    result = prune_empty(patched)
    assert isinstance(result, dict)  # pruning keeps an object an object
    check_identity_kept(resource, result)
    return result


def _path_where(operation: Operation) -> str:
    return f"{operation.where}.part.where(name='path')"


def _single(resource: JsonDict, operation: Operation) -> Node:
    """The one element the operation's path matches."""
    expression = operation.path
    where = _path_where(operation)
    nodes = locate(resource, parse_path(expression, where), expression, where)
    if not nodes:
        raise Unprocessable(
            f"{operation.where}: no content found at {expression!r} for {operation.type}",
            expression=[where],
        )
    if len(nodes) > 1:
        raise Unprocessable(
            f"{operation.where}: {expression!r} matches {len(nodes)} elements; "
            f"a {operation.type} needs exactly one",
            expression=[where],
        )
    return nodes[0]


def _value(operation: Operation, type_name: str | None) -> ElementValue:
    assert operation.value is not None  # parse_operations requires it for this type
    return build_value(operation.value, type_name, f"{operation.where}.part.where(name='value')")


def _add(resource: JsonDict, operation: Operation) -> None:
    assert operation.name is not None and operation.value is not None
    node = _single(resource, operation)
    if not isinstance(node.value, dict):
        raise Unprocessable(
            f"{operation.where}: {operation.path!r} is a primitive; it has no elements to add to",
            expression=[_path_where(operation)],
        )
    where = f"{operation.where}.part.where(name='name')"
    target = resolve_target(node.type_name, operation.name, value_suffix(operation.value), where)
    add_element(
        node.value, target.key, _value(operation, target.type_name), target.repeating, where
    )


def _list_location(resource: JsonDict, operation: Operation) -> tuple[Node, str]:
    """The element holding the list named by the path, and the list's key."""
    where = _path_where(operation)
    steps = parse_path(operation.path, where)
    if len(steps) < 2 or steps[-1].kind != "member":
        raise Unprocessable(
            f"{operation.where}: {operation.type} needs a path that ends with a list's element "
            f"name, like Patient.identifier; got {operation.path!r}",
            expression=[where],
        )
    parents = locate(resource, steps[:-1], operation.path, where)
    if len(parents) != 1 or not isinstance(parents[0].value, dict):
        raise Unprocessable(
            f"{operation.where}: the list at {operation.path!r} must belong to exactly one "
            f"element; found {len(parents)}",
            expression=[where],
        )
    parent = parents[0]
    key = steps[-1].name
    info = elements.element(parent.type_name, key)
    if info is not None and not info.repeating:
        raise Unprocessable(
            f"{operation.where}: {operation.path!r} does not repeat, so it is not a list",
            expression=[where],
        )
    return parent, key


def _insert(resource: JsonDict, operation: Operation) -> None:
    assert operation.index is not None
    parent, key = _list_location(resource, operation)
    value = _value(operation, elements.child_type(parent.type_name, key, None))
    insert_item(
        parent.value, key, operation.index, value, f"{operation.where}.part.where(name='index')"
    )


def _move(resource: JsonDict, operation: Operation) -> None:
    assert operation.source is not None and operation.destination is not None
    parent, key = _list_location(resource, operation)
    size = list_size(parent.value, key)
    for name, index in (("source", operation.source), ("destination", operation.destination)):
        if index >= size:
            raise Unprocessable(
                f"{operation.where}: {name} {index} is outside the list of {size} at "
                f"{operation.path!r}",
                expression=[f"{operation.where}.part.where(name='{name}')"],
            )
    item = pop_item(parent.value, key, operation.source, operation.where)
    insert_item(parent.value, key, operation.destination, item, operation.where)


def _delete(resource: JsonDict, operation: Operation) -> None:
    where = _path_where(operation)
    nodes = locate(resource, parse_path(operation.path, where), operation.path, where)
    if not nodes:
        return  # deleting what is not there is allowed (fhirpatch.html)
    if len(nodes) > 1:
        raise Unprocessable(
            f"{operation.where}: {operation.path!r} matches {len(nodes)} elements; "
            "a delete removes only one",
            expression=[where],
        )
    node = nodes[0]
    if node.parent is None or node.key is None:
        raise Unprocessable(
            f"{operation.where}: a patch cannot delete the whole resource", expression=[where]
        )
    if node.index is None:
        remove_element(node.parent, node.key)
    else:
        pop_item(node.parent, node.key, node.index, where)


def _replace(resource: JsonDict, operation: Operation) -> None:
    assert operation.value is not None
    node = _single(resource, operation)
    where = _path_where(operation)
    if node.parent is None or node.key is None:
        raise Unprocessable(
            f"{operation.where}: a patch cannot replace the whole resource", expression=[where]
        )
    value = _value(operation, node.type_name)
    if node.index is not None:
        replace_item(node.parent, node.key, node.index, value, where)
        return
    key = _replacement_key(node, value, operation)
    remove_element(node.parent, node.key)
    set_element(node.parent, key, value)


def _replacement_key(node: Node, value: ElementValue, operation: Operation) -> str:
    """A choice element's key follows the new value's type (valueString → valueInteger)."""
    assert node.key is not None
    info = elements.element(node.parent_type, node.key)
    if info is None or info.choice_suffix is None or value.suffix is None:
        return node.key
    base = node.key[: len(node.key) - len(info.choice_suffix)]
    where = f"{operation.where}.part.where(name='value')"
    return resolve_target(node.parent_type, base, value.suffix, where).key


_APPLY = {
    "add": _add,
    "insert": _insert,
    "delete": _delete,
    "replace": _replace,
    "move": _move,
}

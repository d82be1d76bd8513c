"""Edit FHIR JSON elements in place, keeping primitive extensions in step.

In FHIR JSON a primitive's id and extensions live beside it under `_name`, and for a repeating
primitive `_name` is a parallel array padded with nulls (R4 json.html#primitive). Every edit
here moves the value and its `_name` entry together, so a patch never leaves an extension
attached to the wrong item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.fhir.outcome import Unprocessable

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class ElementValue:
    """A value to write: its JSON, its `_name` content (primitives only) and FHIR type suffix."""

    json: Any
    shadow: Any = None
    # Type of a value given as value[x] ("String" for valueString); None when built from parts.
    suffix: str | None = None


def shadow_key(key: str) -> str:
    return f"_{key}"


def add_element(
    container: JsonDict, key: str, value: ElementValue, repeating: bool | None, where: str
) -> None:
    """Add `key` to `container`; append if it repeats. `repeating=None`: the model is unknown."""
    present = key in container or shadow_key(key) in container
    if repeating is None:
        repeating = isinstance(container.get(key), list)
    if repeating:
        values = container.get(key, [])
        insert_item(container, key, len(values) if isinstance(values, list) else 0, value, where)
        return
    if present:
        raise Unprocessable(
            f"{where}: '{key}' already has a value and does not repeat; use replace instead",
            expression=[where],
        )
    set_element(container, key, value)


def set_element(container: JsonDict, key: str, value: ElementValue) -> None:
    container[key] = value.json
    if value.shadow is None:
        container.pop(shadow_key(key), None)
    else:
        container[shadow_key(key)] = value.shadow


def remove_element(container: JsonDict, key: str) -> None:
    container.pop(key, None)
    container.pop(shadow_key(key), None)


def _arrays(container: JsonDict, key: str, where: str) -> tuple[list[Any], list[Any] | None]:
    values = container.get(key, [])
    shadows = container.get(shadow_key(key))
    if not isinstance(values, list) or not (shadows is None or isinstance(shadows, list)):
        raise Unprocessable(f"{where}: '{key}' is not a list", expression=[where])
    size = max(len(values), len(shadows or []))
    values.extend([None] * (size - len(values)))
    if shadows is not None:
        shadows.extend([None] * (size - len(shadows)))
    return values, shadows


def _store_arrays(
    container: JsonDict, key: str, values: list[Any], shadows: list[Any] | None
) -> None:
    if any(item is not None for item in values):
        container[key] = values
    else:
        container.pop(key, None)
    if shadows is not None and any(item is not None for item in shadows):
        container[shadow_key(key)] = shadows
    else:
        container.pop(shadow_key(key), None)


def list_size(container: JsonDict, key: str) -> int:
    values = container.get(key)
    shadows = container.get(shadow_key(key))
    return max(
        len(values) if isinstance(values, list) else 0,
        len(shadows) if isinstance(shadows, list) else 0,
    )


def insert_item(container: JsonDict, key: str, index: int, value: ElementValue, where: str) -> None:
    values, shadows = _arrays(container, key, where)
    if index > len(values):
        raise Unprocessable(
            f"{where}: index {index} is beyond the end of '{key}' ({len(values)} items)",
            expression=[where],
        )
    if shadows is None and value.shadow is not None:
        shadows = [None] * len(values)
    values.insert(index, value.json)
    if shadows is not None:
        shadows.insert(index, value.shadow)
    _store_arrays(container, key, values, shadows)


def pop_item(container: JsonDict, key: str, index: int, where: str) -> ElementValue:
    values, shadows = _arrays(container, key, where)
    if index >= len(values):
        raise Unprocessable(
            f"{where}: index {index} is beyond the end of '{key}' ({len(values)} items)",
            expression=[where],
        )
    removed = ElementValue(values.pop(index), shadows.pop(index) if shadows is not None else None)
    _store_arrays(container, key, values, shadows)
    return removed


def replace_item(
    container: JsonDict, key: str, index: int, value: ElementValue, where: str
) -> None:
    pop_item(container, key, index, where)
    insert_item(container, key, index, value, where)


def prune_empty(value: Any, *, shadow: bool = False) -> Any:
    """Drop the empty objects and arrays a delete can leave behind (FHIR JSON forbids them).

    In a `_name` shadow array an emptied entry becomes null instead, so that the entries after
    it stay aligned with their values.
    """
    if isinstance(value, dict):
        pruned = {key: prune_empty(item, shadow=key.startswith("_")) for key, item in value.items()}
        return {key: item for key, item in pruned.items() if item != {} and item != []}
    if isinstance(value, list):
        items = [prune_empty(item) for item in value]
        items = (
            [None if item == {} else item for item in items]
            if shadow
            else [item for item in items if item != {}]
        )
        return items if any(item is not None for item in items) else []
    return value

"""Turn a FHIRPath Patch `value` part into the JSON to write, and name the JSON key for it.

A value comes either as a typed `value[x]` (valueString, valueCodeableConcept, …) or, for types
Parameters cannot carry (backbone elements like Patient.contact), as nested `part`s, one per
child element. The element's type from the model decides which children repeat.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from app.fhir.outcome import BadRequest, Unprocessable
from app.fhir.patch import elements
from app.fhir.patch.json_elements import ElementValue, add_element

_VALUE_PREFIX = "value"


@dataclass(frozen=True)
class Target:
    """The JSON key an element is written under, whether it repeats, and its type."""

    key: str
    repeating: bool | None  # None: the model does not know this type
    type_name: str | None


def _typed_value_key(part: dict[str, Any]) -> str | None:
    keys = [
        key
        for key in part
        if key.startswith(_VALUE_PREFIX) and key[len(_VALUE_PREFIX) :][:1].isupper()
    ]
    return keys[0] if len(keys) == 1 else None


def value_suffix(part: dict[str, Any]) -> str | None:
    """The type suffix of a part's value[x] ("String" for valueString), if it has one."""
    key = _typed_value_key(part)
    return key[len(_VALUE_PREFIX) :] if key else None


def resolve_target(type_name: str | None, name: str, suffix: str | None, where: str) -> Target:
    """Where element `name` of `type_name` goes in JSON, given its value's type suffix.

    A choice element is named without its type (`deceased`, `value`); the JSON key gets the
    value's type (`deceasedBoolean`). A typed name (`deceasedBoolean`) is accepted as well.
    """
    typed_keys = elements.choice_keys(type_name, name)
    if typed_keys is not None:
        key = f"{name}{suffix}" if suffix else ""
        if key not in typed_keys:
            raise Unprocessable(
                f"{where}: choice element '{name}' of {type_name} needs a value of one of the "
                f"types {', '.join(sorted(k[len(name) :] for k in typed_keys))}",
                expression=[where],
            )
        name = key
    info = elements.element(type_name, name)
    if info is None:
        if type_name is not None and elements.type_info(type_name) is not None:
            raise Unprocessable(f"{where}: {type_name} has no element '{name}'", expression=[where])
        return Target(name, None, None)
    return Target(name, info.repeating, info.type_name)


def build_value(part: dict[str, Any], type_name: str | None, where: str) -> ElementValue:
    """The JSON for a `value` part, to be stored as an element of type `type_name`."""
    typed_key = _typed_value_key(part)
    nested = part.get("part")
    resource = part.get("resource")
    if isinstance(resource, dict) and typed_key is None and nested is None:
        return ElementValue(copy.deepcopy(resource))  # e.g. a new contained resource
    if typed_key is not None and nested is None:
        return ElementValue(
            copy.deepcopy(part[typed_key]),
            copy.deepcopy(part.get(f"_{typed_key}")),
            typed_key[len(_VALUE_PREFIX) :],
        )
    if typed_key is None and isinstance(nested, list):
        return ElementValue(_assemble(nested, type_name, where))
    raise BadRequest(
        f"{where}: a value part needs exactly one value[x], a resource, or a list of parts",
        expression=[where],
    )


def _assemble(parts: list[Any], type_name: str | None, where: str) -> dict[str, Any]:
    """Build a complex value from parts named after its child elements."""
    assembled: dict[str, Any] = {}
    for i, part in enumerate(parts):
        part_where = f"{where}.part[{i}]"
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{part_where} needs a name", expression=[f"{part_where}.name"])
        assert isinstance(part, dict)  # a part with a string name is an object
        target = resolve_target(type_name, name, value_suffix(part), part_where)
        value = build_value(part, target.type_name, part_where)
        add_element(assembled, target.key, value, target.repeating, part_where)
    return assembled

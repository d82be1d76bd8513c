"""What the FHIR model says about an element: does it repeat, what is its type, is it a choice.

FHIRPath Patch is defined on the logical model, where a repeating element and a single one look
alike. In JSON they do not: a repeating element is an array, and a choice element `deceased[x]`
is stored under a typed key (`deceasedBoolean`). The patch engine asks this module to bridge
the two. The answers come from fhir.resources' R4B models, which share R4's cardinalities for
the types both releases define; for a type with no model the answer is "unknown" and the
engine falls back to the shape already present in the JSON.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

# Element types declared as `Resource` (Bundle.entry.resource, contained, Parameters.resource):
# the concrete type is whatever `resourceType` the JSON carries.
ANY_RESOURCE = "Resource"


@dataclass(frozen=True)
class ElementInfo:
    """One element of a FHIR type, as the JSON representation needs to know it."""

    repeating: bool
    # Model type name ("HumanName", "PatientContact", "Resource"); None for primitives.
    type_name: str | None
    # For a choice element this is the typed JSON key's suffix ("Boolean" in deceasedBoolean).
    choice_suffix: str | None = None


@dataclass(frozen=True)
class TypeInfo:
    """The elements of one FHIR type, keyed by JSON name, plus its choice element bases."""

    elements: dict[str, ElementInfo]
    choices: dict[str, frozenset[str]]  # base name ("deceased") → typed JSON keys


def _unwrap(annotation: Any) -> tuple[bool, Any]:
    """(repeating, innermost type) for a pydantic field annotation."""
    repeating = False
    current = annotation
    while True:
        origin = typing.get_origin(current)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(current) if a is not type(None)]
            if len(args) != 1:
                return repeating, None
            current = args[0]
        elif origin is list:
            repeating = True
            current = typing.get_args(current)[0]
        elif origin is typing.Annotated:
            return repeating, None  # constrained primitives are declared Annotated[...]
        else:
            return repeating, current


def _type_name(inner: Any) -> str | None:
    name = getattr(inner, "__name__", "")
    # fhir.resources declares complex element types as forward types named "<Type>Type".
    if getattr(inner, "__module__", "") == "abc" and name.endswith("Type"):
        return name[: -len("Type")]
    return None


# Bounded: a contained resource's resourceType is client data and reaches this lookup.
@lru_cache(maxsize=1024)
def type_info(type_name: str) -> TypeInfo | None:
    """The elements of a resource, data type or backbone type; None when it has no model."""
    try:
        model = get_fhir_model_class(type_name)
    except (KeyError, ValueError, TypeError, ImportError, AttributeError):
        return None
    elements: dict[str, ElementInfo] = {}
    choices: dict[str, set[str]] = {}
    for field in model.model_fields.values():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        alias = field.alias or ""
        repeating, inner = _unwrap(field.annotation)
        base = extra.get("one_of_many")
        suffix = None
        if isinstance(base, str) and alias.startswith(base):
            suffix = alias[len(base) :]
            choices.setdefault(base, set()).add(alias)
        elements[alias] = ElementInfo(repeating, _type_name(inner), suffix)
    return TypeInfo(elements, {k: frozenset(v) for k, v in choices.items()})


def element(type_name: str | None, name: str) -> ElementInfo | None:
    """The element `name` (a JSON key) of `type_name`, if the model knows it."""
    if type_name is None:
        return None
    info = type_info(type_name)
    return info.elements.get(name) if info else None


def choice_keys(type_name: str | None, base: str) -> frozenset[str] | None:
    """The typed JSON keys of choice element `base` ("value" → valueString, …), if it is one."""
    if type_name is None:
        return None
    info = type_info(type_name)
    return info.choices.get(base) if info else None


def child_type(type_name: str | None, name: str, value: Any) -> str | None:
    """The type of the element `name` whose JSON value is `value`."""
    info = element(type_name, name)
    if info is None or info.type_name is None:
        return None
    if info.type_name == ANY_RESOURCE:
        resource_type = value.get("resourceType") if isinstance(value, dict) else None
        return resource_type if isinstance(resource_type, str) else None
    return info.type_name

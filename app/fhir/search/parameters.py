"""The search parameter registry, built once from the vendored official R4 definitions.

`registry()` returns the process-wide instance. Each `SearchParam` is bound to one resource type
and carries its compiled extractor, so the write path and the query compiler share one source
of truth for what a parameter means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from app.fhir.search.fhirpath_compile import Extractor, UnsupportedExpression, compile_expression

_DEFINITIONS = Path(__file__).resolve().parent.parent / "definitions"

PARAM_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"}
)
# Common parameters without a usable FHIRPath expression; handled by dedicated code.
_TEXT_SEARCH = frozenset({"_text", "_content"})
# Defined on Resource but not a criterion on stored values: `_query` names a named query.
_NOT_INDEXED = frozenset({"_query"})


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter, compiled relative to the composite's element."""

    param_type: str
    code: str
    extractor: Extractor


@dataclass(frozen=True, slots=True)
class SearchParam:
    resource_type: str
    code: str
    param_type: str
    url: str
    expression: str
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    extractor: Extractor | None = field(default=None, compare=False)

    @property
    def is_text_search(self) -> bool:
        return self.code in _TEXT_SEARCH


class Registry:
    """Search parameters by (resource type, code), plus the official compartment definitions."""

    def __init__(self, definitions: list[dict[str, Any]], compartments: dict[str, Any]) -> None:
        self._by_url = {d["url"]: d for d in definitions}
        self._common: dict[str, SearchParam] = {}
        self._by_type: dict[str, dict[str, SearchParam]] = {}
        self._compartments: dict[str, dict[str, list[str]]] = compartments
        self.uncompiled: list[tuple[str, str, str]] = []
        for definition in definitions:
            for base in definition["base"]:
                if base in ("Resource", "DomainResource"):
                    if definition["code"] not in _NOT_INDEXED:
                        self._common[definition["code"]] = self._bind(definition, None)
                else:
                    self._by_type.setdefault(base, {})[definition["code"]] = self._bind(
                        definition, base
                    )

    def _bind(self, definition: dict[str, Any], resource_type: str | None) -> SearchParam:
        expression = definition.get("expression", "")
        extractor: Extractor | None = None
        components: list[Component] = []
        try:
            if expression:
                extractor = compile_expression(expression, resource_type or "Resource")
            for part in definition.get("component", []):
                target = self._by_url.get(part["definition"])
                if target is None:
                    raise UnsupportedExpression(f"unknown component {part['definition']}")
                components.append(
                    Component(
                        target["type"],
                        target["code"],
                        compile_expression(part["expression"], None, relative=True),
                    )
                )
        except UnsupportedExpression as exc:
            self.uncompiled.append((resource_type or "Resource", definition["code"], str(exc)))
            extractor = None
        return SearchParam(
            resource_type=resource_type or "Resource",
            code=definition["code"],
            param_type=definition["type"],
            url=definition["url"],
            expression=expression,
            targets=tuple(definition.get("target", ())),
            components=tuple(components),
            modifiers=tuple(definition.get("modifier", ())),
            comparators=tuple(definition.get("comparator", ())),
            extractor=extractor,
        )

    @property
    def resource_types(self) -> list[str]:
        return sorted(self._by_type)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        found = self._by_type.get(resource_type, {}).get(code)
        return found if found is not None else self._common.get(code)

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        """Every parameter that applies to `resource_type`, the common ones included."""
        return {**self._common, **self._by_type.get(resource_type, {})}

    def compartment(self, compartment_type: str, resource_type: str) -> list[str]:
        """Param codes linking `resource_type` to a compartment of `compartment_type`."""
        return list(self._compartments.get(compartment_type, {}).get(resource_type, []))

    def compartment_members(self, compartment_type: str) -> list[str]:
        """Resource types that can be in a compartment of `compartment_type` ([] if none)."""
        return sorted(self._compartments.get(compartment_type, {}))

    def patient_compartment(self, resource_type: str) -> list[str]:
        return self.compartment("Patient", resource_type)


@cache
def registry() -> Registry:
    definitions = json.loads((_DEFINITIONS / "search_parameters.json").read_text("utf-8"))
    compartments = json.loads((_DEFINITIONS / "compartments.json").read_text("utf-8"))
    return Registry(definitions, compartments)

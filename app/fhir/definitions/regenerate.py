"""Regenerate the vendored definition files from the official R4 package.

    python -m app.fhir.definitions.regenerate

Writes, next to this module:
- `search_parameters.json`: the 1,375 official SearchParameters, reduced to what search needs;
- `compartments.json`: every official CompartmentDefinition as {compartment: {type: [params]}};
- `choice_elements.json`: FHIR choice elements (`value[x]`…) by element name, with their types.

The output is deterministic (sorted, one record per line) so a regeneration diff is reviewable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.fhir.definitions.npm import ensure_package

HERE = Path(__file__).resolve().parent
_KEPT_FIELDS = (
    "url",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "component",
    "modifier",
    "comparator",
    "multipleOr",
    "multipleAnd",
    "xpathUsage",
)


def _reduce_parameter(resource: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in _KEPT_FIELDS:
        value = resource.get(field)
        if value is None:
            continue
        if field == "component":
            value = [{"definition": c["definition"], "expression": c["expression"]} for c in value]
        elif isinstance(value, list) and field != "component":
            value = sorted(value)
        out[field] = value
    return out


def search_parameters(package: Path) -> list[dict[str, Any]]:
    bundle = json.loads((package / "Bundle-searchParams.json").read_text("utf-8"))
    params = [_reduce_parameter(entry["resource"]) for entry in bundle["entry"]]
    return sorted(params, key=lambda p: p["url"])


def compartments(package: Path) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for path in sorted(package.glob("CompartmentDefinition-*.json")):
        definition = json.loads(path.read_text("utf-8"))
        if definition.get("url", "").startswith("http://hl7.org/fhir/CompartmentDefinition/"):
            members = {
                r["code"]: sorted(r["param"]) for r in definition["resource"] if r.get("param")
            }
            out[definition["code"]] = dict(sorted(members.items()))
    return dict(sorted(out.items()))


def choice_elements() -> dict[str, list[str]]:
    """Choice element names with every type they take anywhere in R4.

    Taken from fhirpathpy's R4 model (itself generated from the R4 StructureDefinitions): the
    examples package has no StructureDefinitions, and this table is all the extractor needs.
    """
    from fhirpathpy.models import models

    by_name: dict[str, set[str]] = {}
    for path, types in models["r4"]["choiceTypePaths"].items():
        by_name.setdefault(path.rsplit(".", 1)[1], set()).update(types)
    return {name: sorted(types) for name, types in sorted(by_name.items())}


def _write_lines(path: Path, records: list[Any]) -> None:
    lines = ",\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
    path.write_text("[\n" + lines + "\n]\n", "utf-8")


def main() -> None:
    package = ensure_package()
    _write_lines(HERE / "search_parameters.json", search_parameters(package))
    (HERE / "compartments.json").write_text(
        json.dumps(compartments(package), indent=1, sort_keys=True) + "\n", "utf-8"
    )
    (HERE / "choice_elements.json").write_text(
        json.dumps(choice_elements(), indent=1, sort_keys=True) + "\n", "utf-8"
    )


if __name__ == "__main__":
    main()

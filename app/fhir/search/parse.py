"""FHIR search query strings → typed criteria (R4 search.html).

`parse(resource_type, items, registry, strict)` validates everything a client sent: parameter
names against the registry, modifiers against the parameter type, prefixes and values against
their grammar. Errors are `BadRequest` whose expression names the offending parameter. Values
stay strings here (with escapes resolved); compile.py turns them into index conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.fhir.outcome import BadRequest
from app.fhir.search import keys as k
from app.fhir.search.parameters import Registry, SearchParam

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = frozenset({"number", "date", "quantity"})
RESULT_PARAMETERS = frozenset(
    {
        "_include",
        "_revinclude",
        "_sort",
        "_count",
        "_total",
        "_summary",
        "_elements",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_type",
        "_cursor",
    }
)
_MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"text", "not", "of-type", "missing"}),
    "reference": frozenset({"identifier", "missing"}),
    "uri": frozenset({"below", "above", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "composite": frozenset({"missing"}),
    "special": frozenset({"missing"}),
}
# Defined by R4 but needing terminology or list support Hestia does not have yet.
_UNSUPPORTED_MODIFIERS = frozenset({"in", "not-in", "below", "above", "type"})


@dataclass(frozen=True, slots=True)
class Criterion:
    """One parameter occurrence: its values are ORed; criteria in a query are ANDed.

    `chain` is set for `ref.param=value` (the criterion applies to the referenced resources,
    of `chain_types`); `has` for `_has:Type:ref:param=value`.
    """

    name: str
    param: SearchParam
    modifier: str | None = None
    values: tuple[str, ...] = ()
    chain: Criterion | None = None
    chain_types: tuple[str, ...] = ()
    has_type: str | None = None


@dataclass(slots=True)
class SearchQuery:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    result: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def result_values(self, name: str) -> list[str]:
        return [value for key, value in self.result if key.split(":", 1)[0] == name]


def split_unescaped(text: str, separator: str) -> list[str]:
    """Split on `separator` not preceded by a backslash escape; escapes are kept."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ",|$\\":
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def split_prefix(value: str, name: str) -> tuple[str, str]:
    """('ge', '2013') from 'ge2013'; a value without a prefix means 'eq'."""
    if len(value) > 2 and value[:2] in PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    if value[:2].isalpha() and not value[:1].isdigit():
        raise BadRequest(
            f"Unknown prefix in '{value[:40]}' for parameter '{name}'", expression=[name]
        )
    return "eq", value


def _check_value(param: SearchParam, name: str, modifier: str | None, raw: str) -> None:
    """Reject values the parameter's type cannot mean (BadRequest naming the parameter)."""
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise BadRequest(f"':missing' takes true or false, not '{raw[:40]}'", expression=[name])
        return
    kind = param.param_type
    if kind in ORDERED_TYPES:
        _, text = split_prefix(raw, name)
        if kind == "date":
            if k.date_range(text) is None:
                raise BadRequest(
                    f"'{text[:40]}' is not a valid date for '{name}'", expression=[name]
                )
        else:
            number = split_unescaped(text, "|")[0]
            if k.decimal_range(unescape(number)) is None:
                raise BadRequest(
                    f"'{number[:40]}' is not a valid number for '{name}'", expression=[name]
                )


def _resolve_chain(
    registry: Registry, resource_type: str, name: str, path: list[str], value: str, strict: bool
) -> tuple[SearchParam, str | None, Criterion | None, tuple[str, ...]]:
    """The parameter at the head of `path` (`subject:Patient`, `name`…) with its chained tail."""
    head, _, modifier = path[0].partition(":")
    param = registry.get(resource_type, head)
    if param is None:
        raise BadRequest(
            f"Unknown search parameter '{head[:60]}' for {resource_type}", expression=[name]
        )
    if len(path) == 1:
        return param, modifier or None, None, ()
    if param.param_type != "reference":
        raise BadRequest(f"'{head}' is not a reference and cannot be chained", expression=[name])
    targets = (modifier,) if modifier else param.targets
    if modifier and modifier not in param.targets:
        raise BadRequest(f"'{head}' cannot refer to '{modifier[:40]}'", expression=[name])
    usable = [t for t in targets if registry.get(t, path[1].partition(":")[0]) is not None]
    if not usable:
        raise BadRequest(
            f"No target of '{head}' has a search parameter '{path[1][:60]}'", expression=[name]
        )
    chained = _criterion(registry, usable[0], name, path[1:], value, strict)
    return param, None, chained, tuple(usable)


def _criterion(
    registry: Registry, resource_type: str, name: str, path: list[str], value: str, strict: bool
) -> Criterion:
    param, modifier, chained, chain_types = _resolve_chain(
        registry, resource_type, name, path, value, strict
    )
    if chained is not None:
        return Criterion(name, param, None, (), chained, chain_types)
    if modifier is not None:
        allowed = _MODIFIERS.get(param.param_type, frozenset())
        is_type_modifier = param.param_type == "reference" and modifier in param.targets
        if modifier not in allowed and not is_type_modifier:
            if modifier in _UNSUPPORTED_MODIFIERS:
                raise BadRequest(
                    f"Modifier ':{modifier}' is not supported for '{param.code}'",
                    expression=[name],
                    code="not-supported",
                )
            raise BadRequest(
                f"Unknown modifier ':{modifier[:40]}' for parameter '{param.code}'",
                expression=[name],
            )
    values = tuple(split_unescaped(value, ","))
    for raw in values:
        _check_value(param, name, modifier, raw)
    return Criterion(name, param, modifier, values)


def _has_criterion(
    registry: Registry, resource_type: str, name: str, value: str, strict: bool
) -> Criterion:
    # _has:Observation:patient:code=x  /  _has:Observation:patient:_has:AuditEvent:entity:user=y
    parts = name.split(":", 3)
    if len(parts) < 4:
        raise BadRequest(f"Malformed '_has' parameter '{name[:80]}'", expression=[name])
    _, source_type, ref_code, rest = parts
    ref = registry.get(source_type, ref_code)
    if ref is None or ref.param_type != "reference":
        raise BadRequest(
            f"'{ref_code[:40]}' is not a reference parameter of '{source_type[:40]}'",
            expression=[name],
        )
    if ref.targets and resource_type not in ref.targets:
        raise BadRequest(
            f"'{source_type}.{ref_code}' cannot refer to {resource_type}", expression=[name]
        )
    if rest.startswith("_has:"):
        inner = _has_criterion(registry, source_type, rest, value, strict)
    else:
        inner = _criterion(registry, source_type, name, rest.split("."), value, strict)
    return Criterion(name, ref, None, (), inner, (source_type,), has_type=source_type)


def _list_criterion(registry: Registry, resource_type: str, name: str, value: str) -> Criterion:
    # _list=42 is `_has:List:item:_id=42`: the ids List/42's entries point at.
    item = registry.get("List", "item")
    list_id = registry.get("List", "_id")
    if item is None or list_id is None:
        raise BadRequest("'_list' is not available", expression=[name], code="not-supported")
    inner = _criterion(registry, "List", name, ["_id"], value, strict=True)
    return Criterion(name, item, None, (), inner, ("List",), has_type="List")


def parse(
    resource_type: str, items: list[tuple[str, str]], registry: Registry, strict: bool
) -> SearchQuery:
    """Typed criteria for a search on `resource_type` (items as decoded query pairs)."""
    query = SearchQuery(resource_type)
    for name, value in items:
        base_name = name.split(":", 1)[0]
        if base_name in RESULT_PARAMETERS:
            query.result.append((name, value))
            continue
        if value == "":
            # An empty value constrains nothing; ignoring it is what clients expect.
            query.warnings.append(f"Parameter '{name[:60]}' has no value and was ignored")
            continue
        try:
            if name == "_list":
                query.criteria.append(_list_criterion(registry, resource_type, name, value))
            elif base_name == "_has":
                query.criteria.append(_has_criterion(registry, resource_type, name, value, strict))
            else:
                query.criteria.append(
                    _criterion(registry, resource_type, name, name.split("."), value, strict)
                )
        except BadRequest as exc:
            unknown = exc.diagnostics.startswith("Unknown search parameter")
            if unknown and not strict:
                query.warnings.append(exc.diagnostics)
                continue
            raise
    return query

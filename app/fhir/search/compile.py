"""Typed criteria → a MongoDB filter over the precomputed `s` keys (see extract.py).

Contract with the executor
--------------------------
`compile_query(query, now_ms=None)` returns a filter dict built only from equality, `$in`,
`$nin`, `$ne`, `$gt/$gte/$lt/$lte`, `$and`, `$or` and `$exists` over `s.<key>` fields and
`_id`. Field names come from the registry's parameter codes, never from client text; client
values only ever appear as operands (plain strings and numbers).

Chained parameters and `_has` need other collections, so the filter may contain `Subquery`
objects where a condition would stand. Before sending the filter to the store, the executor
calls

    final = await resolve_subqueries(filter, find_values)

with `find_values(resource_type, filter, field, limit) -> list[str]`: an indexed query on the
current versions of `resource_type` (not deleted, compartment filter applied) returning the
values of `field` of at most `limit` matching documents, as one flat list: for "_id" one id per
document, for "s.<code>" every element of each document's array. Subqueries nest (chains of
any depth) and are resolved innermost first. `SUBQUERY_LIMIT` caps each one; when a subquery
hits the cap, `resolve_subqueries` raises `Unprocessable` (too costly) rather than silently
returning a partial answer.

Exactness: MongoDB applies each operator of a condition on an array field to *any* element, so
`{"s.k": {"$gte": a, "$lt": b}}` also matches a document where one element is >= a and another
is < b. The database filter is therefore a (tight, index-served) superset wherever a field gets a
two-sided range: quantities with units, composites, and string prefixes longer than 32
characters. When `needs_recheck(filter)` is true the executor keeps only the fetched documents
for which `recheck(filter, doc)` holds; it evaluates the same filter with one element having to
satisfy all operators of a field. Date ranges keep their low and high bounds in two fields, so a
resource with several values of one date parameter can still match on the low bound of one and
the high bound of another (single-valued dates are exact).

Deleted documents: the executor adds its own `deleted: False` (and the compartment filter).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from app.fhir.outcome import BadRequest, FhirError
from app.fhir.search import keys as k
from app.fhir.search.extract import UCUM, canonical_quantity, words
from app.fhir.search.parameters import Registry
from app.fhir.search.parse import Criterion, SearchQuery, split_prefix, split_unescaped, unescape

JsonDict = dict[str, Any]
SUBQUERY_LIMIT = 10_000
FindValues = Callable[[str, JsonDict, str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Subquery:
    """Run `filter` on `resource_type`, then condition `then_field` on what it found.

    mode "chain": found ids become `then_field: {$in: ['<resource_type>/<id>', ...]}`.
    mode "has": the found documents' `s.<ref>` values pointing at `target_type` become
    `_id: {$in: [ids]}`.
    """

    resource_type: str
    filter: JsonDict
    then_field: str
    mode: str
    target_type: str = ""

    def condition(self, found: list[str]) -> JsonDict:
        if self.mode == "chain":
            return {self.then_field: {"$in": sorted({f"{self.resource_type}/{i}" for i in found})}}
        prefix = self.target_type + "/"
        ids = {
            v[len(prefix) :] for v in found if v.startswith(prefix) and "/" not in v[len(prefix) :]
        }
        return {"_id": {"$in": sorted(ids)}}


def _field(code: str, suffix: str = "") -> str:
    return f"s.{code}{suffix}"


def _any(conditions: list[JsonDict]) -> JsonDict:
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}


def _all(conditions: list[JsonDict]) -> JsonDict:
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _in(field: str, values: list[Any]) -> JsonDict:
    """Equality with any of `values` (an empty list matches nothing, as `$in: []` does)."""
    unique = list(dict.fromkeys(values))
    return {field: unique[0]} if len(unique) == 1 else {field: {"$in": unique}}


# --- per type --------------------------------------------------------------------------------


# Date parameters whose every value is one instant, so that its range has no width (`:lo` =
# `:hi`): conditions and sorts on them need the `:lo` key only, which one index then serves
# (store/indexes.py). `meta.lastUpdated` is always a server-set instant to the millisecond.
POINT_DATES = frozenset({"_lastUpdated"})
POINT_KEYS = frozenset(f"s.{code}:lo" for code in POINT_DATES)
# The key of `_lastUpdated`: the instant a document's `updated` holds, in epoch ms.
LAST_UPDATED_KEY = "s._lastUpdated:lo"


def _point_condition(code: str, prefix: str, low: int, high: int, now_ms: int) -> JsonDict:
    """`_date_condition` for a POINT_DATES parameter: each prefix is one range on `:lo`."""
    at = _field(code, ":lo")
    if prefix == "eq":
        return {at: {"$gte": low, "$lte": high}}
    if prefix == "ne":
        return {"$or": [_below(at, "$lt", low), _above(at, "$gt", high)]}
    if prefix in ("gt", "sa"):
        return _above(at, "$gt", high)
    if prefix in ("lt", "eb"):
        return _below(at, "$lt", low)
    if prefix == "ge":
        return _above(at, "$gte", low)
    if prefix == "le":
        return _below(at, "$lte", high)
    gap = max(abs(now_ms - low) // 10, 86_400_000)
    return {at: {"$gte": low - gap, "$lte": high + gap}}


# Every stored date key lies between these (open Period ends are stored as the extremes of
# keys.EPOCH_MS_*; a zone offset can move a bound by less than a day). Comparisons on a date
# key name both ends: the embedded server scans the whole collection for a one-sided range,
# however it is indexed (`{k: {$gte: x}}` took 22 s over 85,000 documents, `{k: {$gte: x,
# $lte: MAX}}` 3 ms). On MongoDB the two are the same index scan.
DATE_FLOOR = k.EPOCH_MS_MIN - 86_400_000
DATE_CEILING = k.EPOCH_MS_MAX + 86_400_000


def _above(field: str, operator: str, value: int) -> JsonDict:
    return {field: {operator: value, "$lte": DATE_CEILING}}


def _below(field: str, operator: str, value: int) -> JsonDict:
    return {field: {operator: value, "$gte": DATE_FLOOR}}


def _date_condition(code: str, raw: str, now_ms: int) -> JsonDict:
    prefix, text = split_prefix(raw, code)
    found = k.date_range(text)
    if found is None:  # checked by parse(); kept for direct callers
        raise BadRequest(f"'{text[:40]}' is not a valid date", expression=[code])
    low, high = found
    if code in POINT_DATES:
        return _point_condition(code, prefix, low, high, now_ms)
    lo, hi = _field(code, ":lo"), _field(code, ":hi")
    contained = {**_above(lo, "$gte", low), **_below(hi, "$lte", high)}
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return {"$or": [_below(lo, "$lt", low), _above(hi, "$gt", high)]}
    if prefix == "gt":
        return _above(hi, "$gt", high)
    if prefix == "lt":
        return _below(lo, "$lt", low)
    # ge/le also carry a condition both branches imply (every value ends after it starts), so
    # the executor has one indexable range to drive the query with.
    if prefix == "ge":
        return {"$and": [_above(hi, "$gte", low), {"$or": [_above(hi, "$gt", high), contained]}]}
    if prefix == "le":
        return {"$and": [_below(lo, "$lte", high), {"$or": [_below(lo, "$lt", low), contained]}]}
    if prefix == "sa":
        return _above(lo, "$gt", high)
    if prefix == "eb":
        return _below(hi, "$lt", low)
    # ap: R4 leaves the width to the server; 10% of the distance from now, at least a day.
    gap = max(abs(now_ms - low) // 10, 86_400_000)
    return {**_below(lo, "$lte", high + gap), **_above(hi, "$gte", low - gap)}


def _number_bounds(prefix: str, text: str, code: str) -> tuple[str, Decimal, Decimal, Decimal]:
    found = k.decimal_range(text)
    if found is None:
        raise BadRequest(f"'{text[:40]}' is not a valid number", expression=[code])
    value, low, high = found
    if prefix == "ap":
        spread = abs(value) / 10
        return prefix, value, value - spread, value + spread
    return prefix, value, low, high


def _range_condition(field: str, prefix: str, value: Any, low: Any, high: Any) -> JsonDict:
    """Numeric or sortable-string comparison of one field against a search value's range."""
    if prefix in ("eq", "ap"):
        return {
            field: {"$gte": low, "$lt": high} if prefix == "eq" else {"$gte": low, "$lte": high}
        }
    if prefix == "ne":
        return {"$or": [{field: {"$lt": low}}, {field: {"$gte": high}}]}
    operator = {"gt": "$gt", "sa": "$gt", "lt": "$lt", "eb": "$lt", "ge": "$gte", "le": "$lte"}
    return {field: {operator[prefix]: value}}


def _number_condition(code: str, raw: str) -> JsonDict:
    prefix, value, low, high = _number_bounds(*split_prefix(raw, code), code)
    return _range_condition(_field(code), prefix, float(value), float(low), float(high))


def _encoded_range(
    field: str, head: str, prefix: str, value: Decimal, low: Decimal, high: Decimal
) -> JsonDict:
    """A range on 'head + sortable_number(x)' strings (head pins the unit or composite parts)."""

    def enc(x: Decimal) -> str:
        return head + k.sortable_number(float(x))

    if prefix in ("eq", "ap"):
        return {field: {"$gte": enc(low), "$lte" if prefix == "ap" else "$lt": enc(high)}}
    start, end = head + "0" * 16, head + "g"  # every encoded number sorts between these
    if prefix == "ne":
        return {
            "$or": [
                {field: {"$gte": start, "$lt": enc(low)}},
                {field: {"$gte": enc(high), "$lt": end}},
            ]
        }
    if prefix in ("gt", "sa"):
        return {field: {"$gt": enc(value), "$lt": end}}
    if prefix == "ge":
        return {field: {"$gte": enc(value), "$lt": end}}
    if prefix in ("lt", "eb"):
        return {field: {"$gte": start, "$lt": enc(value)}}
    return {field: {"$gte": start, "$lte": enc(value)}}


def _quantity_condition(code: str, raw: str) -> JsonDict:
    prefix, text = split_prefix(raw, code)
    parts = [unescape(p) for p in split_unescaped(text, "|")]
    if len(parts) not in (1, 3):
        raise BadRequest(f"'{raw[:60]}' is not number|system|code", expression=[code])
    prefix, value, low, high = _number_bounds(prefix, parts[0], code)
    if len(parts) == 1 or not parts[2]:
        return _range_condition(_field(code), prefix, float(value), float(low), float(high))
    system, unit = parts[1], parts[2]
    if system == UCUM:
        canon_value = canonical_quantity(float(value), system, unit)
        canon_low = canonical_quantity(float(low), system, unit)
        canon_high = canonical_quantity(float(high), system, unit)
        if canon_value and canon_low and canon_high:
            head = canon_value[1] + "|"
            return _encoded_range(
                _field(code, ":canon"),
                head,
                prefix,
                Decimal(repr(canon_value[0])),
                Decimal(repr(canon_low[0])),
                Decimal(repr(canon_high[0])),
            )
    if system:
        return _encoded_range(_field(code, ":sc"), f"{system}|{unit}|", prefix, value, low, high)
    return _encoded_range(_field(code, ":c"), f"{unit}|", prefix, value, low, high)


def _token_key(raw: str) -> str:
    parts = split_unescaped(raw, "|")
    if len(parts) == 1:
        return unescape(raw)
    return f"{unescape(parts[0])}|{unescape('|'.join(parts[1:]))}"


def _token_condition(code: str, modifier: str | None, values: list[str]) -> JsonDict:
    if code == "_id":
        return _in("_id", [unescape(v) for v in values])
    if modifier == "text":
        return _in(_field(code, ":text"), [k.fold(unescape(v))[: k.PREFIX_MAX] for v in values])
    if modifier == "of-type":
        keys = []
        for raw in values:
            parts = [unescape(p) for p in split_unescaped(raw, "|")]
            if len(parts) != 3:
                raise BadRequest(
                    f"':of-type' needs system|code|value, got '{raw[:60]}'", expression=[code]
                )
            keys.append("|".join(parts))
        return _in(_field(code, ":of-type"), keys)
    keys = [_token_key(v) for v in values]
    if modifier == "not":
        return {_field(code): {"$nin": keys}}
    return _in(_field(code), keys)


def _string_condition(code: str, modifier: str | None, values: list[str]) -> JsonDict:
    texts = [unescape(v) for v in values]
    if modifier == "exact":
        return _in(_field(code, ":x"), texts)
    conditions: list[JsonDict] = []
    for text in texts:
        folded = k.fold(text)
        if modifier == "contains":
            if len(folded) <= k.GRAM_MAX:
                conditions.append({_field(code, ":g"): folded})
            else:
                trigrams = sorted({folded[i : i + 3] for i in range(len(folded) - 2)})
                conditions.append(_all([{_field(code, ":g"): g} for g in trigrams]))
        elif len(folded) <= k.PREFIX_MAX:
            conditions.append({_field(code, ":p"): folded})
        else:
            conditions.append(
                {
                    "$and": [
                        {_field(code, ":p"): folded[: k.PREFIX_MAX]},
                        {_field(code): {"$gte": folded, "$lt": folded + "\uffff"}},
                    ]
                }
            )
    return _any(conditions)


def _reference_condition(criterion: Criterion) -> JsonDict:
    code, modifier = criterion.param.code, criterion.modifier
    texts = [unescape(v) for v in criterion.values]
    if modifier == "identifier":
        return _in(_field(code, ":identifier"), [_token_key(v) for v in criterion.values])
    if modifier:  # a type modifier: subject:Patient=123
        texts = [t if "/" in t else f"{modifier}/{t}" for t in texts]
    return _in(_field(code), [key for t in texts for key in k.reference_keys(t)[:1]])


def _uri_condition(code: str, modifier: str | None, values: list[str]) -> JsonDict:
    texts = [unescape(v) for v in values]
    if modifier == "below":
        return _in(_field(code, ":below"), [t.rstrip("/") for t in texts])
    if modifier == "above":
        return _in(_field(code), [p for t in texts for p in k.uri_prefixes(t)])
    return _in(_field(code), texts)


def _composite_condition(criterion: Criterion) -> JsonDict:
    components = criterion.param.components
    conditions: list[JsonDict] = []
    for raw in criterion.values:
        parts = split_unescaped(raw, "$")
        if len(parts) != len(components):
            raise BadRequest(
                f"'{raw[:60]}' needs {len(components)} '$'-separated parts",
                expression=[criterion.name],
            )
        head_keys = [""]
        for position, (component, part) in enumerate(zip(components, parts, strict=True)):
            last = position == len(components) - 1
            sep = "$" if position else ""
            if component.param_type in ("number", "quantity", "date") and last:
                ranges = [
                    _composite_ordered(criterion, component.param_type, f"{h}{sep}", part)
                    for h in head_keys
                ]
                conditions.append(_any(ranges))
                break
            key = _composite_equal_key(component.param_type, part, criterion.name)
            head_keys = [f"{h}{sep}{key}" for h in head_keys]
        else:
            conditions.append(_in(_field(criterion.param.code), head_keys))
    return _any(conditions)


def _composite_equal_key(param_type: str, part: str, name: str) -> str:
    if param_type == "token":
        return _token_key(part)
    if param_type == "string":
        return k.fold(unescape(part))
    if param_type in ("number", "quantity"):
        found = k.decimal_range(unescape(split_unescaped(part, "|")[0]))
        if found is None:
            raise BadRequest(f"'{part[:40]}' is not a number", expression=[name])
        return "n:" + k.sortable_number(float(found[0]))
    return unescape(part)


def _composite_ordered(criterion: Criterion, param_type: str, head: str, part: str) -> JsonDict:
    code = criterion.param.code
    field = _field(code)
    prefix, text = split_prefix(part, criterion.name)
    if param_type == "date":
        found = k.date_range(text)
        if found is None:
            raise BadRequest(f"'{text[:40]}' is not a valid date", expression=[criterion.name])
        low, high = (Decimal(found[0]), Decimal(found[1] + 1))
        return _encoded_range(field, head + "d:", prefix, low, low, high)
    pieces = [unescape(p) for p in split_unescaped(text, "|")]
    prefix, value, low, high = _number_bounds(prefix, pieces[0], criterion.name)
    if len(pieces) == 3 and pieces[2]:
        unit_head = f"u:{pieces[1]}|{pieces[2]}|" if pieces[1] else f"c:{pieces[2]}|"
        return _encoded_range(field, head + unit_head, prefix, value, low, high)
    return _encoded_range(field, head + "n:", prefix, value, low, high)


def _text_condition(code: str, values: list[str]) -> JsonDict:
    conditions = []
    for raw in values:
        found = sorted(words(unescape(raw)))
        if found:
            conditions.append(_all([{_field(code): w} for w in found]))
    if not conditions:
        raise BadRequest(f"'{code}' needs at least one word", expression=[code])
    return _any(conditions)


def compile_criterion(criterion: Criterion, now_ms: int, resource_type: str) -> JsonDict | Subquery:
    """One criterion on `resource_type` (a filter, or a `Subquery` for chains and `_has`)."""
    param = criterion.param
    code = param.code
    if criterion.has_type is not None:
        assert criterion.chain is not None
        inner = compile_criterion(criterion.chain, now_ms, criterion.has_type)
        return Subquery(
            criterion.has_type,
            inner if isinstance(inner, dict) else {"$and": [inner]},
            _field(code),
            "has",
            target_type=resource_type,
        )
    if criterion.chain is not None:
        branches = []
        for target in criterion.chain_types:
            inner = compile_criterion(criterion.chain, now_ms, target)
            sub_filter = inner if isinstance(inner, dict) else {"$and": [inner]}
            branches.append(Subquery(target, sub_filter, _field(code), "chain"))
        return branches[0] if len(branches) == 1 else {"$or": branches}
    if criterion.modifier == "missing":
        present_field = _field(code, ":lo") if param.param_type == "date" else _field(code)
        if code == "_id":
            present_field = "_id"
        return {present_field: {"$exists": criterion.values[0] == "false"}}
    values = list(criterion.values)
    kind = param.param_type
    if param.is_text_search:
        return _text_condition(code, values)
    if kind == "date":
        return _any([_date_condition(code, v, now_ms) for v in values])
    if kind == "number":
        return _any([_number_condition(code, v) for v in values])
    if kind == "quantity":
        return _any([_quantity_condition(code, v) for v in values])
    if kind == "token":
        return _token_condition(code, criterion.modifier, values)
    if kind == "string":
        return _string_condition(code, criterion.modifier, values)
    if kind == "reference":
        return _reference_condition(criterion)
    if kind == "uri":
        return _uri_condition(code, criterion.modifier, values)
    if kind == "composite":
        return _composite_condition(criterion)
    raise BadRequest(
        f"Search parameter '{code}' is not supported",
        expression=[criterion.name],
        code="not-supported",
    )


def compile_query(query: SearchQuery, now_ms: int | None = None) -> JsonDict:
    """The filter for `query` (may hold `Subquery` nodes; see the module docstring)."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    conditions: list[Any] = []
    for criterion in query.criteria:
        conditions.append(compile_criterion(criterion, now, query.resource_type))
    if not conditions:
        return {}
    return {"$and": conditions}


async def resolve_subqueries(node: Any, find_values: FindValues) -> Any:
    """Replace every `Subquery` in a compiled filter by the condition its results give."""
    if isinstance(node, Subquery):
        inner = await resolve_subqueries(node.filter, find_values)
        field = "_id" if node.mode == "chain" else node.then_field
        found = await find_values(node.resource_type, inner, field, SUBQUERY_LIMIT + 1)
        if len(found) > SUBQUERY_LIMIT:
            raise FhirError(
                f"A chained or _has search on {node.resource_type} matches more than "
                f"{SUBQUERY_LIMIT} resources; narrow it down",
                status=422,
                code="too-costly",
            )
        return node.condition(found)
    if isinstance(node, dict):
        return {key: await resolve_subqueries(value, find_values) for key, value in node.items()}
    if isinstance(node, list):
        return [await resolve_subqueries(item, find_values) for item in node]
    return node


_RANGE_OPERATORS = frozenset({"$gt", "$gte", "$lt", "$lte"})


def needs_recheck(node: Any) -> bool:
    """True when some field condition holds two range operators (see the module docstring)."""
    if isinstance(node, list):
        return any(needs_recheck(item) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key in ("$and", "$or"):
            if needs_recheck(value):
                return True
        elif isinstance(value, dict) and len(_RANGE_OPERATORS.intersection(value)) > 1:
            return True
    return False


def _same_kind(a: Any, b: Any) -> bool:
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, numeric) and isinstance(b, numeric)) or type(a) is type(b)


def _element_satisfies(element: Any, operator: str, operand: Any) -> bool:
    if operator == "$in":
        return element in operand
    if not _same_kind(element, operand):
        return False
    if operator == "$gt":
        return bool(element > operand)
    if operator == "$gte":
        return bool(element >= operand)
    if operator == "$lt":
        return bool(element < operand)
    if operator == "$lte":
        return bool(element <= operand)
    raise ValueError(f"unexpected operator {operator}")


def _condition_holds(values: list[Any] | None, condition: Any) -> bool:
    if not isinstance(condition, dict):
        return values is not None and condition in values
    present = values or []
    negative = {op: condition[op] for op in ("$nin", "$ne", "$exists") if op in condition}
    if "$nin" in negative and any(v in negative["$nin"] for v in present):
        return False
    if "$ne" in negative and negative["$ne"] in present:
        return False
    if "$exists" in negative and (values is not None) != negative["$exists"]:
        return False
    positive = [(op, operand) for op, operand in condition.items() if op not in negative]
    if not positive:
        return True
    return any(all(_element_satisfies(v, op, arg) for op, arg in positive) for v in present)


def recheck(node: JsonDict, document: JsonDict) -> bool:
    """Evaluate a resolved filter on a stored document, one element per field condition."""
    for key, condition in node.items():
        if key == "$and":
            if not all(recheck(part, document) for part in condition):
                return False
        elif key == "$or":
            if not any(recheck(part, document) for part in condition):
                return False
        else:
            if key == "_id":
                values: list[Any] | None = [document.get("_id")]
            else:
                stored = document.get("s", {}).get(key.removeprefix("s."))
                values = None if stored is None else list(stored)
            if not _condition_holds(values, condition):
                return False
    return True


def sort_spec(query: SearchQuery, registry: Registry) -> list[tuple[str, int]]:
    """MongoDB sort keys for `_sort` (e.g. `-date,name` → [('s.date:hi', -1), ('s.name', 1)]).

    MongoDB sorts an array field by its smallest element ascending and its largest descending,
    which is what a multi-valued parameter needs; dates sort on their low bound ascending and
    their high bound descending. `_id` is always added last so pages are stable.
    """
    spec: list[tuple[str, int]] = []
    for value in query.result_values("_sort"):
        for item in value.split(","):
            descending = item.startswith("-")
            code = item.removeprefix("-").strip()
            if not code:
                continue
            param = registry.get(query.resource_type, code)
            if (
                param is None
                or param.param_type in ("composite", "special")
                or param.is_text_search
            ):
                raise BadRequest(f"Cannot sort by '{code[:60]}'", expression=["_sort"])
            direction = -1 if descending else 1
            if code == "_id":
                field = "_id"
            elif param.param_type == "date":
                field = _field(code, ":hi" if descending and code not in POINT_DATES else ":lo")
            else:
                field = _field(code)
            spec.append((field, direction))
    if not any(field == "_id" for field, _ in spec):
        spec.append(("_id", 1))
    return spec

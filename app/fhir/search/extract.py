"""Search index keys computed at write time: the `s` field of a stored document.

`extract_index(resource)` runs every registered parameter's compiled extractor (see
fhirpath_compile.py) and normalises the values into flat keys, so that every search compiles to
equality and range conditions only (compile.py). For a parameter with code `c`:

    type        key            values
    string      c              folded full values (lower-case, accent-free, single-spaced)
                c:p            every prefix (1..32 chars) of each folded value  → default search
                c:x            original values                                   → :exact
                c:g            distinct 1..3-char grams of each folded value     → :contains
    token       c              'code', 'system|code', 'system|' and, without system, '|code';
                               booleans 'true'/'false'; Identifier/ContactPoint use value as code
                c:text         prefixes of folded display/text                   → :text
                c:of-type      'typesystem|typecode|value' (Identifier only)     → :of-type
    reference   c              'Type/id' and 'id' (relative); absolute/canonical as given and
                               without '|version'; `#contained` refs are skipped
                c:identifier   token keys of Reference.identifier                → :identifier
    uri         c              the value as given
                c:below        every path prefix of the value                   → :below
    date        c:lo, c:hi     epoch ms, inclusive range of each value's precision; an open
                               Period end is EPOCH_MS_MAX, an open start EPOCH_MS_MIN
    number      c              the values as floats
    quantity    c              the values as floats (any unit)
                c:sc           'system|code|N'  (N = keys.sortable_number(value))
                c:c            'code|N' (also 'unit|N' when unit differs from code)
                c:canon        'ucumcode|N' with value and unit in canonical UCUM
    composite   c              component keys joined by '$'; a token/reference/uri component
                               contributes its equality keys, a string its folded value, a
                               number/quantity 'n:N', 'u:system|code|N', 'c:code|N', a date
                               'd:N(low)'
    special     _text          distinct folded words of the narrative (at most 512)
                _content       the same for the narrative plus every string in the resource
    pair        patient+code   a digest per (patient key, code key), on the types that have
                               both parameters: one index for both (pairs.py)

Lists are deduplicated; a parameter without values has no key at all, so `:missing=true` is
`$exists: false`. Sorting uses MongoDB's own array rule (ascending sorts by the smallest
element, descending by the largest) on `c`, or on `c:lo`/`c:hi` for dates.

Exactness: a condition with two range operators on one multikey field may be met by two
different elements; compile.py says when (`needs_recheck`) and offers `recheck` for the fetched
documents. Dates keep low and high bounds in two fields, so only a resource with several values
of one date parameter can match on the low bound of one value and the high bound of another.
`:contains` with more than 3 characters requires all trigrams of the text, which can match
strings holding them apart (rare; the originals are in `c:x` if an exact filter is wanted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache, lru_cache
from typing import Any

from app.fhir.search import keys as k
from app.fhir.search.fhirpath_compile import reference_type
from app.fhir.search.pairs import PAIR_KEY, pair_types, pair_values
from app.fhir.search.parameters import SearchParam, registry

JsonDict = dict[str, Any]


class Keys(dict[str, dict[Any, None]]):
    """Keys being collected (ordered sets, turned into lists at the end), plus a per-resource
    memo: one CodeableConcept is read by several parameters (code, combo-code, composites)."""

    __slots__ = ("token_memo",)

    def __init__(self) -> None:
        super().__init__()
        self.token_memo: dict[int, tuple[list[str], list[str], list[str]]] = {}

    def tokens(self, node: Any) -> tuple[list[str], list[str], list[str]]:
        if not isinstance(node, dict):
            return token_values(node)
        found = self.token_memo.get(id(node))
        if found is None:
            found = self.token_memo[id(node)] = token_values(node)
        return found


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_WORD = re.compile(r"\w+")
_TAG = re.compile(r"<[^>]*>")
_MAX_WORDS = 512
_TEXT_BUDGET = 65_536
UCUM = "http://unitsofmeasure.org"


def _add(out: Keys, key: str, values: Iterable[Any]) -> None:
    bucket = out.get(key)
    if bucket is None:
        bucket = out[key] = {}
    for value in values:
        bucket[value] = None


# --- raw value → plain strings / codings -----------------------------------------------------


def string_values(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if not isinstance(node, dict):
        return []
    parts = _NAME_PARTS if ("family" in node or "given" in node) else _ADDRESS_PARTS
    out: list[str] = []
    for part in parts:
        value = node.get(part)
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, list):
            out.extend(v for v in value if isinstance(v, str))
    return out


def _token_keys(system: str | None, code: str) -> list[str]:
    if system:
        return [code, f"{system}|{code}", f"{system}|"]
    return [code, f"|{code}"]


@lru_cache(maxsize=65_536)
def _string_keys(original: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(folded, prefixes, grams) of one string; names and displays repeat across resources."""
    folded = k.fold(original)
    return folded, tuple(k.prefixes(folded)), tuple(k.grams(folded))


def _index_string(out: Keys, code: str, node: Any) -> None:
    for original in string_values(node):
        folded, prefixes, grams = _string_keys(original)
        if not folded:
            continue
        _add(out, code, (folded,))
        _add(out, code + ":p", prefixes)
        _add(out, code + ":x", (original,))
        _add(out, code + ":g", grams)


def _index_text(out: Keys, key: str, text: Any) -> None:
    if isinstance(text, str) and text:
        _add(out, key, _string_keys(text)[1])


def token_values(node: Any) -> tuple[list[str], list[str], list[str]]:
    """(equality keys, display texts, of-type keys) of one token-typed value."""
    if isinstance(node, bool):
        return (["true" if node else "false"], [], [])
    if isinstance(node, str):
        return ([node], [], [])
    if isinstance(node, int | float):
        return ([str(node)], [], [])
    if not isinstance(node, dict):
        return ([], [], [])
    if "coding" in node or ("text" in node and "value" not in node and "code" not in node):
        keys: list[str] = []
        texts = [node["text"]] if isinstance(node.get("text"), str) else []
        for coding in node.get("coding") or ():
            if isinstance(coding, dict):
                sub_keys, sub_texts, _ = token_values(coding)
                keys += sub_keys
                texts += sub_texts
        return (keys, texts, [])
    value = node.get("value")
    if isinstance(value, str) and "code" not in node:
        system = node.get("system")
        if system in _CONTACT_SYSTEMS:
            return (_token_keys(system, value), [], [])
        of_type: list[str] = []
        type_texts: list[str] = []
        id_type = node.get("type")
        if isinstance(id_type, dict):
            for coding in id_type.get("coding") or ():
                if isinstance(coding, dict) and coding.get("code"):
                    of_type.append(f"{coding.get('system', '')}|{coding['code']}|{value}")
            if isinstance(id_type.get("text"), str):
                type_texts.append(id_type["text"])
        return (_token_keys(system, value), type_texts, of_type)
    code_value = node.get("code")
    if isinstance(code_value, str):
        system = node.get("system")
        texts = [node["display"]] if isinstance(node.get("display"), str) else []
        keys = list(_coding_keys(system if isinstance(system, str) else None, code_value))
        return (keys, texts, [])
    return ([], [], [])


@lru_cache(maxsize=65_536)
def _coding_keys(system: str | None, code: str) -> tuple[str, ...]:
    return tuple(_token_keys(system, code))


def _index_token(out: Keys, code: str, node: Any) -> None:
    keys, texts, of_type = out.tokens(node)
    if keys:
        _add(out, code, keys)
    for text in texts:
        _index_text(out, code + ":text", text)
    if of_type:
        _add(out, code + ":of-type", of_type)


def reference_values(node: Any) -> tuple[list[str], list[str]]:
    """(reference keys, identifier token keys) of one reference-typed value."""
    if isinstance(node, str):
        return (k.reference_keys(node), [])
    if not isinstance(node, dict):
        return ([], [])
    if "resourceType" in node:  # Bundle.entry[0].resource: the resource itself
        rid = node.get("id")
        return ([f"{node['resourceType']}/{rid}", rid] if isinstance(rid, str) else [], [])
    ref = node.get("reference")
    ref_keys = k.reference_keys(ref) if isinstance(ref, str) else []
    identifier = node.get("identifier")
    id_keys = token_values(identifier)[0] if isinstance(identifier, dict) else []
    return (ref_keys, id_keys)


def _index_reference(out: Keys, code: str, node: Any) -> None:
    ref_keys, id_keys = reference_values(node)
    if ref_keys:
        _add(out, code, ref_keys)
    if id_keys:
        _add(out, code + ":identifier", id_keys)


def _index_uri(out: Keys, code: str, node: Any) -> None:
    if isinstance(node, str) and node:
        _add(out, code, (node,))
        _add(out, code + ":below", k.uri_prefixes(node))


def date_ranges(node: Any) -> list[tuple[int, int]]:
    if isinstance(node, str):
        found = k.date_range(node)
        return [found] if found else []
    if not isinstance(node, dict):
        return []
    if "start" in node or "end" in node:  # Period
        start = k.date_range(node["start"]) if isinstance(node.get("start"), str) else None
        end = k.date_range(node["end"]) if isinstance(node.get("end"), str) else None
        if start is None and end is None:
            return []
        return [(start[0] if start else k.EPOCH_MS_MIN, end[1] if end else k.EPOCH_MS_MAX)]
    out: list[tuple[int, int]] = []
    for event in node.get("event") or ():  # Timing
        if isinstance(event, str) and (found := k.date_range(event)):
            out.append(found)
    repeat = node.get("repeat")
    if isinstance(repeat, dict) and isinstance(repeat.get("boundsPeriod"), dict):
        out += date_ranges(repeat["boundsPeriod"])
    return out


def _index_date(out: Keys, code: str, node: Any) -> None:
    ranges = date_ranges(node)
    if ranges:
        _add(out, code + ":lo", (r[0] for r in ranges))
        _add(out, code + ":hi", (r[1] for r in ranges))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def _index_number(out: Keys, code: str, node: Any) -> None:
    value = _number(node)
    if value is not None:
        _add(out, code, (value,))


@cache
def _ucum() -> Callable[[float, str], tuple[float, str] | None] | None:
    try:
        from terminology.ucum import to_canonical
    except ImportError:
        return None
    return to_canonical


def canonical_quantity(
    value: float, system: str | None, code: str | None
) -> tuple[float, str] | None:
    convert = _ucum()
    if convert is None or system != UCUM or not code:
        return None
    try:
        return convert(value, code)
    except (ValueError, ArithmeticError):
        return None


def quantity_values(node: Any) -> list[tuple[float, str | None, str | None, str | None]]:
    """(value, system, code, unit) of a Quantity/Age/Duration/Money, or a Range's two ends."""
    if not isinstance(node, dict):
        return []
    if "low" in node or "high" in node:
        return quantity_values(node.get("low")) + quantity_values(node.get("high"))
    value = _number(node.get("value"))
    if value is None:
        return []
    code = node.get("code") or node.get("currency")
    return [(value, node.get("system"), code, node.get("unit"))]


def _index_quantity(out: Keys, code: str, node: Any) -> None:
    for value, system, unit_code, unit in quantity_values(node):
        encoded = k.sortable_number(value)
        _add(out, code, (value,))
        if unit_code:
            _add(out, code + ":c", (f"{unit_code}|{encoded}",))
            if system:
                _add(out, code + ":sc", (f"{system}|{unit_code}|{encoded}",))
        if unit and unit != unit_code:
            _add(out, code + ":c", (f"{unit}|{encoded}",))
        canonical = canonical_quantity(value, system, unit_code)
        if canonical is not None:
            _add(out, code + ":canon", (f"{canonical[1]}|{k.sortable_number(canonical[0])}",))


def composite_part_keys(param_type: str, node: Any, memo: Keys | None = None) -> list[str]:
    """The keys one composite component contributes (see the module docstring)."""
    if param_type == "token":
        return memo.tokens(node)[0] if memo is not None else token_values(node)[0]
    if param_type == "reference":
        return reference_values(node)[0]
    if param_type == "string":
        return [k.fold(s) for s in string_values(node)]
    if param_type == "uri":
        return [node] if isinstance(node, str) else []
    if param_type == "date":
        return [f"d:{k.sortable_number(lo)}" for lo, _ in date_ranges(node)]
    number = _number(node)
    if number is not None:
        return [f"n:{k.sortable_number(number)}"]
    out: list[str] = []
    for value, system, unit_code, _ in quantity_values(node):
        encoded = k.sortable_number(value)
        out.append(f"n:{encoded}")
        if unit_code:
            out.append(f"c:{unit_code}|{encoded}")
            if system:
                out.append(f"u:{system}|{unit_code}|{encoded}")
    return out


def _index_composite(out: Keys, param: SearchParam, node: Any, resource: JsonDict) -> None:
    combined = [""]
    for position, component in enumerate(param.components):
        part_keys: list[str] = []
        for value in component.extractor.evaluate(node, resource):
            part_keys += composite_part_keys(component.param_type, value, out)
        if not part_keys:
            return
        sep = "$" if position else ""
        combined = [f"{prefix}{sep}{key}" for prefix in combined for key in part_keys]
    _add(out, param.code, combined)


def words(text: str) -> set[str]:
    """Distinct folded words (`_text`/`_content`); whitespace runs need no normalising here."""
    return set(_WORD.findall(text.lower() if text.isascii() else k.fold(text)))


@lru_cache(maxsize=65_536)
def _cached_words(text: str) -> frozenset[str]:
    return frozenset(words(text))


def _all_strings(node: Any, out: list[str], budget: int) -> int:
    """Collect string values (narrative and attachments' data excluded) until `budget` chars."""
    if budget <= 0:
        return budget
    if isinstance(node, str):
        out.append(node)
        return budget - len(node)
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "div" and key != "data":
                budget = _all_strings(value, out, budget)
    elif isinstance(node, list):
        for item in node:
            budget = _all_strings(item, out, budget)
    return budget


def _first_words(found: dict[str, None], text: str) -> None:
    for word in words(text) if len(text) >= 200 else _cached_words(text):
        if len(found) >= _MAX_WORDS:
            return
        found[word] = None


def _index_text_search(out: Keys, resource: JsonDict) -> None:
    """`_text`: words of the narrative; `_content`: those plus every string in the resource.

    Both stop at _MAX_WORDS distinct words from the first _TEXT_BUDGET characters, so a huge
    Bundle or document costs no more than a typical resource.
    """
    text = resource.get("text")
    div = text.get("div") if isinstance(text, dict) else None
    found: dict[str, None] = {}
    if isinstance(div, str):
        _first_words(found, _TAG.sub(" ", div[:_TEXT_BUDGET]))
        if found:
            _add(out, "_text", found)
    strings: list[str] = []
    _all_strings(resource, strings, _TEXT_BUDGET)
    for string in strings:
        if len(found) >= _MAX_WORDS:
            break
        _first_words(found, string[:_TEXT_BUDGET])
    if found:
        _add(out, "_content", found)


_SIMPLE: dict[str, Callable[[Keys, str, Any], None]] = {
    "string": _index_string,
    "token": _index_token,
    "reference": _index_reference,
    "uri": _index_uri,
    "date": _index_date,
    "number": _index_number,
    "quantity": _index_quantity,
}


@cache
def _plan(resource_type: str) -> tuple[list[tuple[SearchParam, Callable[..., None]]], bool]:
    """The parameters to index for a type, each with its normaliser (built once per type)."""
    plan: list[tuple[SearchParam, Callable[..., None]]] = []
    text_search = False
    for param in registry().for_type(resource_type).values():
        if param.is_text_search:
            text_search = True
        elif param.extractor is not None and param.param_type in _SIMPLE:
            plan.append((param, _SIMPLE[param.param_type]))
        elif param.extractor is not None and param.param_type == "composite":
            plan.append((param, _index_composite))
    return plan, text_search


def extract_index(resource: JsonDict) -> JsonDict:
    """The `s` document of a resource: {key: [normalised values]} (see the module docstring)."""
    return build_index(resource, text_search=True)


def build_index(
    resource: JsonDict, *, text_search: bool, only: frozenset[str] | None = None
) -> JsonDict:
    """`extract_index`, optionally without `_text`/`_content` (about a third of the cost on
    resources with a generated narrative) for deployments that do not offer those parameters,
    and optionally for the parameters named in `only` alone (a store that offers only those)."""
    out = Keys()
    resource_type = str(resource.get("resourceType", ""))
    plan, has_text_search = _plan(resource_type)
    for param, index in plan:
        if only is not None and param.code not in only:
            continue
        assert param.extractor is not None
        if index is _index_composite:
            for node in param.extractor.evaluate(resource):
                _index_composite(out, param, node, resource)
        else:
            for node in param.extractor.evaluate(resource):
                index(out, param.code, node)
    if text_search and has_text_search:
        _index_text_search(out, resource)
    keys = {key: list(values) for key, values in out.items() if values}
    if resource_type in pair_types():
        pairs = pair_values(keys)
        if pairs:
            keys[PAIR_KEY] = pairs
    return keys


def patient_compartments(resource: JsonDict) -> list[str]:
    """`Patient/<id>` for every patient whose compartment holds the resource (official R4 rules).

    A Patient is in its own compartment. Only relative `Patient/<id>` references count.
    """
    resource_type = str(resource.get("resourceType", ""))
    found: dict[str, None] = {}
    if resource_type == "Patient" and isinstance(resource.get("id"), str):
        found[f"Patient/{resource['id']}"] = None
    reg = registry()
    for code in reg.patient_compartment(resource_type):
        param = reg.get(resource_type, code)
        if param is None or param.extractor is None:
            continue
        for node in param.extractor.evaluate(resource):
            ref = node.get("reference") if isinstance(node, dict) else None
            if isinstance(ref, str) and reference_type(ref) == "Patient" and "://" not in ref:
                found[reference_keys_first(ref)] = None
    return list(found)


def reference_keys_first(reference: str) -> str:
    return k.reference_keys(reference)[0]


def index_fields(resource_type: str) -> list[str]:
    """The `s.*` fields worth a single-field index for a type: each parameter's main key."""
    fields: list[str] = []
    for param in registry().for_type(resource_type).values():
        if param.is_text_search:
            continue
        if param.param_type == "date":
            fields += [f"s.{param.code}:lo", f"s.{param.code}:hi"]
        elif param.param_type == "string":
            fields.append(f"s.{param.code}:p")
        elif param.param_type == "quantity":
            fields += [f"s.{param.code}", f"s.{param.code}:canon"]
        elif param.param_type != "special":
            fields.append(f"s.{param.code}")
    return sorted(fields)

"""UCUM unit expressions: parsing, canonical form and conversion.

The search layer canonicalises every Quantity at write time, so parsing is cached per unit
string and conversion is a multiplication. The unit atoms live in `data/ucum_units.json`
(a clinical subset of ucum-essence) and molar masses in `data/molar_masses.json`.

Canonical form
    Values are expressed in the UCUM base units g, mol, m, s, K, rad, C, cd (gram, not
    kilogram, as in UCUM), and the canonical unit string lists those bases in that order
    joined with "." with signed exponents, e.g. mg/dL -> "g.m-3", mmol/L -> "mol.m-3",
    /min -> "s-1", mm[Hg] -> "g.m-1.s-2". Arbitrary units ([IU], [CFU], ...) are kept as their own
    dimension after the bases; a dimensionless quantity has the unit "1".

Deliberate deviation from UCUM
    UCUM defines mol as the dimensionless number 6.0221367e23. Here mol is a base
    dimension, so that mmol/L and 1/L are not commensurable: mass <-> substance
    conversions happen only in `convert(..., analyte=...)`, with a molar mass from data.

Grammar supported (UCUM §2): prefixes, atoms, integer exponents, "." and "/" (equal
precedence, left to right), a leading "/", parentheses, integer factors ("10*3",
"10^3", "100"), and annotations "{...}" which carry no meaning ("{cells}/uL" = "/uL").
The special units Cel and [degF] (offset scales) are only accepted on their own.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

_DATA_DIR = Path(__file__).parent / "data"

Dimension = tuple[tuple[str, int], ...]


class UcumError(ValueError):
    """An invalid unit expression, an unknown unit, or an impossible conversion."""


@dataclass(frozen=True, slots=True)
class Unit:
    """A parsed unit: `value_in_base = (value + offset) * factor`, in `dimension`."""

    factor: float
    dimension: Dimension
    offset: float = 0.0

    @property
    def is_special(self) -> bool:
        return self.offset != 0.0


def _load_json(name: str) -> Any:
    with (_DATA_DIR / name).open(encoding="utf-8") as fh:
        return json.load(fh)


_TABLE = _load_json("ucum_units.json")
_BASES: tuple[str, ...] = tuple(_TABLE["base"])
_BASE_ORDER = {b: i for i, b in enumerate(_BASES)}
_PREFIXES: dict[str, float] = _TABLE["prefixes"]
# Longest prefixes first so "da" wins over "d" when both could apply.
_PREFIX_SYMBOLS = sorted(_PREFIXES, key=len, reverse=True)
_ARBITRARY: frozenset[str] = frozenset(_TABLE["arbitrary"])
_ARBITRARY_METRIC: frozenset[str] = frozenset(_TABLE["arbitrary_metric"])
_DEFINED: dict[str, dict[str, Any]] = _TABLE["units"]

_EXPONENT = re.compile(r"^(.*?[^\d+\-])([+-]?\d+)$")
_INTEGER = re.compile(r"^\d+$")
_ANNOTATION = re.compile(r"\{[^{}]*\}")


# --- dimension arithmetic ---------------------------------------------------------------


def _dim_mul(a: Dimension, b: Dimension, sign: int = 1) -> Dimension:
    acc = dict(a)
    for key, exp in b:
        acc[key] = acc.get(key, 0) + sign * exp
    return _normalise(acc)


def _dim_pow(a: Dimension, exp: int) -> Dimension:
    return _normalise({k: e * exp for k, e in a})


def _normalise(acc: dict[str, int]) -> Dimension:
    # Bases in their fixed order, then arbitrary units alphabetically: this order is what
    # makes the canonical unit string stable, which search equality depends on.
    items = [(k, e) for k, e in acc.items() if e != 0]
    items.sort(key=lambda kv: (_BASE_ORDER.get(kv[0], len(_BASES)), kv[0]))
    return tuple(items)


DIMENSIONLESS: Dimension = ()


# --- atoms ------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _atom(symbol: str) -> tuple[Unit, bool] | None:
    """The unit an atom stands for and whether it is metric, or None if unknown."""
    if symbol in _BASES:
        return Unit(1.0, ((symbol, 1),)), True
    if symbol in _ARBITRARY and symbol not in _DEFINED:
        return Unit(1.0, ((symbol, 1),)), symbol in _ARBITRARY_METRIC
    spec = _DEFINED.get(symbol)
    if spec is None:
        return None
    inner = _parse(spec["unit"])
    offset = float(spec.get("offset", 0.0))
    return Unit(float(spec["value"]) * inner.factor, inner.dimension, offset), bool(spec["metric"])


def _prefixed_atom(symbol: str) -> Unit:
    exact = _atom(symbol)
    if exact is not None:
        return exact[0]
    for prefix in _PREFIX_SYMBOLS:
        if symbol.startswith(prefix) and len(symbol) > len(prefix):
            found = _atom(symbol[len(prefix) :])
            if found is not None and found[1]:
                unit = found[0]
                if unit.is_special:
                    # mCel is as meaningless as a prefix on an offset scale can be.
                    raise UcumError(f"prefix on special unit '{symbol}' is not supported")
                return Unit(unit.factor * _PREFIXES[prefix], unit.dimension)
    raise UcumError(f"unknown unit '{symbol}'")


# --- parser -----------------------------------------------------------------------------


class _Parser:
    """Recursive descent over one unit expression (UCUM §2.2 grammar, see module doc)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Unit:
        if not self.text:
            raise UcumError("empty unit")
        unit = self._term()
        if self.pos != len(self.text):
            raise UcumError(f"unexpected '{self.text[self.pos]}' at {self.pos} in '{self.text}'")
        return unit

    def _term(self) -> Unit:
        if self._peek() == "/":
            self.pos += 1
            unit = _invert(self._component())
        else:
            unit = self._component()
        while self._peek() in (".", "/"):
            op = self.text[self.pos]
            self.pos += 1
            right = self._component()
            if unit.is_special or right.is_special:
                raise UcumError(f"special unit used in a compound expression '{self.text}'")
            sign = 1 if op == "." else -1
            factor = unit.factor * right.factor if sign == 1 else unit.factor / right.factor
            unit = Unit(factor, _dim_mul(unit.dimension, right.dimension, sign))
        return unit

    def _component(self) -> Unit:
        if self._peek() == "(":
            self.pos += 1
            unit = self._term()
            if self._peek() != ")":
                raise UcumError(f"missing ')' in '{self.text}'")
            self.pos += 1
            self._skip_annotation()
            return unit
        start = self.pos
        depth_square = depth_curly = 0
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "[":
                depth_square += 1
            elif ch == "]":
                depth_square -= 1
            elif ch == "{":
                depth_curly += 1
            elif ch == "}":
                depth_curly -= 1
            elif depth_square == 0 and depth_curly == 0 and ch in "./()":
                break
            self.pos += 1
        if depth_square or depth_curly:
            raise UcumError(f"unbalanced brackets in '{self.text}'")
        return _simple_unit(self.text[start : self.pos], self.text)

    def _skip_annotation(self) -> None:
        if self._peek() == "{":
            end = self.text.find("}", self.pos)
            if end < 0:
                raise UcumError(f"unbalanced brackets in '{self.text}'")
            self.pos = end + 1

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""


def _invert(unit: Unit) -> Unit:
    if unit.is_special:
        raise UcumError("special unit cannot be inverted")
    return Unit(1.0 / unit.factor, _dim_pow(unit.dimension, -1))


def _simple_unit(component: str, whole: str) -> Unit:
    body = _ANNOTATION.sub("", component)
    if not body:
        if not component:
            raise UcumError(f"empty component in '{whole}'")
        return Unit(1.0, DIMENSIONLESS)  # a bare annotation such as {cells} means 1
    if _INTEGER.match(body):
        return Unit(float(body), DIMENSIONLESS)
    if any(ch.isspace() for ch in body):
        raise UcumError(f"whitespace is not allowed in unit '{whole}'")
    exponent = 1
    match = _EXPONENT.match(body)
    if match and not body.endswith("]"):
        body, exponent = match.group(1), int(match.group(2))
    unit = _prefixed_atom(body)
    if exponent == 1:
        return unit
    if unit.is_special:
        raise UcumError(f"special unit '{body}' cannot take an exponent")
    return Unit(unit.factor**exponent, _dim_pow(unit.dimension, exponent))


@lru_cache(maxsize=8192)
def _parse(expression: str) -> Unit:
    return _Parser(expression).parse()


# --- public API -------------------------------------------------------------------------


def parse(unit: str) -> Unit:
    """Parse a UCUM expression; raises UcumError for invalid or unknown units."""
    return _parse(unit.strip() if unit else unit)


def is_valid(unit: str) -> bool:
    try:
        parse(unit)
    except UcumError:
        return False
    return True


def canonical_unit(dimension: Dimension) -> str:
    if not dimension:
        return "1"
    return ".".join(key if exp == 1 else f"{key}{exp}" for key, exp in dimension)


def _round(value: float) -> float:
    # 12 significant digits drop binary noise (1e-3 / 1e-4 = 10.000000000000002) so equal
    # quantities written in different units get equal canonical values.
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.12g}")


def to_canonical(value: float, unit: str) -> tuple[float, str] | None:
    """`value unit` in canonical base units, e.g. (100, "mg/dL") -> (1000.0, "g.m-3").

    Returns None when the unit is not a known UCUM expression (the caller then indexes
    the quantity as written).
    """
    try:
        parsed = _parse(unit)
    except UcumError:
        return None
    return _round((value + parsed.offset) * parsed.factor), canonical_unit(parsed.dimension)


def _from_canonical(value: float, unit: Unit) -> float:
    return value / unit.factor - unit.offset


_MOLAR = _load_json("molar_masses.json")
_MASS_MINUS_MOLE: Dimension = (("g", 1), ("mol", -1))


def molar_mass(analyte: str) -> float | None:
    """Molar mass in g/mol for an analyte name or LOINC code, from data."""
    key = analyte.strip().lower()
    name = _MOLAR["loinc"].get(key) or _MOLAR["aliases"].get(key) or key
    mass = _MOLAR["analytes"].get(name)
    return float(mass) if mass is not None else None


def convert(value: float, from_unit: str, to_unit: str, *, analyte: str | None = None) -> float:
    """Convert `value` from one UCUM unit to another.

    Mass and substance (mol) concentrations convert into each other only when `analyte`
    (a name such as "glucose" or a LOINC code such as "2345-7") has a molar mass in data.
    Raises UcumError for unknown units or incompatible dimensions.
    """
    source = parse(from_unit)
    target = parse(to_unit)
    base = (value + source.offset) * source.factor
    if source.dimension == target.dimension:
        return _from_canonical(base, target)
    # Which way round: source has one more gram and one less mol than target, or reverse.
    difference = _dim_mul(source.dimension, target.dimension, -1)
    if difference in (_MASS_MINUS_MOLE, _dim_pow(_MASS_MINUS_MOLE, -1)):
        if analyte is None:
            raise UcumError(
                f"'{from_unit}' and '{to_unit}' differ by mass vs amount of substance: "
                "an analyte with a known molar mass is required"
            )
        mass = molar_mass(analyte)
        if mass is None:
            raise UcumError(f"no molar mass known for analyte '{analyte}'")
        base = base / mass if difference == _MASS_MINUS_MOLE else base * mass
        return _from_canonical(base, target)
    raise UcumError(
        f"cannot convert '{from_unit}' ({canonical_unit(source.dimension)}) "
        f"to '{to_unit}' ({canonical_unit(target.dimension)})"
    )


def commensurable(unit_a: str, unit_b: str) -> bool:
    """True when both units are valid and measure the same dimension."""
    try:
        return parse(unit_a).dimension == parse(unit_b).dimension
    except UcumError:
        return False

"""UCUM parsing, canonical form and conversion.

Expected factors come from the UCUM specification's unit table (ucum-essence) and from
the usual clinical conversion factors (e.g. glucose 18.016 mg/dL per mmol/L).
"""

from __future__ import annotations

import time

import pytest

from terminology import ucum


@pytest.mark.parametrize(
    ("unit", "value", "expected_value", "expected_unit"),
    [
        ("g", 1, 1, "g"),
        ("kg", 70, 70_000, "g"),
        ("mg/dL", 100, 1000, "g.m-3"),  # 100 mg/dL = 1 g/L = 1000 g/m3
        ("g/L", 1, 1000, "g.m-3"),
        ("mmol/L", 5, 5, "mol.m-3"),
        ("L", 1, 0.001, "m3"),
        ("mL", 1, 1e-6, "m3"),
        ("/min", 60, 1, "s-1"),
        ("min", 1, 60, "s"),
        ("h", 1, 3600, "s"),
        ("d", 1, 86400, "s"),
        ("a", 1, 365.25 * 86400, "s"),  # UCUM: a = a_j = 365.25 d
        ("mo", 1, 365.25 * 86400 / 12, "s"),
        ("%", 50, 0.5, "1"),
        ("[in_i]", 1, 0.0254, "m"),  # UCUM: [in_i] = 2.54 cm
        ("[ft_i]", 1, 0.3048, "m"),
        ("[lb_av]", 1, 453.59237, "g"),
        ("[oz_av]", 16, 453.59237, "g"),
        ("mm[Hg]", 1, 133_322, "g.m-1.s-2"),  # 133.322 Pa; Pa = 1000 g/(m.s2)
        ("kg/m2", 25, 25_000, "g.m-2"),
        ("10*3/uL", 1, 1e12, "m-3"),  # 10*3 = 1000; uL = 1e-9 m3
        ("10*9/L", 1, 1e12, "m-3"),
        ("10^3", 1, 1000, "1"),
        ("{cells}/uL", 1, 1e9, "m-3"),  # annotations mean nothing (UCUM §2.2 rule 12)
        ("mg{creat}", 1, 0.001, "g"),
        ("{score}", 3, 3, "1"),
        ("1", 2, 2, "1"),
        ("[IU]/L", 1, 1000, "m-3.[IU]"),
        ("m[IU]/mL", 1, 1000, "m-3.[IU]"),
        ("mL/min/{1.73_m2}", 60, 1e-6, "m3.s-1"),
        ("cm2", 1, 1e-4, "m2"),
        ("m-1", 2, 2, "m-1"),
        ("kg.m/s2", 1, 1000, "g.m.s-2"),  # N
        ("N", 1, 1000, "g.m.s-2"),
        ("(kg.m)/s2", 1, 1000, "g.m.s-2"),
        ("Cel", 37, 310.15, "K"),
        ("[degF]", 98.6, 310.15, "K"),
        ("cd", 1, 1, "cd"),  # candela, not centi-day: atoms win over prefix splits
        ("Pa", 1, 1000, "g.m-1.s-2"),  # pascal, not peta-year
        # UCUM's own definition of [mu_0] (magnetic constant): 4.[pi].10*-7.N/A2
        ("4.[pi].10*-7.N/A2", 1, 4 * 3.141592653589793e-7 * 1000, "g.m.C-2"),
        ("[ppth]", 1, 1e-3, "1"),
        ("m[H2O]", 1, 9_806_650, "g.m-1.s-2"),  # 9.80665 kPa = 9806.65 kg/(m.s2)
    ],
)
def test_to_canonical_matches_ucum_definitions(
    unit: str, value: float, expected_value: float, expected_unit: str
) -> None:
    result = ucum.to_canonical(value, unit)
    assert result is not None
    assert result[1] == expected_unit
    assert result[0] == pytest.approx(expected_value, rel=1e-9)


@pytest.mark.parametrize("unit", ["foo", "mg/", "m/(s", "kg{x", "mCel", "Cel/s", "mIU/mL", "m g"])
def test_to_canonical_returns_none_for_invalid_units(unit: str) -> None:
    assert ucum.to_canonical(1, unit) is None


def test_equal_quantities_in_different_units_have_equal_canonical_values() -> None:
    # Search equality relies on this: 1 g/L written three ways must index identically.
    a = ucum.to_canonical(100, "mg/dL")
    b = ucum.to_canonical(1, "g/L")
    c = ucum.to_canonical(1000, "mg/L")
    assert a == b == c


def test_convert_between_commensurable_units() -> None:
    assert ucum.convert(1, "[lb_av]", "kg") == pytest.approx(0.45359237)
    assert ucum.convert(72, "[in_i]", "cm") == pytest.approx(182.88)
    assert ucum.convert(98.6, "[degF]", "Cel") == pytest.approx(37.0)
    assert ucum.convert(120, "mm[Hg]", "kPa") == pytest.approx(15.99864)
    assert ucum.convert(7.2, "10*3/uL", "10*9/L") == pytest.approx(7.2)


def test_convert_glucose_mass_to_molar_uses_molar_mass_from_data() -> None:
    # Glucose 180.16 g/mol: 1 mmol/L = 18.016 mg/dL.
    assert ucum.convert(180.16, "mg/dL", "mmol/L", analyte="glucose") == pytest.approx(10.0)
    assert ucum.convert(5.5, "mmol/L", "mg/dL", analyte="2345-7") == pytest.approx(99.088)


@pytest.mark.parametrize(
    ("analyte", "mass_value", "mass_unit", "molar_value", "molar_unit"),
    [
        ("creatinine", 1.0, "mg/dL", 88.4, "umol/L"),  # classic factor 88.4
        ("cholesterol", 386.65, "mg/dL", 10.0, "mmol/L"),  # factor 38.67
        ("calcium", 10.0, "mg/dL", 2.495, "mmol/L"),  # factor 0.2495
        ("bun", 28.0, "mg/dL", 9.995, "mmol/L"),  # urea nitrogen factor 0.357
        ("1975-2", 1.0, "mg/dL", 17.1, "umol/L"),  # bilirubin factor 17.1
        ("uric acid", 1.0, "mg/dL", 59.48, "umol/L"),
    ],
)
def test_convert_clinical_analytes(
    analyte: str, mass_value: float, mass_unit: str, molar_value: float, molar_unit: str
) -> None:
    got = ucum.convert(mass_value, mass_unit, molar_unit, analyte=analyte)
    assert got == pytest.approx(molar_value, rel=2e-3)


def test_convert_mass_to_molar_without_analyte_is_an_error() -> None:
    with pytest.raises(ucum.UcumError, match="analyte"):
        ucum.convert(100, "mg/dL", "mmol/L")


def test_convert_unknown_analyte_is_an_error() -> None:
    with pytest.raises(ucum.UcumError, match="molar mass"):
        ucum.convert(100, "mg/dL", "mmol/L", analyte="unobtainium")


def test_convert_incompatible_units_is_an_error() -> None:
    with pytest.raises(ucum.UcumError, match="cannot convert"):
        ucum.convert(1, "kg", "m")


def test_convert_unknown_unit_is_an_error() -> None:
    with pytest.raises(ucum.UcumError, match="unknown unit"):
        ucum.convert(1, "furlong", "m")


def test_to_canonical_is_fast_enough_for_write_time_indexing() -> None:
    units = ["mg/dL", "mmol/L", "mm[Hg]", "kg", "/min", "%", "10*3/uL", "cm", "[lb_av]"]
    start = time.perf_counter()
    for i in range(90_000):
        ucum.to_canonical(float(i), units[i % len(units)])
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0  # >90k conversions per second once units are cached

"""OBX → Observation: every OBX-2 value type, reference range, interpretation and status."""

from __future__ import annotations

import re
from typing import Any

from mappers.hl7v2.context import MappingContext
from mappers.hl7v2.datatypes import (
    codeable_concept,
    number,
    parse_ts,
    practitioner_reference,
    quantity,
    table_coding,
)
from mappers.hl7v2.errors import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    Hl7v2Error,
)
from mappers.hl7v2.parse import Encoding, Segment, component_text
from terminology.conceptmap import translate

JsonDict = dict[str, Any]

_CODED = frozenset({"CE", "CWE", "CNE", "CF", "CV", "IS", "ID"})
_TEXT = frozenset(
    {
        "ST",
        "TX",
        "FT",
        "RP",
        "XPN",
        "XAD",
        "XTN",
        "XCN",
        "XON",
        "CX",
        "EI",
        "PN",
        "AD",
        "TN",
        "CP",
        "MO",
        "NA",
        "MA",
    }
)
_DATES = frozenset({"DT", "DTM", "TS"})
_COMPARATOR = re.compile(r"\s*(<=|>=|<|>)\s*(.+)")
_RANGE = re.compile(r"\s*([+-]?\d*\.?\d+)\s*-\s*([+-]?\d*\.?\d+)\s*")
_SN_SEPARATOR_RATIO = frozenset({":", "/"})


def _error(obx: Segment, field_no: int, reason: str, code: str = DATA_TYPE_ERROR) -> Hl7v2Error:
    return Hl7v2Error(
        f"{obx.location}-{field_no}: {reason}",
        segment="OBX",
        occurrence=obx.occurrence,
        field=field_no,
        error_code=code,
    )


def _structured_numeric(raw: str, unit_raw: str, enc: Encoding) -> JsonDict:
    """SN (comparator^num1^separator/suffix^num2) → valueQuantity / valueRange / valueRatio."""
    comparator = component_text(raw, 1, enc).strip()
    num1 = component_text(raw, 2, enc).strip()
    loose = _COMPARATOR.fullmatch(comparator) if not num1 else None
    if loose:  # "<0.10" sent unstructured in SN-1
        comparator, num1 = loose.group(1), loose.group(2).strip()
    separator = component_text(raw, 3, enc).strip()
    num2 = component_text(raw, 4, enc).strip()
    first = number(num1) if num1 else None
    second = number(num2) if num2 else None
    if separator == "-" and first is not None and second is not None:
        return {
            "valueRange": {
                "low": quantity(first, unit_raw, enc),
                "high": quantity(second, unit_raw, enc),
            }
        }
    if separator in _SN_SEPARATOR_RATIO and first is not None and second is not None:
        return {"valueRatio": {"numerator": {"value": first}, "denominator": {"value": second}}}
    if first is None:
        raise ValueError("SN has no number in component 2")
    value = quantity(first, unit_raw, enc)
    if separator == "+":  # "5+" reads "5 or more"
        comparator = ">="
    if comparator and comparator != "=":
        if comparator not in ("<", "<=", ">", ">="):
            raise ValueError(f"SN comparator {comparator!r} is not one of < <= > >= =")
        value["comparator"] = comparator
    return {"valueQuantity": value}


def observation_value(ctx: MappingContext, obx: Segment) -> JsonDict:
    """OBX-5 as the Observation.value[x] element(s); {} when there is no value."""
    enc = obx.encoding
    value_type = obx.text(2).upper()
    reps = obx.reps(5)
    if not reps:
        return {}
    unit_raw = obx.field(6).split(enc.repetition)[0]
    if not value_type:
        raise _error(
            obx, 2, "OBX-5 has a value but OBX-2 (value type) is empty", REQUIRED_FIELD_MISSING
        )
    if len(reps) > 1 and value_type not in _TEXT:
        ctx.warnings.append(
            Hl7v2Error(
                f"{obx.location}-5 repeats; only the first {value_type} value is mapped",
                segment="OBX",
                occurrence=obx.occurrence,
                field=5,
            )
        )
    try:
        if value_type == "NM":
            text = component_text(reps[0], 1, enc)
            comparator = _COMPARATOR.fullmatch(text)
            if comparator:
                q = quantity(number(comparator.group(2)), unit_raw, enc)
                q["comparator"] = comparator.group(1)
                return {"valueQuantity": q}
            return {"valueQuantity": quantity(number(text), unit_raw, enc)}
        if value_type == "SN":
            return _structured_numeric(reps[0], unit_raw, enc)
        if value_type in _CODED:
            concept = codeable_concept(reps[0], enc)
            return {"valueCodeableConcept": concept} if concept else {}
        if value_type in _DATES:
            return {
                "valueDateTime": parse_ts(component_text(reps[0], 1, enc), ctx.options.assume_tz)
            }
        if value_type == "TM":
            text = component_text(reps[0], 1, enc)
            hh, mm, ss = text[:2], text[2:4] or "00", text[4:6] or "00"
            if not (hh + mm + ss).isdigit() or int(hh) > 23 or int(mm) > 59 or int(ss) > 59:
                raise ValueError(f"{text!r} is not an HL7 time")
            return {"valueTime": f"{hh}:{mm}:{ss}"}
        if value_type == "RP":  # reference pointer: the pointer is the value
            pointer = component_text(reps[0], 1, enc)
            return {"valueString": pointer} if pointer else {}
        if value_type in _TEXT:
            lines = [
                enc.unescape(r.replace(enc.component, " ").replace(enc.subcomponent, " ")).strip()
                for r in reps
            ]
            text = "\n".join(line for line in lines if line)
            return {"valueString": text} if text else {}
        if value_type == "ED":
            # Not an Observation value in R4: the caller puts it in a document/report.
            return {}
    except ValueError as exc:
        raise _error(obx, 5, f"value {reps[0][:40]!r} is not a valid {value_type}: {exc}") from None
    raise _error(obx, 2, f"OBX-2 value type {value_type!r} is not supported", TABLE_VALUE_NOT_FOUND)


def _reference_range(text: str, unit_raw: str, enc: Encoding) -> JsonDict | None:
    text = text.strip()
    if not text:
        return None
    try:
        m = _RANGE.fullmatch(text)
        if m:
            return {
                "low": quantity(number(m.group(1)), unit_raw, enc),
                "high": quantity(number(m.group(2)), unit_raw, enc),
                "text": text,
            }
        m = _COMPARATOR.fullmatch(text)
        if m:
            bound = quantity(number(m.group(2)), unit_raw, enc)
            return {"high" if m.group(1).startswith("<") else "low": bound, "text": text}
    except ValueError:
        pass
    return {"text": text}


def map_observation(
    ctx: MappingContext, obx: Segment, observation_id: str, fallback_time: str | None
) -> JsonDict:
    """Build the Observation for one OBX (the caller adds basedOn/partOf/specimen)."""
    enc = obx.encoding
    code = codeable_concept(obx.field(3).split(enc.repetition)[0], enc) if obx.field(3) else None
    if not code:
        raise _error(obx, 3, "OBX-3 (observation identifier) is required", REQUIRED_FIELD_MISSING)
    status_code = obx.text(11).upper()
    status = (
        translate("v2-0085-to-observation-status", "HL70085", status_code) if status_code else None
    )
    observation: JsonDict = {
        "resourceType": "Observation",
        "id": observation_id,
        "status": status.code if status else "unknown",  # OBX-11 is required: never guess final
        "code": code,
        "subject": ctx.subject(),
    }
    if ctx.encounter_ref:
        observation["encounter"] = {"reference": ctx.encounter_ref}
    effective = ctx.ts(obx, 14) or fallback_time
    if effective:
        observation["effectiveDateTime"] = effective
    observation.update(observation_value(ctx, obx))
    unit_raw = obx.field(6).split(enc.repetition)[0]
    reference_range = _reference_range(obx.text(7), unit_raw, enc)
    if reference_range:
        observation["referenceRange"] = [reference_range]
    interpretations = []
    for rep in obx.reps(8):
        flag = component_text(rep, 1, enc)
        if flag:
            mapped = translate("v2-0078-to-observation-interpretation", "HL70078", flag)
            coding = mapped.as_dict() if mapped else table_coding(flag, "0078")
            interpretations.append({"coding": [coding]})
    if interpretations:
        observation["interpretation"] = interpretations
    method = codeable_concept(obx.reps(17)[0], enc) if obx.reps(17) else None
    if method:
        observation["method"] = method
    performers = [p for p in (practitioner_reference(r, enc) for r in obx.reps(16)) if p]
    if performers:
        observation["performer"] = performers
    return observation

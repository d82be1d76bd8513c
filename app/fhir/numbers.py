"""The bounds of FHIR's integer types, and of the integers the store can write.

Mappers check values against them before they build resources, and request bodies are checked
when parsed: past them a resource fails validation, or the store's JSON encoder (orjson) fails
the write.
"""

from __future__ import annotations

# FHIR integer is 32-bit signed; unsignedInt and positiveInt share its upper bound.
INTEGER_MIN, INTEGER_MAX = -(2**31), 2**31 - 1
# What orjson writes: signed 64-bit, or unsigned up to 2^64 - 1.
STORABLE_MIN, STORABLE_MAX = -(2**63), 2**64 - 1


def is_fhir_integer(value: int) -> bool:
    return INTEGER_MIN <= value <= INTEGER_MAX


def is_storable(value: int) -> bool:
    return STORABLE_MIN <= value <= STORABLE_MAX

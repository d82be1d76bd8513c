"""HL7 v2 → FHIR R4 mapping (pure functions, no I/O). See README-style notes in each module.

Public API:
- `map_message(raw, *, raw_id, received_at, options=None) -> MappingResult`
- `split_batch(raw) -> list[bytes]` (FHS/BHS batches and concatenated files)
- `build_ack(message_or_raw, code, errors=()) -> bytes`
- `merge_resource(existing, incoming, plan) -> dict`
- `Hl7v2Error` (the only exception `map_message` raises; `.ack_code` is "AE" or "AR")
"""

from mappers.hl7v2.ack import build_ack
from mappers.hl7v2.context import MappingOptions
from mappers.hl7v2.errors import Hl7v2Error, UnparseableMessage, UnsupportedMessage
from mappers.hl7v2.messages import InternalMappingError, map_message, supported_message_types
from mappers.hl7v2.parse import Message, parse_message, split_batch
from mappers.hl7v2.result import MappingResult, MergeInstruction, MergePlan, merge_resource

__all__ = [
    "Hl7v2Error",
    "InternalMappingError",
    "MappingOptions",
    "MappingResult",
    "MergeInstruction",
    "MergePlan",
    "Message",
    "UnparseableMessage",
    "UnsupportedMessage",
    "build_ack",
    "map_message",
    "merge_resource",
    "parse_message",
    "split_batch",
    "supported_message_types",
]

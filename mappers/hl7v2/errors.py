"""The one error type that leaves the HL7 v2 mapping layer.

A mapping error carries what an HL7 ERR segment and a FHIR OperationOutcome both need: the
segment (with its occurrence), the field, an HL7 table 0357 error code, and a readable reason.
`ack_code` says how the caller answers the sender: AE (the message was understood but cannot be
mapped) or AR (unparseable, or a message type Hestia does not accept).
"""

from __future__ import annotations

from typing import Literal

from app.fhir.outcome import Unprocessable, issue

AckCode = Literal["AA", "AE", "AR"]

# HL7 table 0357 (message error condition codes) used by this layer.
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
APPLICATION_INTERNAL_ERROR = "207"
SEGMENT_SEQUENCE_ERROR = "100"

_ERROR_TEXT = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Hl7v2Error(Unprocessable):
    """A message (or part of it) that cannot be mapped, located as precisely as known."""

    def __init__(
        self,
        reason: str,
        *,
        segment: str | None = None,
        occurrence: int = 1,
        field: int | None = None,
        component: int | None = None,
        error_code: str = APPLICATION_INTERNAL_ERROR,
        ack_code: AckCode = "AE",
    ) -> None:
        self.reason = reason
        self.segment = segment
        self.occurrence = occurrence
        self.field = field
        self.component = component
        self.error_code = error_code
        self.ack_code: AckCode = ack_code
        expression = [self.location] if self.location else None
        super().__init__(
            reason,
            expression=expression,
            issues=[issue("error", "processing", reason, expression)],
        )

    @property
    def location(self) -> str:
        """`PID-7`, `OBX[3]-5` or `OBX[3]-5.2`; empty when the error is about the whole message."""
        if not self.segment:
            return ""
        out = self.segment if self.occurrence <= 1 else f"{self.segment}[{self.occurrence}]"
        if self.field is not None:
            out += f"-{self.field}"
            if self.component is not None:
                out += f".{self.component}"
        return out

    @property
    def error_text(self) -> str:
        return _ERROR_TEXT.get(self.error_code, "Application error")


class UnparseableMessage(Hl7v2Error):
    """The bytes are not an HL7 v2 message Hestia can read: answered with AR."""

    def __init__(self, reason: str, *, segment: str | None = "MSH", field: int | None = None):
        super().__init__(
            reason,
            segment=segment,
            field=field,
            error_code=SEGMENT_SEQUENCE_ERROR if field is None else REQUIRED_FIELD_MISSING,
            ack_code="AR",
        )


class UnsupportedMessage(Hl7v2Error):
    """A well-formed message of a type or event Hestia does not accept: answered with AR."""

    def __init__(self, reason: str, *, error_code: str = UNSUPPORTED_MESSAGE_TYPE) -> None:
        super().__init__(reason, segment="MSH", field=9, error_code=error_code, ack_code="AR")

"""What the intake must know about a message before mapping it: who sent it and its control id.

Parsing is attempted once here and the parsed message is handed on to the mapper. When the
bytes do not parse, the MSH fields are still read best effort so that duplicates of a broken
message are recognised and its ACK echoes MSH-10.
"""

from __future__ import annotations

from dataclasses import dataclass

from mappers.hl7v2 import Hl7v2Error, Message, parse_message
from mappers.hl7v2.parse import Encoding, component_text, decode, header_line


@dataclass(frozen=True)
class Header:
    sending_application: str
    sending_facility: str
    control_id: str
    message_type: str  # "ORU^R01"; "" when unknown
    message: Message | None  # None when the bytes did not parse
    error: Hl7v2Error | None  # why they did not parse


def read_header(raw: bytes) -> Header:
    try:
        message = parse_message(raw)
    except Hl7v2Error as error:
        app, facility, control_id, kind = _best_effort(raw)
        return Header(app, facility, control_id, kind, None, error)
    msh = message.msh
    kind = "^".join(p for p in (message.message_code, message.trigger_event) if p)
    return Header(msh.text(3), msh.text(4), message.control_id, kind, message, None)


def _best_effort(raw: bytes) -> tuple[str, str, str, str]:
    text, _, _ = decode(raw)
    line = header_line(text)
    if line is None:
        return "", "", "", ""
    sep = line[3]
    if sep.isalnum() or sep.isspace():
        return "", "", "", ""
    encoding = Encoding(sep)
    fields = line.split(sep)
    fields.insert(1, sep)  # so that fields[n] is MSH-n

    def get(n: int, component: int = 1) -> str:
        return component_text(fields[n], component, encoding) if n < len(fields) else ""

    kind = "^".join(p for p in (get(9, 1), get(9, 2)) if p)
    return get(3), get(4), get(10), kind

"""ACK builder (pure): AA / AE / AR with MSA-2 = MSH-10 and one ERR segment per error.

Works on anything, including bytes that did not parse: the MSH is then extracted best-effort
(first line starting with MSH, its declared delimiters if usable, the standard ones otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from mappers.hl7v2.errors import AckCode, Hl7v2Error
from mappers.hl7v2.parse import (
    Encoding,
    Message,
    Segment,
    component_text,
    decode,
    header_line,
)

_STANDARD = Encoding()


def _usable(delimiter: str) -> bool:
    return not (delimiter.isalnum() or delimiter.isspace())


def _best_effort_msh(raw: bytes | str) -> tuple[Segment | None, Encoding, str]:
    if isinstance(raw, bytes):
        text, charset, _ = decode(raw)
    else:
        text, charset = raw, "utf-8"
    line = header_line(text)
    if line is None:
        return None, _STANDARD, charset
    sep = line[3]
    if not _usable(sep):
        # Nothing in this header can be read reliably: answer in standard delimiters, echoing
        # nothing (the sender's fields would come out garbled).
        return None, _STANDARD, charset
    chars = line[4:8]
    try:
        encoding = Encoding(sep, chars[0], chars[1], chars[2], chars[3])
        if len({sep, *chars}) != 5 or not all(_usable(c) for c in chars):
            raise ValueError("repeated or unusable delimiters")
    except (IndexError, ValueError):
        encoding = Encoding(sep) if sep not in "^~\\&" else _STANDARD
    parts = line.split(encoding.field)
    parts.insert(1, encoding.field)
    return Segment("MSH", parts, 1, encoding), encoding, charset


def build_ack(
    message_or_raw: Message | bytes | str,
    code: AckCode,
    errors: Sequence[Hl7v2Error] = (),
    *,
    text: str = "",
    control_id: str | None = None,
    now: datetime | None = None,
) -> bytes:
    """The ACK for a message, encoded in the message's own character set."""
    if isinstance(message_or_raw, Message):
        msh: Segment | None = message_or_raw.msh
        enc, charset = message_or_raw.encoding, message_or_raw.charset
    else:
        msh, enc, charset = _best_effort_msh(message_or_raw)

    def get(n: int) -> str:
        # Fields echoed back are copied raw (already escaped in the sender's delimiters).
        return msh.field(n) if msh is not None and n < len(msh.fields) else ""

    moment = (now or datetime.now(UTC)).astimezone(UTC)
    original_id = component_text(get(10), 1, enc) if get(10) else ""
    event = component_text(get(9), 2, enc) if get(9) else ""
    ack_id = control_id or (
        f"ACK{original_id}"[:199] if original_id else f"ACK{moment:%Y%m%d%H%M%S%f}"
    )
    f = enc.field
    delimiters = f"{enc.component}{enc.repetition}{enc.escape}{enc.subcomponent}"
    header = [
        "MSH",
        delimiters,
        get(5),
        get(6),
        get(3),
        get(4),
        moment.strftime("%Y%m%d%H%M%S+0000"),
        "",
        f"ACK{enc.component}{event}{enc.component}ACK" if event else "ACK",
        enc.escape_text(ack_id),
        get(11) or "P",
        get(12) or "2.5.1",
    ]
    if get(18):
        header += [""] * 5 + [get(18)]
    reason = text or "; ".join(e.reason for e in errors)
    lines = [
        f.join(header),
        f.join(
            ["MSA", code, enc.escape_text(original_id), enc.escape_text(reason[:80])]
            if reason
            else ["MSA", code, enc.escape_text(original_id)]
        ),
    ]
    for error in errors:
        lines.append(_err_segment(error, enc))
    payload = "\r".join(lines) + "\r"
    return payload.encode(charset, errors="replace")


def _err_segment(error: Hl7v2Error, enc: Encoding) -> str:
    c = enc.component
    location = ""
    if error.segment:
        location = c.join(
            [
                error.segment,
                str(error.occurrence),
                str(error.field) if error.field is not None else "",
                "1" if error.field is not None else "",
                str(error.component) if error.component is not None else "",
            ]
        ).rstrip(c)
    code = c.join([error.error_code, enc.escape_text(error.error_text), "HL70357"])
    severity = "E"
    return enc.field.join(
        ["ERR", "", location, code, severity, "", "", enc.escape_text(error.reason)]
    )

"""Tolerant HL7 v2 reader: bytes → `Message` of `Segment`s, plus batch splitting.

Written directly rather than on python-hl7 because the tolerance rules below (any line ending,
a BOM, MSH-18 character sets, escape decoding on demand, fuzzer-found garbage) are the whole
job here, and a flat `list[str]` per segment is what makes ≥ 2,000 messages/s possible.

Field access is 1-based and matches the HL7 numbering for every segment, MSH included
(`msh.field(9)` is MSH-9). Values stay escaped until a datatype reader asks for a component,
so splitting on delimiters never trips over an escaped `|` or `^`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mappers.hl7v2.errors import UnparseableMessage

HL7_NULL = '""'
_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BYTE_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")

# MSH-18 values (HL7 table 0211) → Python codecs.
_CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


@dataclass(frozen=True, slots=True)
class Encoding:
    """The five delimiters declared in MSH-1/MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    def unescape(self, value: str) -> str:
        """Decode HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\ …)."""
        esc = self.escape
        if not esc or esc not in value:
            return value
        out: list[str] = []
        i = 0
        n = len(value)
        while i < n:
            ch = value[i]
            end = value.find(esc, i + 1) if ch == esc else -1
            if end < 0:
                out.append(ch)
                i += 1
                continue
            out.append(self._decode_escape(value[i + 1 : end], value[i : end + 1]))
            i = end + 1
        return "".join(out)

    def _decode_escape(self, body: str, literal: str) -> str:
        simple = {
            "F": self.field,
            "S": self.component,
            "T": self.subcomponent,
            "R": self.repetition,
            "E": self.escape,
            "P": self.escape,  # v2.7 truncation character: shown as the escape char
        }
        if body in simple:
            return simple[body]
        if body in (".br", ".sp"):
            return "\n"
        if body in ("H", "N") or body.startswith((".", "C", "M", "Z")):
            # Highlighting, formatting and charset switches carry no text.
            return ""
        if body.startswith("X") and len(body) % 2 == 1:
            try:
                raw = bytes.fromhex(body[1:])
            except ValueError:
                return literal
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw.decode("latin-1")
        return literal

    def escape_text(self, value: str) -> str:
        """Escape a text for writing into a field (used by the ACK builder)."""
        esc = self.escape
        out = value.replace(esc, f"{esc}E{esc}")
        for char, code in (
            (self.field, "F"),
            (self.component, "S"),
            (self.subcomponent, "T"),
            (self.repetition, "R"),
        ):
            out = out.replace(char, f"{esc}{code}{esc}")
        return out.replace("\r", " ").replace("\n", f"{esc}.br{esc}")


@dataclass(slots=True)
class Segment:
    name: str
    fields: list[str]  # fields[n] is SEG-n; fields[0] is the segment name
    occurrence: int  # 1-based count of this segment name within the message
    encoding: Encoding

    def field(self, n: int) -> str:
        """The raw (still escaped) text of field n, '' when absent."""
        return self.fields[n] if n < len(self.fields) else ""

    def is_null(self, n: int) -> bool:
        """True when field n holds the HL7 null `""`: the sender asks to clear the value."""
        return n < len(self.fields) and self.fields[n] == HL7_NULL

    def reps(self, n: int) -> list[str]:
        raw = self.fields[n] if n < len(self.fields) else ""
        if not raw or raw == HL7_NULL:
            return []
        rep = self.encoding.repetition
        if rep not in raw:
            return [raw]
        return [r for r in raw.split(rep) if r]

    def text(self, n: int, component: int = 1) -> str:
        """Unescaped text of one component of the first repetition of field n."""
        raw = self.fields[n] if n < len(self.fields) else ""
        if not raw or raw == HL7_NULL:
            return ""
        enc = self.encoding
        if enc.repetition in raw:
            raw = raw.split(enc.repetition, 1)[0]
        if component == 1 and enc.component not in raw and enc.subcomponent not in raw:
            return enc.unescape(raw)  # the common case: a plain value
        return component_text(raw, component, enc)

    @property
    def location(self) -> str:
        return self.name if self.occurrence <= 1 else f"{self.name}[{self.occurrence}]"


def component_text(raw: str, component: int, encoding: Encoding, sub: int = 1) -> str:
    """Unescaped text of component (and subcomponent) of one field repetition."""
    parts = raw.split(encoding.component, component)
    if component > len(parts):
        return ""
    value = parts[component - 1]
    if encoding.subcomponent in value:
        subs = value.split(encoding.subcomponent)
        value = subs[sub - 1] if sub <= len(subs) else ""
    elif sub > 1:
        return ""
    if value == HL7_NULL:
        return ""
    return encoding.unescape(value)


def components(raw: str, count: int, encoding: Encoding) -> list[str]:
    """The first `count` components of one field repetition, unescaped, padded with ''.

    One split for all components: datatype readers use this rather than `component_text`
    in a loop, which is what keeps mapping well under a millisecond per message.
    """
    parts = raw.split(encoding.component, count)[:count]
    sub = encoding.subcomponent
    unescape = encoding.unescape
    out = ["" if p == HL7_NULL else unescape(p.split(sub, 1)[0] if sub in p else p) for p in parts]
    if len(out) < count:
        out.extend([""] * (count - len(out)))
    return out


@dataclass(slots=True)
class Message:
    segments: list[Segment]
    encoding: Encoding
    charset: str  # the Python codec actually used
    warnings: list[str] = field(default_factory=list)

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def message_code(self) -> str:
        return self.msh.text(9, 1).upper()

    @property
    def trigger_event(self) -> str:
        return self.msh.text(9, 2).upper()

    @property
    def control_id(self) -> str:
        return self.msh.text(10)

    @property
    def version(self) -> str:
        return self.msh.text(12)

    def first(self, name: str) -> Segment | None:
        for seg in self.segments:
            if seg.name == name:
                return seg
        return None

    def all(self, name: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.name == name]


def strip_bom(raw: bytes) -> bytes:
    return raw[3:] if raw.startswith(_BOM) else raw


def header_line(text: str) -> str | None:
    """The MSH line of a message's text, read without parsing it, when it has a field separator
    (MSH-1, the character after "MSH"); None when there is no MSH, or the line ends right after
    it. For reading what a sender's header says of a message that may not parse: its charset,
    who sent it, the control id an ACK must echo."""
    start = text.find("MSH")
    if start < 0:
        return None
    line = _LINE_BREAK.split(text[start:], 1)[0]
    return line if len(line) > 3 else None


def _declared_charset(raw: bytes) -> str:
    """MSH-18 read from the bytes before decoding (the header itself is ASCII)."""
    line = header_line(raw.decode("latin-1"))
    if line is None:
        return ""
    sep = line[3]
    parts = line.split(sep)
    # parts[0] = "MSH", parts[1] = MSH-2, so MSH-n = parts[n - 1].
    if len(parts) < 18:
        return ""
    return parts[17].split(parts[1][:1] or "^", 1)[0].strip().upper() if parts[1] else ""


def decode(raw: bytes) -> tuple[str, str, list[str]]:
    """Bytes → text using MSH-18, tolerating senders that mislabel their bytes."""
    raw = strip_bom(raw)
    warnings: list[str] = []
    declared = _declared_charset(raw)
    codec = _CHARSETS.get(declared) if declared else None
    if declared and codec is None:
        warnings.append(f"MSH-18 character set {declared!r} is not supported; read as UTF-8")
    candidates = [codec] if codec else []
    # Undeclared or mislabelled: UTF-8 first (it rejects most non-UTF-8 text), then Latin-1,
    # which accepts any byte sequence, so decoding itself never fails.
    candidates += [c for c in ("utf-8", "cp1252", "latin-1") if c not in candidates]
    for i, candidate in enumerate(candidates):
        try:
            text = raw.decode(candidate)
        except UnicodeDecodeError:
            continue
        if i > 0 and codec:
            warnings.append(f"bytes are not valid {declared}; read as {candidate}")
        return text, candidate, warnings
    return raw.decode("latin-1"), "latin-1", warnings  # pragma: no cover - latin-1 always works


def _read_encoding(msh_line: str) -> Encoding:
    if len(msh_line) < 4:
        raise UnparseableMessage("MSH segment is truncated before the field separator", field=1)
    sep = msh_line[3]
    if sep.isalnum() or sep in " \t":
        raise UnparseableMessage(f"MSH-1 field separator {sep!r} is not usable", field=1)
    chars = msh_line[4:].split(sep, 1)[0]
    # Some senders write MSH-2 through a string escaper and double the backslash ("^~\\\\&").
    chars = chars.replace("\\\\", "\\")
    defaults = "^~\\&"
    # Missing trailing delimiters fall back to the standard ones; they must stay distinct.
    delims = [chars[i] if i < len(chars) else defaults[i] for i in range(4)]
    if len({sep, *delims}) != 5 or any(d.isalnum() or d in " \t" for d in delims):
        raise UnparseableMessage("MSH-2 encoding characters are invalid or repeated", field=2)
    return Encoding(sep, delims[0], delims[1], delims[2], delims[3])


def parse_text(text: str, charset: str = "utf-8", warnings: list[str] | None = None) -> Message:
    """Parse the text of exactly one message (batch headers, if any, are skipped)."""
    lines = [line for line in _LINE_BREAK.split(text) if line.strip()]
    while lines and lines[0][:3] in _BATCH_SEGMENTS:
        lines.pop(0)
    if not lines or not lines[0].startswith("MSH"):
        raise UnparseableMessage("the message does not start with an MSH segment")
    encoding = _read_encoding(lines[0])
    sep = encoding.field
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    notes = list(warnings or [])
    for i, line in enumerate(lines):
        name = line[:3]
        if name in _BATCH_SEGMENTS:
            continue
        if i > 0 and name == "MSH":
            raise UnparseableMessage(
                "more than one MSH segment: split the batch first", segment="MSH"
            )
        if not _SEGMENT_NAME.fullmatch(name) or (len(line) > 3 and line[3] != sep):
            notes.append(f"line {i + 1} is not a segment and was skipped")
            continue
        parts = line.rstrip().split(sep)
        if name == "MSH":
            parts.insert(1, sep)  # MSH-1 is the separator itself
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(name, parts, counts[name], encoding))
    return Message(segments, encoding, charset, notes)


def parse_message(raw: bytes) -> Message:
    """Parse one message from its raw bytes (any line ending, optional BOM, MSH-18 charset)."""
    text, charset, warnings = decode(raw)
    return parse_text(text, charset, warnings)


def split_batch(raw: bytes) -> list[bytes]:
    """Split an HL7 batch file (FHS/BHS … BTS/FTS) or a concatenation into per-message bytes.

    The bytes of each message are returned unchanged (segment endings included) so each one
    can be stored byte for byte and acknowledged on its own. Text before the first MSH and the
    batch envelope segments are dropped.
    """
    raw = strip_bom(raw)
    messages: list[bytes] = []
    current: list[bytes] = []
    pos = 0
    for match in _BYTE_LINE_BREAK.finditer(raw + b"\r"):
        line_end = match.end()
        line = raw[pos : min(line_end, len(raw))]
        pos = line_end
        head = line[:3]
        if head == b"MSH":
            if current:
                messages.append(b"".join(current))
            current = [line]
        elif head in (b"FHS", b"BHS", b"BTS", b"FTS"):
            if current:
                messages.append(b"".join(current))
            current = []
        elif current:
            current.append(line)
    if current:
        messages.append(b"".join(current))
    return [m for m in messages if m.strip()]

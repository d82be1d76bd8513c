"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol): <VT> message <FS><CR>.

A pure, incremental decoder: feed it whatever the socket delivered (half a frame, three frames,
a frame split inside its end marker) and it yields complete events. It never holds more than
`max_frame_bytes` of one frame: a longer frame is skipped up to its end marker and reported as
`Oversized` with its first bytes (enough to read MSH and answer with an ACK), so one bad frame
neither exhausts memory nor desynchronises the connection.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
HEAD_BYTES = 4096  # kept from an oversized frame: MSH is at its start


def frame(payload: bytes) -> bytes:
    return START_BLOCK + payload + END_BLOCK


@dataclass(frozen=True, slots=True)
class Frame:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    head: bytes  # the first HEAD_BYTES of the frame
    size: int  # how many bytes it had in all


Event = Frame | Oversized


class MllpDecoder:
    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._skipping = False  # inside an oversized frame, discarding until its end
        self._skipped = 0
        self._head = b""
        self.garbage_bytes = 0  # bytes seen outside any frame (dropped)

    @property
    def idle(self) -> bool:
        """True when no frame is partly received."""
        return not self._in_frame

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            if not self._in_frame:
                start = self._buffer.find(START_BLOCK)
                if start < 0:
                    # Keep nothing: bytes outside a frame cannot become part of one.
                    self.garbage_bytes += len(self._buffer)
                    self._buffer.clear()
                    return events
                self.garbage_bytes += start
                del self._buffer[: start + 1]
                self._in_frame = True
            end = self._buffer.find(END_BLOCK)
            restart = self._buffer.rfind(START_BLOCK, 0, end if end >= 0 else len(self._buffer))
            if restart >= 0:
                # A new <VT> inside a frame: the sender abandoned the partial frame and began
                # again (HL7 text never contains <VT>). Resynchronise on the newest start.
                self.garbage_bytes += restart + (self._skipped if self._skipping else 0)
                del self._buffer[: restart + 1]
                self._skipping = False
                continue
            if end >= 0:
                if self._skipping:
                    events.append(Oversized(self._head, self._skipped + end))
                    self._skipping = False
                elif end > self.max_frame_bytes:
                    events.append(Oversized(bytes(self._buffer[:HEAD_BYTES]), end))
                else:
                    events.append(Frame(bytes(self._buffer[:end])))
                del self._buffer[: end + len(END_BLOCK)]
                self._in_frame = False
                continue
            # No end yet. A trailing <FS> may be the first half of the end marker: keep it.
            keep = 1 if self._buffer.endswith(END_BLOCK[:1]) else 0
            if self._skipping or len(self._buffer) - keep > self.max_frame_bytes:
                if not self._skipping:
                    self._skipping = True
                    self._head = bytes(self._buffer[:HEAD_BYTES])
                    self._skipped = 0
                drop = len(self._buffer) - keep
                self._skipped += drop
                del self._buffer[:drop]
            return events

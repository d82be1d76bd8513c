"""One audit writer per host, shared by the server's worker processes (`hestia serve --workers N`).

The chain has one order, and writers in different processes contend for its next seq
(log.py): each lost race costs another read of the head and another insert. With two workers
each writing for itself, audited reads fell from about 1,200/s with one worker to 295/s, with a
p99 of 369 ms (docs/performance.md). Here the workers hand their events to one AuditLog in a
relay process (relay_process.py) over a Unix socket and wait for its answer: the host appends
as one writer, and its group commit batches every worker's events together.

Durability is unchanged. The relay answers only with the seqs of a durable commit
(AuditLog.append_all), and a worker answers its client only after that. A worker that cannot
reach the relay raises AuditUnavailable, so its requests get a 503 (fail closed) until the
relay is back; `hestia serve` starts it again.

Wire: frames of a 4-byte big-endian length and an orjson array; a request is `[id, events]`,
a reply `[id, seqs]` or `[id, null, message]`. The socket lives in a directory only this user
can enter, because whoever can write to it can put events in the audit trail.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.audit.events import JsonDict
from app.audit.log import AuditLog, AuditUnavailable
from app.tasks import cancel_and_wait

log = logging.getLogger("hestia.audit")

RELAY_ENV = "HESTIA_AUDIT_RELAY"
LENGTH = struct.Struct("!I")
# A page of 1,000 search results is 1,000 events of about 2 KB.
MAX_FRAME_BYTES = 64 * 1024 * 1024


class BadFrame(Exception):
    """Something on the relay socket that is not a frame of this protocol."""


def frame(message: list[Any]) -> bytes:
    body = orjson.dumps(message, option=orjson.OPT_PASSTHROUGH_DATETIME)
    return LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """The next message; IncompleteReadError at the end of the stream."""
    (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
    if size > MAX_FRAME_BYTES:
        raise BadFrame(f"a frame of {size} bytes")
    try:
        message = orjson.loads(await reader.readexactly(size))
    except orjson.JSONDecodeError as exc:
        raise BadFrame("a frame that is not JSON") from exc
    if not isinstance(message, list) or len(message) < 2:
        raise BadFrame("a frame that is not a message")
    return message


class RelayServer:
    """Appends what the workers send through one AuditLog, each request as it arrives: one
    worker's slow commit never holds another's, and the log batches them all together."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.audit_log = audit_log
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self, path: str) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=path)

    def close(self) -> None:
        """Stop listening and drop every worker's connection: their waiting appends fail
        (AuditUnavailable) at once, and they connect again to whoever serves next."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        answering: set[asyncio.Task[None]] = set()
        out = FrameBatcher(writer)

        async def answer(request_id: int, events: list[JsonDict]) -> None:
            if not all(
                isinstance(e, dict) and e.get("resourceType") == "AuditEvent" for e in events
            ):
                # Checked here: in the log's group commit it would fail other requests' events.
                out.send([request_id, None, "the relay takes AuditEvents only"])
                return
            try:
                reply: list[Any] = [request_id, await self.audit_log.append_all(events)]
            except AuditUnavailable as exc:
                reply = [request_id, None, str(exc)]
            except Exception as exc:  # events the chain cannot take: refuse them, stay up
                log.error("audit relay: could not append (%s)", type(exc).__name__)
                reply = [request_id, None, "the audit relay could not append these events"]
            out.send(reply)

        try:
            while True:
                request_id, events = (await read_frame(reader))[:2]
                if not isinstance(request_id, int) or not isinstance(events, list):
                    raise BadFrame("a request without an id and events")
                task = asyncio.create_task(answer(request_id, events))
                answering.add(task)
                task.add_done_callback(answering.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the worker went away; what it sent is still appended
        except BadFrame as exc:
            log.error("audit relay: dropped a connection that sent %s", exc)
        finally:
            self._connections.discard(writer)
            writer.close()


class FrameBatcher:
    """Frames written in one turn of the event loop go to the socket in one write.

    Under load a worker sends many requests (and the relay many replies) per turn; one send
    per frame cost each audited read a system call of its own, on the worker's busy core."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._pending: list[bytes] = []

    def send(self, message: list[Any]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame(message))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(pending))


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    waiting: dict[int, asyncio.Future[list[int]]] = field(default_factory=dict)
    reading: asyncio.Task[None] | None = None
    out: FrameBatcher = field(init=False)

    def __post_init__(self) -> None:
        self.out = FrameBatcher(self.writer)

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    def fail_waiting(self, reason: str) -> None:
        for waiting in self.waiting.values():
            if not waiting.done():
                waiting.set_exception(AuditUnavailable(reason))


class RelayClient:
    """A worker's audit log: `append_all` as AuditLog's, done by the host's relay."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        # The relay may wait for room (the index backlog), for the commit in flight, then for
        # its own commit, each bounded by the audit timeout.
        self.timeout = 3 * timeout + 1
        self._ids = itertools.count(1)
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._stopped = False

    @property
    def running(self) -> bool:
        return not self._stopped

    async def start(self, database: object = None) -> None:
        """Connect now, so that a worker that cannot audit does not start serving."""
        del database  # the relay owns the audit database
        self._stopped = False
        await self._connect()

    async def stop(self) -> None:
        self._stopped = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.writer.close()
            await cancel_and_wait(connection.reading)
            connection.fail_waiting("the audit log stopped")

    async def append(self, event: JsonDict) -> int:
        return (await self.append_all([event]))[0]

    async def append_all(self, events: list[JsonDict]) -> list[int]:
        if not events:
            return []
        if self._stopped:
            raise AuditUnavailable("the audit log is not running")
        connection = await self._connect()
        request_id = next(self._ids)
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        connection.waiting[request_id] = done
        try:
            connection.out.send([request_id, events])
            async with asyncio.timeout(self.timeout):
                return await done
        except TimeoutError:
            raise AuditUnavailable("the audit relay did not answer in time") from None
        finally:
            connection.waiting.pop(request_id, None)

    async def _connect(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.open:
            return connection
        async with self._connecting:
            if self._connection is not None and self._connection.open:
                return self._connection
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.path), self.timeout
                )
            except (OSError, TimeoutError) as exc:
                raise AuditUnavailable(
                    f"the audit relay is unreachable ({type(exc).__name__})"
                ) from None
            connection = _Connection(writer)
            connection.reading = asyncio.create_task(
                self._read(reader, connection), name="audit-relay"
            )
            self._connection = connection
            return connection

    async def _read(self, reader: asyncio.StreamReader, connection: _Connection) -> None:
        try:
            while True:
                message = await read_frame(reader)
                waiting = connection.waiting.get(message[0])
                if waiting is None or waiting.done():
                    continue  # its caller timed out
                if message[1] is None:
                    reason = str(message[2]) if len(message) > 2 else "refused"
                    waiting.set_exception(AuditUnavailable(reason))
                else:
                    waiting.set_result([int(seq) for seq in message[1]])
        except (asyncio.IncompleteReadError, ConnectionError, BadFrame):
            pass
        finally:
            connection.writer.close()
            if self._connection is connection:
                self._connection = None
            connection.fail_waiting("the audit relay went away")

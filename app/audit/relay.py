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
from typing import Any, cast

import orjson

from app.audit.events import JsonDict
from app.audit.log import AuditLog, AuditUnavailable

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


class FrameParser:
    """Splits the bytes arriving on a connection into messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        """The messages `data` completes. Raises BadFrame."""
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= LENGTH.size:
            (size,) = LENGTH.unpack_from(buffer)
            if size > MAX_FRAME_BYTES:
                raise BadFrame(f"a frame of {size} bytes")
            end = LENGTH.size + size
            if len(buffer) < end:
                break
            try:
                message = orjson.loads(bytes(buffer[LENGTH.size : end]))
            except orjson.JSONDecodeError as exc:
                raise BadFrame("a frame that is not JSON") from exc
            del buffer[:end]
            if not isinstance(message, list) or len(message) < 2:
                raise BadFrame("a frame that is not a message")
            messages.append(message)
        return messages


class FrameWriter:
    """Frames sent in one turn of the event loop go to the socket in one write.

    Under load a worker sends many requests (and the relay many replies) per turn; one send
    per frame cost each audited read a system call of its own, on each side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []

    def send(self, message: list[Any]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame(message))

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        transport = self.transport
        if transport is not None and not transport.is_closing() and pending:
            transport.write(b"".join(pending))


class RelayServer:
    """Appends what the workers send through one AuditLog, each request as it arrives: one
    worker's slow commit never holds another's, and the log batches them all together."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.audit_log = audit_log
        self._server: asyncio.Server | None = None
        self.connections: set[_WorkerConnection] = set()

    async def start(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _WorkerConnection(self), path=path)

    def close(self) -> None:
        """Stop listening and drop every worker's connection: their waiting appends fail
        (AuditUnavailable) at once, and they connect again to whoever serves next."""
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()


class _WorkerConnection(asyncio.Protocol):
    """One worker's connection to the relay. Requests are appended as they are parsed, and
    each is answered from its commit's callback: no task per request."""

    def __init__(self, server: RelayServer) -> None:
        self.server = server
        self.frames = FrameParser()
        self.out = FrameWriter()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.out.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # What the worker sent is still appended; only the answers have nowhere to go.
        self.server.connections.discard(self)

    def close(self) -> None:
        if self.out.transport is not None:
            self.out.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            for message in self.frames.feed(data):
                request_id, events = message[:2]
                if not isinstance(request_id, int) or not isinstance(events, list):
                    raise BadFrame("a request without an id and events")
                self._append(request_id, events)
        except BadFrame as exc:
            log.error("audit relay: dropped a connection that sent %s", exc)
            self.close()

    def _append(self, request_id: int, events: list[Any]) -> None:
        if not all(isinstance(e, dict) and e.get("resourceType") == "AuditEvent" for e in events):
            # Checked here: in the log's group commit it would fail other requests' events.
            self.out.send([request_id, None, "the relay takes AuditEvents only"])
            return
        try:
            done = self.server.audit_log.submit(events)
        except AuditUnavailable as exc:
            self.out.send([request_id, None, str(exc)])
            return
        done.add_done_callback(lambda finished: self._answer(request_id, finished))

    def _answer(self, request_id: int, done: asyncio.Future[list[int]]) -> None:
        error = None if done.cancelled() else done.exception()
        if done.cancelled():
            reply: list[Any] = [request_id, None, "the audit log stopped"]
        elif error is None:
            reply = [request_id, done.result()]
        elif isinstance(error, AuditUnavailable):
            reply = [request_id, None, str(error)]
        else:  # events the chain cannot take: refuse them, stay up
            log.error("audit relay: could not append (%s)", type(error).__name__)
            reply = [request_id, None, "the audit relay could not append these events"]
        self.out.send(reply)


class _RelayProtocol(asyncio.Protocol):
    """A worker's connection to the relay: frames parsed as they arrive, with no reader task
    or stream in between (each reply is one audited request's last wait), and requests
    batched per turn of the event loop. Waiting requests are failed once `timeout` passes,
    by one timer for all of them rather than one per request."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        # Request id → (its answer, when to give up). Ids and deadlines both increase.
        self.waiting: dict[int, tuple[asyncio.Future[list[int]], float]] = {}
        self.frames = FrameParser()
        self.out = FrameWriter()
        self._sweeper: asyncio.TimerHandle | None = None
        self.lost = False

    @property
    def transport(self) -> asyncio.Transport | None:
        return self.out.transport

    @property
    def open(self) -> bool:
        transport = self.out.transport
        return not self.lost and transport is not None and not transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.out.transport = cast(asyncio.Transport, transport)

    def request(self, request_id: int, events: list[JsonDict]) -> asyncio.Future[list[int]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[int]] = loop.create_future()
        self.waiting[request_id] = (done, loop.time() + self.timeout)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.timeout / 4, self._sweep)
        self.out.send([request_id, events])
        return done

    def forget(self, request_id: int) -> None:
        self.waiting.pop(request_id, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for request_id, (done, deadline) in list(self.waiting.items()):
            if deadline > now:
                break
            del self.waiting[request_id]
            if not done.done():
                done.set_exception(AuditUnavailable("the audit relay did not answer in time"))
        if self.waiting:
            self._sweeper = asyncio.get_running_loop().call_later(self.timeout / 4, self._sweep)

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.frames.feed(data)
        except BadFrame as exc:
            log.error("audit relay client: the relay sent %s; reconnecting", exc)
            if self.out.transport is not None:
                self.out.transport.close()
            return
        for message in messages:
            self._answer(message)

    def _answer(self, message: list[Any]) -> None:
        found = self.waiting.pop(message[0], None) if isinstance(message[0], int) else None
        if found is None or found[0].done():
            return  # its caller gave up
        done = found[0]
        if message[1] is None:
            reason = str(message[2]) if len(message) > 2 else "refused"
            done.set_exception(AuditUnavailable(reason))
        else:
            done.set_result([int(seq) for seq in message[1]])

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.fail_waiting("the audit relay went away")

    def fail_waiting(self, reason: str) -> None:
        waiting, self.waiting = self.waiting, {}
        for done, _ in waiting.values():
            if not done.done():
                done.set_exception(AuditUnavailable(reason))


class RelayClient:
    """A worker's audit log: `append_all` as AuditLog's, done by the host's relay."""

    def __init__(self, path: str, *, timeout: float = 5.0) -> None:
        self.path = path
        # The relay may wait for room (the index backlog), for the commit in flight, then for
        # its own commit, each bounded by the audit timeout.
        self.timeout = 3 * timeout + 1
        self._ids = itertools.count(1)
        self._connection: _RelayProtocol | None = None
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
            if connection.transport is not None:
                connection.transport.close()
            connection.fail_waiting("the audit log stopped")

    async def append(self, event: JsonDict) -> int:
        return (await self.append_all([event]))[0]

    async def append_all(self, events: list[JsonDict]) -> list[int]:
        if not events:
            return []
        if self._stopped:
            raise AuditUnavailable("the audit log is not running")
        connection = self._connection
        if connection is None or not connection.open:
            connection = await self._connect()
        request_id = next(self._ids)
        done = connection.request(request_id, events)
        try:
            return await done
        finally:
            connection.forget(request_id)

    async def _connect(self) -> _RelayProtocol:
        connection = self._connection
        if connection is not None and connection.open:
            return connection
        async with self._connecting:
            current = self._connection
            if current is not None and current.open:
                return current
            loop = asyncio.get_running_loop()
            try:
                _, opened = await asyncio.wait_for(
                    loop.create_unix_connection(lambda: _RelayProtocol(self.timeout), self.path),
                    self.timeout,
                )
            except (OSError, TimeoutError) as exc:
                raise AuditUnavailable(
                    f"the audit relay is unreachable ({type(exc).__name__})"
                ) from None
            self._connection = opened
            return opened

"""The MLLP listener: TCP connections carrying framed HL7 v2 messages, each answered with its ACK.

Framing is done by `MllpDecoder` rather than python-hl7's `MLLPStreamReader`, whose limit
handling clears its buffer on an oversized frame and so loses the frame boundaries; the wire
format is the same (python-hl7's client talks to this server in the tests).

Each connection is served by one task that answers frames in the order they arrived (HL7's
original acknowledgement mode: a sender waits for the ACK before sending the next message, and
a pipelining one still gets its ACKs in order). Connections are independent, so many senders are
served concurrently; their writes meet only in the database's transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.ingest.framing import Frame, MllpDecoder, Oversized, frame

log = logging.getLogger("hestia.mllp")

READ_CHUNK = 64 * 1024

# (payload, peer) → ACK bytes; it must answer every payload, never raise.
MessageHandler = Callable[[bytes, str | None], Awaitable[bytes]]
# (first bytes, total size, limit, peer) → the ACK rejecting a frame over the size limit.
OversizeHandler = Callable[[bytes, int, int, str | None], Awaitable[bytes]]


@dataclass(frozen=True)
class MllpSettings:
    host: str = "127.0.0.1"
    port: int = 2575  # 0: any free port (tests)
    max_frame_bytes: int = 8 * 1024 * 1024
    max_connections: int = 256
    # Seconds a connection may sit mid-frame without sending more; idle connections between
    # messages are kept (interface engines hold their connection open for days).
    partial_frame_timeout: float = 60.0
    # SO_REUSEPORT: several `hestia serve` workers may listen on one port (Linux balances).
    reuse_port: bool = False


class MllpServer:
    def __init__(
        self,
        on_message: MessageHandler,
        on_oversized: OversizeHandler,
        settings: MllpSettings | None = None,
    ) -> None:
        self.on_message = on_message
        self.on_oversized = on_oversized
        self.settings = settings or MllpSettings()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.settings.host,
            self.settings.port,
            limit=READ_CHUNK,
            reuse_port=self.settings.reuse_port or None,
        )
        log.info("MLLP listening on %s:%s", self.settings.host, self.port)

    async def stop(self) -> None:
        """Stop accepting, then end open connections (a message being processed is finished
        first only if it completes before its task is cancelled; its payload is stored)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.settings.max_connections:
            log.warning("MLLP connection refused: %d connections open", len(self._connections))
            writer.close()
            return
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else None
        try:
            await self._converse(reader, writer, peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the sender went away; whatever was complete has been answered
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("MLLP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str | None
    ) -> None:
        decoder = MllpDecoder(self.settings.max_frame_bytes)
        while True:
            timeout = None if decoder.idle else self.settings.partial_frame_timeout
            try:
                data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            except TimeoutError:
                log.warning("MLLP %s: partial frame stalled; closing the connection", peer)
                return
            if not data:
                return
            for event in decoder.feed(data):
                if isinstance(event, Frame):
                    ack = await self.on_message(event.payload, peer)
                else:
                    assert isinstance(event, Oversized)
                    limit = self.settings.max_frame_bytes
                    ack = await self.on_oversized(event.head, event.size, limit, peer)
                writer.write(frame(ack))
                await writer.drain()


__all__ = ["MessageHandler", "MllpServer", "MllpSettings", "OversizeHandler"]

"""Small shared helpers for the ingestion tests: reading ACKs and speaking MLLP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hl7.mllp import open_hl7_connection


@dataclass
class Ack:
    code: str  # MSA-1
    control_id: str  # MSA-2
    errors: list[list[str]]  # ERR segments, split into fields (index 0 = "ERR")
    text: str

    @property
    def reasons(self) -> list[str]:
        return [err[7] for err in self.errors if len(err) > 7]


def parse_ack(data: bytes) -> Ack:
    text = data.decode("utf-8", "replace")
    sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"  # MSH-1 of the ACK
    segments = [s.split(sep) for s in text.replace("\n", "\r").split("\r") if s]
    msa = next(s for s in segments if s[0] == "MSA")
    return Ack(
        code=msa[1],
        control_id=msa[2] if len(msa) > 2 else "",
        errors=[s for s in segments if s[0] == "ERR"],
        text=text,
    )


def parse_acks(data: bytes) -> list[Ack]:
    """Every ACK in a body (a batch of ACKs, or one)."""
    text = data.decode("utf-8", "replace").replace("\n", "\r")
    chunks = [c for c in text.split("MSH|")[1:]]
    return [parse_ack(("MSH|" + c).encode()) for c in chunks]


def message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


class MllpClient:
    """python-hl7's asyncio MLLP client: proves the listener speaks standard MLLP."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int) -> MllpClient:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, payload: bytes) -> bytes:
        self.writer.writeblock(payload)  # type: ignore[attr-defined]
        await self.writer.drain()
        return await self.receive()

    async def receive(self) -> bytes:
        block: bytes = await asyncio.wait_for(self.reader.readblock(), 30)  # type: ignore[attr-defined]
        return block

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()

"""CSV ingestion: store the upload, stream it through a map, write chunk by chunk, report rows.

1. The bytes are stored first, streamed (GridFS above the inline limit), hashed as they pass:
   the same file sent again is recognised and not stored twice.
2. They are read back block by block and converted incrementally (mappers.csv.CsvStream), so
   memory stays flat whatever the file's size.
3. Every `chunk_rows` rows are one transaction: references the map requires to exist are
   checked, unchanged resources are skipped (a re-upload writes nothing new), the rest are
   written with one Provenance (source Binary/<payload>) and the chunk's rejected rows are
   recorded with line, column, reason and the row itself.
4. Quality findings (implausible values, empty expected identifiers, possible duplicate
   patients) go on the payload; its status ends `mapped`, `partial` (some rows rejected) or
   `failed`, and `reprocess` runs 2–4 again, e.g. after the map was fixed.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import logging
import random
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from app.fhir.interactions import Interactions, UnitOfWork
from app.fhir.outcome import BadRequest, FhirError, issue, outcome
from app.ingest.quality import Findings, Matcher, check_patients
from app.ingest.writes import WriteCounts, provenance, put_all, put_provenance, versioned
from app.store.raw import RawPayload, RawSource, RawStore, RowRejection, Status
from app.store.versions import StoreUnavailable, Version, VersionConflict, WriteBatch, now_utc
from mappers.csv import CsvMap, load_map, match_map
from mappers.csv.converter import ConversionReport, CsvStream, RowResult
from mappers.csv.values import deterministic_id

JsonDict = dict[str, Any]
log = logging.getLogger("hestia.ingest.csv")

CSV_MEDIA_TYPE = "text/csv"
APPLY_ATTEMPTS = 4
# Rejections returned in a report (all of them are kept in the store).
REPORTED_REJECTIONS = 1000
FEED_SLICE = 16 * 1024  # characters
_TRANSIENT = (PyMongoError, StoreUnavailable, VersionConflict, OSError)

# progress(rows_read, bytes_read, total_bytes)
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class CsvSettings:
    chunk_rows: int = 500


@dataclass
class CsvReport:
    """What became of one CSV payload: the row-level report of the issue."""

    payload: str
    map_name: str
    status: Status
    duplicate: bool = False
    rows_read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rows_rejected: int = 0
    duplicates_skipped: int = 0
    rejections: list[RowRejection] = field(default_factory=list)
    findings: list[JsonDict] = field(default_factory=list)
    finding_counts: dict[str, int] = field(default_factory=dict)
    provenance: list[str] = field(default_factory=list)
    outcome: JsonDict | None = None

    @property
    def http_status(self) -> int:
        return {"mapped": 200, "partial": 200, "failed": 422}.get(self.status, 500)

    def counts(self) -> JsonDict:
        return {
            "rowsRead": self.rows_read,
            "resourcesCreated": self.created,
            "resourcesUpdated": self.updated,
            "resourcesUnchanged": self.unchanged,
            "rowsRejected": self.rows_rejected,
            "duplicatesSkipped": self.duplicates_skipped,
            "findings": self.finding_counts,
        }

    def as_json(self) -> JsonDict:
        return {
            "payload": self.payload,
            "map": self.map_name,
            "status": self.status,
            "duplicate": self.duplicate,
            **self.counts(),
            "rejections": [r.as_doc() for r in self.rejections],
            "findingIssues": self.findings,
            "provenance": self.provenance[:100],
            **({"outcome": self.outcome} if self.outcome else {}),
        }


class _Failed(Exception):
    def __init__(self, error: FhirError) -> None:
        super().__init__(error.diagnostics)
        self.error = error


class CsvIngestor:
    def __init__(
        self,
        interactions: Interactions,
        raw: RawStore,
        settings: CsvSettings | None = None,
        *,
        matcher: Matcher | None = None,
    ) -> None:
        self.interactions = interactions
        self.store = interactions.store
        self.raw = raw
        self.settings = settings or CsvSettings()
        self.matcher: Matcher = matcher or interactions.matcher

    # Intake

    async def ingest_stream(
        self,
        blocks: AsyncIterable[bytes],
        *,
        map_name: str | None,
        source: RawSource,
        content_type: str = CSV_MEDIA_TYPE,
        progress: Progress | None = None,
    ) -> CsvReport:
        """Store and ingest one CSV upload. `map_name` None: chosen by header signature."""
        csv_map = load_map(map_name) if map_name else None
        stored, original = await self.raw.insert_stream(
            blocks,
            kind="csv",
            content_type=content_type,
            source=source,
            received_at=now_utc(),
            extra={"map_name": map_name or ""},
        )
        if original is not None and original.status not in ("received", "error"):
            return self._previous(original, map_name)
        return await self._process(stored, csv_map, progress)

    async def reprocess(
        self, raw_id: str, *, map_name: str | None = None, progress: Progress | None = None
    ) -> CsvReport | None:
        """Run a stored CSV payload through its map again (or through `map_name`)."""
        payload = await self.raw.get(raw_id)
        if payload is None or payload.kind != "csv":
            return None
        name = map_name or payload.map_name or None
        csv_map = load_map(name) if name else None
        return await self._process(payload, csv_map, progress)

    def _previous(self, original: RawPayload, map_name: str | None) -> CsvReport:
        counts = original.report or {}
        return CsvReport(
            payload=original.id,
            map_name=original.map_name or map_name or "",
            status=original.status,
            duplicate=True,
            rows_read=int(counts.get("rowsRead", 0)),
            created=int(counts.get("resourcesCreated", 0)),
            updated=int(counts.get("resourcesUpdated", 0)),
            unchanged=int(counts.get("resourcesUnchanged", 0)),
            rows_rejected=int(counts.get("rowsRejected", 0)),
            duplicates_skipped=int(counts.get("duplicatesSkipped", 0)),
            findings=original.findings[:REPORTED_REJECTIONS],
            finding_counts=dict(counts.get("findings") or {}),
            outcome=original.outcome,
        )

    # One payload

    async def _process(
        self, payload: RawPayload, csv_map: CsvMap | None, progress: Progress | None
    ) -> CsvReport:
        await self.raw.clear_rejections(payload.id)
        run = _Run(self, payload, progress)
        try:
            await run.execute(csv_map)
        except _Failed as failed:
            return await run.finish(failed.error)
        except FhirError as error:
            return await run.finish(error)
        except _TRANSIENT:
            log.exception("CSV payload %s could not be written", payload.id)
            await self.raw.set_status(payload.id, "error")
            raise
        return await run.finish(None)

    async def _apply_chunk(
        self, payload: RawPayload, chunk: list[RowResult], first_line: int
    ) -> tuple[WriteCounts, list[RowRejection], Version | None]:
        for attempt in range(APPLY_ATTEMPTS):
            try:
                return await self.store.run_transaction(
                    lambda session: self._chunk_attempt(session, payload, chunk, first_line)
                )
            except VersionConflict:
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _chunk_attempt(
        self,
        session: AsyncClientSession,
        payload: RawPayload,
        chunk: list[RowResult],
        first_line: int,
    ) -> tuple[WriteCounts, list[RowRejection], Version | None]:
        uow = UnitOfWork(session, WriteBatch(self.store), (payload.id,))
        missing = await self._missing_references(session, chunk)
        rejected: list[RowRejection] = []
        resources: list[JsonDict] = []
        for result in chunk:
            if result.rejection is not None:
                rejection = result.rejection
                rejected.append(
                    RowRejection(
                        rejection.line, rejection.column, rejection.reason, rejection.row_text()
                    )
                )
                continue
            if result.entry is None:
                continue
            absent = [(col, ref) for col, ref in result.must_exist if ref in missing]
            if absent:
                column, reference = absent[0]
                rejected.append(
                    RowRejection(
                        result.line,
                        column,
                        f"{reference} does not exist on this server",
                        _row_text(result.row),
                    )
                )
                continue
            resources.append(result.entry["resource"])
        try:
            counts = await put_all(self.interactions, uow, resources)
        except FhirError as error:
            # The converter let through a value the FHIR model refuses: a map defect. The
            # whole chunk is refused so no row is silently half-written.
            raise _Failed(
                BadRequest(
                    f"lines {first_line}-{chunk[-1].line}: a mapped resource was refused: "
                    f"{error.diagnostics}"[:1000]
                )
            ) from error
        written = counts.written
        prov: Version | None = None
        if written:
            body = provenance(
                deterministic_id("csv-provenance", [payload.id, str(first_line)]),
                written,
                payload.id,
                recorded=now_utc(),
                agent=f"Hestia CSV ingestion ({payload.map_name or 'map by header'})",
            )
            prov = await put_provenance(self.interactions, uow, body)
        await uow.flush()
        if rejected:
            await self.raw.rejections_collection.insert_many(
                [{"raw": payload.id, **r.as_doc()} for r in rejected], session=session
            )
        return counts, rejected, prov

    async def _missing_references(
        self, session: AsyncClientSession, chunk: list[RowResult]
    ) -> set[str]:
        wanted: dict[str, set[str]] = {}
        for result in chunk:
            if result.entry is None:
                continue
            for _column, reference in result.must_exist:
                kind, _, resource_id = reference.partition("/")
                wanted.setdefault(kind, set()).add(resource_id)
        missing: set[str] = set()
        for kind, ids in wanted.items():
            docs = await self.store.find(
                kind,
                {"_id": {"$in": sorted(ids)}, "deleted": False},
                projection={"_id": 1},
                session=session,
            )
            found = {str(d["_id"]) for d in docs}
            missing.update(f"{kind}/{i}" for i in ids - found)
        return missing


class _Run:
    """One attempt at one payload: the stream, the counters and the report."""

    def __init__(self, owner: CsvIngestor, payload: RawPayload, progress: Progress | None):
        self.owner = owner
        self.payload = payload
        self.progress = progress
        self.map_name = payload.map_name
        self.conversion: ConversionReport | None = None
        self.findings = Findings()
        self.created = self.updated = self.unchanged = 0
        self.rejected = 0
        self.rejections: list[RowRejection] = []
        self.provenance: list[str] = []
        self.bytes_read = 0
        self._head = ""  # text before the header line is complete
        self.pairs: set[frozenset[str]] = set()  # possible duplicate patients reported

    async def execute(self, csv_map: CsvMap | None) -> None:
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        stream: CsvStream | None = None
        pending: list[RowResult] = []
        chunk_rows = self.owner.settings.chunk_rows
        async for block in self.owner.raw.open_stream(self.payload):
            self.bytes_read += len(block)
            text = self._decode(decoder, block)
            if stream is None:
                stream, text = self._open(csv_map, text)
                if stream is None:
                    continue
            # Fed in slices so that at most about one chunk of mapped rows waits in memory,
            # whatever the storage's block size.
            for start in range(0, len(text), FEED_SLICE):
                pending.extend(stream.feed(text[start : start + FEED_SLICE]))
                while len(pending) >= chunk_rows:
                    await self._write(pending[:chunk_rows])
                    pending = pending[chunk_rows:]
        tail = self._decode(decoder, b"", final=True)
        if stream is None:
            stream, tail = self._open(csv_map, tail, final=True)
        assert stream is not None
        pending.extend(stream.feed(tail))
        pending.extend(stream.close())
        while pending:
            await self._write(pending[:chunk_rows])
            pending = pending[chunk_rows:]

    def _open(
        self, csv_map: CsvMap | None, text: str, *, final: bool = False
    ) -> tuple[CsvStream | None, str]:
        """The stream, once the header line is in; the map chosen by signature if not given."""
        self._head += text
        if "\n" not in self._head and not final:
            return None, ""
        if csv_map is None:
            name = match_map(self._head.split("\n", 1)[0])
            if name is None:
                raise BadRequest(
                    "the CSV header matches no known map; name one with ?map=NAME",
                    expression=["map"],
                )
            csv_map = load_map(name)
        self.map_name = csv_map.name
        self.conversion = ConversionReport(map_name=csv_map.name)
        head, self._head = self._head, ""
        return CsvStream(csv_map, self.conversion), head

    def _decode(self, decoder: codecs.IncrementalDecoder, block: bytes, final: bool = False) -> str:
        try:
            return str(decoder.decode(block, final))
        except UnicodeDecodeError as exc:
            offset = self.bytes_read - len(block) + exc.start
            raise BadRequest(
                f"the CSV is not UTF-8: invalid byte 0x{block[exc.start]:02x} at offset {offset}"
                if exc.start < len(block)
                else f"the CSV is not UTF-8: it ends inside a character at offset {offset}"
            ) from exc

    async def _write(self, chunk: list[RowResult]) -> None:
        if not chunk:
            return
        for result in chunk:
            self.findings.extend(result.issues)
        counts, rejected, prov = await self.owner._apply_chunk(self.payload, chunk, chunk[0].line)
        self.created += len(counts.created)
        self.updated += len(counts.updated)
        self.unchanged += len(counts.unchanged)
        self.rejected += len(rejected)
        room = REPORTED_REJECTIONS - len(self.rejections)
        self.rejections.extend(rejected[:room])
        if prov is not None:
            self.provenance.append(versioned(prov))
        lines = {r.entry["resource"]["id"]: r.line for r in chunk if r.entry is not None}
        for version in counts.written:
            if version.resource_type == "Patient":
                where = f"line {lines.get(version.id, '?')}"
                self.findings.extend(
                    await check_patients(
                        self.owner.store, self.owner.matcher, [version], where, self.pairs
                    )
                )
        if self.progress is not None:
            rows = self.conversion.rows_read if self.conversion else 0
            self.progress(rows, self.bytes_read, self.payload.size)

    async def finish(self, error: FhirError | None) -> CsvReport:
        conversion = self.conversion or ConversionReport(map_name=self.map_name)
        accepted = self.created + self.updated + self.unchanged
        status: Status
        if error is not None or (self.rejected and not accepted):
            status = "failed"
        elif self.rejected:
            status = "partial"
        else:
            status = "mapped"
        report = CsvReport(
            payload=self.payload.id,
            map_name=self.map_name,
            status=status,
            rows_read=conversion.rows_read,
            created=self.created,
            updated=self.updated,
            unchanged=self.unchanged,
            rows_rejected=self.rejected,
            duplicates_skipped=conversion.duplicates_skipped,
            rejections=self.rejections,
            findings=self.findings.issues,
            finding_counts=self.findings.counts,
            provenance=self.provenance,
        )
        summary = issue(
            "information",
            "informational",
            f"map {self.map_name or '(none)'}: {report.rows_read} rows read, "
            f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged, "
            f"{report.rows_rejected} rejected, {report.duplicates_skipped} duplicates skipped",
        )
        problems = [
            issue(
                "error",
                "invalid",
                f"line {r.line}: {r.reason}",
                expression=[r.column] if r.column else None,
            )
            for r in self.rejections[:100]
        ]
        head = [error.to_outcome()["issue"][0]] if error is not None else []
        report.outcome = outcome(*head, summary, *problems, *self.findings.warnings[:100])
        await self.owner.raw.collection.update_one(
            {"_id": self.payload.id}, {"$set": {"map_name": self.map_name}}
        )
        await self.owner.raw.record_result(
            self.payload.id,
            status=status,
            outcome=report.outcome,
            report=report.counts(),
            findings=self.findings.issues,
            provenance=self.provenance[:1000],
            processed_at=now_utc(),
        )
        return report


def _row_text(row: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(row)
    return buffer.getvalue()


async def blocks_of(data: bytes, size: int = 1 << 20) -> AsyncIterable[bytes]:
    """An in-memory payload as blocks (tests, small uploads)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


__all__ = [
    "CSV_MEDIA_TYPE",
    "CsvIngestor",
    "CsvReport",
    "CsvSettings",
    "Progress",
    "blocks_of",
]

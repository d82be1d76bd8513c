"""`hestia ingest [--map NAME] FILE|DIR…`: files from the command line, as POST /ingest does.

Each file's format is recognised from its first bytes (HL7 v2, CSV by header signature or
--map, DICOM Part 10, a zip of DICOM files, FHIR JSON); a directory is walked recursively.
The command uses the running server's database (the runtime file in --data-dir) or starts
the embedded one, like every other operator command. Long CSVs show progress on stderr; the
row-level report (counts, then each rejected row's line, column and reason) goes to stdout.

app/__main__.py calls `add_ingest_commands(commands, common)` while building its parser and
`run_ingest_command(args, settings)` when `args.command == "ingest"`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from app.fhir.bundle.processor import BundleProcessor
from app.fhir.interactions import Interactions
from app.fhir.outcome import FhirError
from app.fhir.search.execute import SearchEngine
from app.ingest.csv_ingest import CsvIngestor, CsvReport
from app.ingest.dicom_ingest import DicomFileResult, DicomIngestor, DicomSettings, is_zip
from app.ingest.service import Hl7v2Ingestor
from app.settings import Settings
from app.store.client import Database
from app.store.raw import RawSource, RawStore
from app.store.store_format import NewerStoreFormat, claim_format
from app.store.versions import Store
from mappers.detect import detect

INGEST_COMMANDS = ("ingest",)
HEAD = 4096
SHOWN_REJECTIONS = 1000


def add_ingest_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    parser = commands.add_parser(
        "ingest", help="ingest CSV, DICOM, HL7 v2 or FHIR JSON files (or directories)"
    )
    common(parser)
    parser.add_argument("paths", nargs="+", metavar="FILE|DIR")
    parser.add_argument("--map", dest="map_name", help="CSV map (default: by header signature)")
    parser.add_argument(
        "--wado-base-url", help="WADO-RS base URL for DICOM Endpoints (HESTIA_WADO_BASE_URL)"
    )
    parser.add_argument(
        "--dicom-keep",
        choices=("file", "header"),
        help="keep whole DICOM files or only their headers (HESTIA_DICOM_KEEP)",
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")


def run_ingest_command(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


@dataclass
class _Services:
    hl7: Hl7v2Ingestor
    csv: CsvIngestor
    dicom: DicomIngestor
    bundles: BundleProcessor
    base_url: str
    max_entries: int


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    database = Database.open(
        uri=settings.mongodb_uri, data_dir=settings.data_dir, name=settings.database
    )
    try:
        await database.ping()
        services = await _services(database, settings, args)
        worst = 0
        for path in _files(args.paths):
            worst = max(worst, await _ingest_path(services, path, args))
        return worst
    except (OSError, NewerStoreFormat) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await database.close()


async def _services(database: Database, settings: Settings, args: argparse.Namespace) -> _Services:
    import os

    await claim_format(database.db)
    store = Store(database.db)
    engine = SearchEngine(store)
    interactions = Interactions(store, engine.match_ids, max_json_depth=settings.max_json_depth)
    raw = RawStore(database.db)
    await raw.ensure_indexes()
    keep = args.dicom_keep or os.environ.get("HESTIA_DICOM_KEEP") or "file"
    dicom_settings = DicomSettings(
        wado_base_url=args.wado_base_url or os.environ.get("HESTIA_WADO_BASE_URL") or None,
        keep="header" if keep == "header" else "file",
    )
    return _Services(
        hl7=Hl7v2Ingestor(interactions, raw),
        csv=CsvIngestor(interactions, raw),
        dicom=DicomIngestor(interactions, raw, dicom_settings),
        bundles=BundleProcessor(interactions),
        base_url=settings.fhir_base,
        max_entries=settings.max_bundle_entries,
    )


def _files(paths: list[str]) -> Iterator[Path]:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


async def _blocks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


class _Progress:
    """Rows and bytes done, redrawn on one stderr line at most a few times a second."""

    def __init__(self, name: str, out: TextIO) -> None:
        self.name, self.out = name, out
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, rows: int, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        rate = rows / max(now - self.started, 1e-6)
        share = f"{100 * done / total:5.1f}% " if total else ""
        self.out.write(f"\r{self.name}: {share}{rows:,} rows ({rate:,.0f} rows/s)")
        self.out.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")


async def _ingest_path(services: _Services, path: Path, args: argparse.Namespace) -> int:
    source = RawSource("cli", str(path))
    with path.open("rb") as fh:
        head = fh.read(HEAD)
    found = detect(head)
    try:
        if found.kind == "csv" or (args.map_name and found.kind == "unknown"):
            progress = _Progress(path.name, sys.stderr) if sys.stderr.isatty() else None
            report = await services.csv.ingest_stream(
                _blocks(path),
                map_name=args.map_name or found.csv_map,
                source=source,
                progress=progress,
            )
            if progress is not None:
                progress.done()
            return _print_csv(path, report, args.json)
        if found.kind == "dicom" or is_zip(head):
            results = await services.dicom.ingest_files([(str(path), _read(path))], source=source)
            return _print_dicom(results, args.json)
        if found.kind == "hl7v2":
            batch = await services.hl7.ingest_body(_read(path), transport="cli", peer=str(path))
            for result in batch.results:
                _emit(args.json, f"{path}: HL7 v2 {result.status}", result.summary())
            return 0 if batch.status == "mapped" else 1
        if found.kind in ("fhir-bundle", "fhir-resource"):
            return await _ingest_fhir(services, path, args.json)
    except FhirError as error:
        _emit(args.json, f"{path}: error: {error.diagnostics}", error.to_outcome())
        return 1
    _emit(args.json, f"{path}: skipped ({found.reason})", {"file": str(path), "skipped": True})
    return 1


async def _ingest_fhir(services: _Services, path: Path, as_json: bool) -> int:
    data = json.loads(_read(path))
    if data.get("resourceType") != "Bundle" or data.get("type") not in ("transaction", "batch"):
        _emit(as_json, f"{path}: skipped (only transaction or batch Bundles)", {"file": str(path)})
        return 1
    outcome = await services.bundles.process_with_versions(
        data, base_url=services.base_url, max_entries=services.max_entries
    )
    _emit(as_json, f"{path}: Bundle, {len(outcome.written)} versions written", outcome.bundle)
    return 0


def _read(path: Path) -> bytes:
    # The command does one thing at a time: a blocking read stalls nothing else.
    return path.read_bytes()


def _emit(as_json: bool, line: str, data: Any) -> None:
    if as_json:
        print(json.dumps(data, default=str))
    else:
        print(line)


def _print_csv(path: Path, report: CsvReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.as_json(), default=str))
    else:
        again = " (already ingested: same bytes)" if report.duplicate else ""
        print(
            f"{path}: map {report.map_name}, {report.status}{again}: {report.rows_read:,} rows "
            f"read, {report.created:,} created, {report.updated:,} updated, "
            f"{report.unchanged:,} unchanged, {report.rows_rejected:,} rejected, "
            f"{report.duplicates_skipped:,} duplicates skipped (payload {report.payload})"
        )
        for rejection in report.rejections[:SHOWN_REJECTIONS]:
            column = f", column {rejection.column}" if rejection.column else ""
            print(f"  line {rejection.line}{column}: {rejection.reason}")
        if report.rows_rejected > len(report.rejections):
            print(
                f"  … {report.rows_rejected - len(report.rejections):,} more: "
                f"GET /ingest/payloads/{report.payload}/rejections"
            )
        for code, count in sorted(report.finding_counts.items()):
            print(f"  findings: {count:,} × {code}")
        if report.outcome and report.status == "failed":
            for item in report.outcome.get("issue", [])[:1]:
                print(f"  {item.get('diagnostics')}")
    return 0 if report.status == "mapped" else 1


def _print_dicom(results: list[DicomFileResult], as_json: bool) -> int:
    worst = 0
    for result in results:
        if as_json:
            print(json.dumps(result.as_json(), default=str))
            continue
        if result.outcome:
            reason = result.outcome["issue"][0].get("diagnostics", "")
            print(f"{result.name}: {result.status}: {reason} (payload {result.payload})")
            worst = 1
        else:
            written = len(result.resources)
            print(f"{result.name}: {result.status} → {result.study} ({written} versions written)")
        for finding in result.findings:
            print(f"  finding: {finding.get('diagnostics')}")
    return worst


__all__ = ["INGEST_COMMANDS", "add_ingest_commands", "run_ingest_command"]

"""`hestia audit verify | export | purge`: the operator's side of the audit log.

Wiring in app/__main__.py:
    add_audit_commands(commands, common=_common)            # in build_parser
    ...
    if args.command == "audit":
        return asyncio.run(audit_main(args, settings))      # opens and closes the database

Each command is itself audited (DICOM "Audit Log Used" / "Export"), attributed to the OS user.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pymongo.asynchronous.database import AsyncDatabase

from app.audit.events import AuditFacts, AuditSource, build_events
from app.audit.export import export
from app.audit.journal import UnreadableBlock
from app.audit.log import AuditLog
from app.audit.retention import PurgeRefused, purge
from app.audit.verify import verify_chain

CLI_CLIENT = "hestia-cli"
DEFAULT_RETENTION_DAYS = 6 * 365  # HIPAA keeps documentation six years


def parse_when(text: str) -> datetime:
    """An ISO date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or date-time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_audit_commands(
    subparsers: Any, common: Callable[[argparse.ArgumentParser], None] | None = None
) -> None:
    """Add `audit verify|export|purge` to the `hestia` parser's subcommands."""
    audit = subparsers.add_parser("audit", help="verify, export or purge the audit log")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser("verify", help="check the hash chain, report the first break")
    export_cmd = commands.add_parser("export", help="write AuditEvents as NDJSON")
    export_cmd.add_argument("--since", type=parse_when, help="recorded at or after (ISO)")
    export_cmd.add_argument("--until", type=parse_when, help="recorded before (ISO)")
    export_cmd.add_argument("--out", help="output file (default: standard output)")
    export_cmd.add_argument(
        "--with-chain", action="store_true", help="lines carry seq, prev and hash too"
    )
    purge_cmd = commands.add_parser("purge", help="drop events older than the retention")
    purge_cmd.add_argument(
        "--days", type=int, help=f"retention in days (default {DEFAULT_RETENTION_DAYS})"
    )
    if common is not None:
        for parser in (verify, export_cmd, purge_cmd):
            common(parser)


def _operator(details: list[tuple[str, str]]) -> AuditFacts:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return AuditFacts(
        "admin", client_id=CLI_CLIENT, details=[("os-user", user), *details], status=200
    )


async def run_audit_command(
    args: argparse.Namespace,
    database: AsyncDatabase[Any],
    *,
    source_name: str = "hestia",
    retention_days: int | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Run `args.audit_command` against the audit database; returns the exit code."""
    stdout = stdout or sys.stdout
    source = AuditSource(source_name)
    log = AuditLog(window=0)
    await log.start(database)
    try:
        command = args.audit_command
        if command == "verify":
            report = await verify_chain(database)
            facts = _operator([("result", "ok" if report.ok else f"broken@{report.broken_seq}")])
            facts.interaction = "audit-verify"
            await log.append_all(build_events(facts, source))
            print(report.summary(), file=stdout)
            return 0 if report.ok else 1
        if command == "export":
            window = [
                ("since", args.since.isoformat() if args.since else "-"),
                ("until", args.until.isoformat() if args.until else "-"),
            ]
            facts = _operator(window)
            facts.interaction = "audit-export"
            # Recorded before a byte leaves: an export is an access like any other.
            await log.append_all(build_events(facts, source))
            try:
                if args.out:
                    # Blocking writes are fine: the CLI's event loop has nothing else to serve.
                    with Path(args.out).open("wb") as out:  # noqa: ASYNC230
                        count = await export(
                            database, args.since, args.until, out, with_chain=args.with_chain
                        )
                else:
                    count = await export(
                        database,
                        args.since,
                        args.until,
                        sys.stdout.buffer,
                        with_chain=args.with_chain,
                    )
            except UnreadableBlock as damaged:
                print(
                    f"export stopped: {damaged}; `hestia audit verify` reports the first "
                    "damaged event",
                    file=stdout,
                )
                return 1
            print(f"exported {count} events", file=sys.stderr)
            return 0
        if command == "purge":
            days = args.days or retention_days or DEFAULT_RETENTION_DAYS
            try:
                result = await purge(
                    database, log, source, retention_days=days, actor=_operator([])
                )
            except PurgeRefused as refused:
                print(f"purge refused: {refused}", file=stdout)
                return 1
            print(result.summary(), file=stdout)
            return 0
        print(f"unknown audit command {command!r}", file=stdout)
        return 2
    finally:
        await log.stop()


async def audit_main(args: argparse.Namespace, settings: Any) -> int:
    """Open the audit database named after `settings.database`, run the command, close."""
    from app.audit.chain import audit_database_name
    from app.store.client import Database

    database = Database.open(
        uri=settings.mongodb_uri,
        data_dir=settings.data_dir,
        name=audit_database_name(settings.database),
    )
    try:
        await database.ping()
        return await run_audit_command(
            args,
            database.db,
            source_name=getattr(settings, "audit_source", None) or settings.fhir_base,
            retention_days=getattr(settings, "audit_retention_days", None),
        )
    finally:
        await database.close()

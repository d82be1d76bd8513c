"""Command line: `hestia serve`, and the operator commands that share its --data-dir."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from app.settings import Settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="where the embedded database and keys live (HESTIA_DATA_DIR)"
    )
    parser.add_argument("--mongodb-uri", help="use this MongoDB instead of the embedded one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hestia", description="Hestia FHIR R4 server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the FHIR server")
    _common(serve)
    serve.add_argument("--host", help="listen address (HESTIA_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (HESTIA_PORT, default 8080)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument(
        "--mllp-port", type=int, help="also listen for HL7 v2 over MLLP (HESTIA_MLLP_PORT)"
    )

    status = commands.add_parser(
        "status", help="show which database this data dir uses and what it holds"
    )
    _common(status)

    from app.security.cli import add_security_commands

    add_security_commands(commands, _common)
    from app.audit.cli import add_audit_commands
    from app.ingest.cli import add_ingest_commands

    add_ingest_commands(commands, _common)

    add_audit_commands(commands, common=_common)
    return parser


async def status(settings: Settings) -> int:
    """Report the database a `hestia` command on this data dir reaches, and resource counts.

    It shares the running server's database through the runtime file, or starts the embedded
    one itself (and stops it again) when no server runs.
    """
    from app.store.client import Database, running_database_uri

    shared = not settings.mongodb_uri and running_database_uri(settings.data_dir) is not None
    database = Database.open(
        uri=settings.mongodb_uri, data_dir=settings.data_dir, name=settings.database
    )
    try:
        await database.ping()
        if settings.mongodb_uri:
            print("database: HESTIA_MONGODB_URI")
        elif shared:
            print(f"database: shared with the running server ({database.uri})")
        else:
            print(f"database: embedded, started for this command in {settings.data_dir / 'db'}")
        names = sorted(await database.db.list_collection_names())
        stored = []
        for name in names:
            if name[:1].isupper():
                count = await database.db[name].count_documents({"deleted": False})
                print(f"{name}\t{count}")
                stored.append(name)
        from app.store.pair_keys import PairKeys
        from app.store.store_format import stored_format

        print(f"store format: {await stored_format(database.db)}")

        for name, why in await PairKeys.not_used_yet(database.db, stored):
            print(f"pair keys of {name}: not used yet ({why}; a running server fills them in)")
        from app.audit.chain import audit_database_name
        from app.audit.journal import head_seq
        from app.audit.projection import AuditIndex

        audit = database.client[audit_database_name(settings.database)]
        events, indexed = await head_seq(audit), await AuditIndex(audit).watermark()
        print(
            f"audit log: {events} events, {indexed} indexed for auditors "
            f"({events - indexed} behind)"
        )
    finally:
        await database.close()
    return 0


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def serve(settings: Settings, workers: int) -> int:
    from app.store.client import start_embedded

    embedded = None
    if not settings.mongodb_uri:
        # Launched first, so the database boots while the app's modules import.
        try:
            embedded = start_embedded(settings.data_dir, settings.fhir_base, wait=False)
        except RuntimeError as refused:
            print(f"hestia serve: {refused}", file=sys.stderr)
            return 1
    import uvicorn

    from app.main import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if embedded is not None:
        # Started here rather than in the app's lifespan so that several worker processes
        # share one database, and so that it is stopped exactly once.
        embedded.wait_ready()
        settings = replace(settings, mongodb_uri=embedded.uri)
        print(
            f"Database: embedded SecantusDB in {settings.data_dir / 'db'} (for development: "
            "it writes a few hundred resources/s; see docs/performance.md)",
            flush=True,
        )
    else:
        print("Database: HESTIA_MONGODB_URI", flush=True)
    print(f"Hestia FHIR R4 server: {settings.fhir_base}", flush=True)
    if settings.mllp_port:
        host = settings.mllp_host or settings.host
        print(f"HL7 v2 over MLLP: {host}:{settings.mllp_port}", flush=True)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
    }
    # uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, under the handler that was
    # installed before it started: make that an orderly exit so the `finally` below runs.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_quietly)
    relay = None
    try:
        if workers <= 1:
            uvicorn.run(create_app(settings), **options)
        else:
            # Worker processes build their app from the environment.
            os.environ["HESTIA_MONGODB_URI"] = settings.mongodb_uri
            os.environ["HESTIA_DATA_DIR"] = str(settings.data_dir)
            os.environ["HESTIA_MLLP_PORT"] = str(settings.mllp_port)
            os.environ["HESTIA_SUPERVISOR_PID"] = str(os.getpid())  # app/supervisor.py
            # Decided for the database this process chose (Settings), not the URI passed on.
            os.environ["HESTIA_AUDIT_SEARCH_INDEXES"] = (
                "on" if settings.audit_search_indexes else "off"
            )
            if settings.audit:
                from app.audit.relay_process import RelayProcess

                # One writer for the host's chain: workers writing it each for themselves
                # contend for every seq (app/audit/relay.py). One worker writes it itself:
                # through a relay, its audited reads were as many at saturation and fewer
                # with 16 connections (docs/performance.md).
                relay = RelayProcess(settings)
                relay.start()
                os.environ["HESTIA_AUDIT_RELAY"] = relay.path
            uvicorn.run("app.main:create_app", factory=True, workers=workers, **options)
    finally:
        if relay is not None:
            relay.stop()
        if embedded is not None:
            embedded.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "mongodb_uri": getattr(args, "mongodb_uri", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "mllp_port": getattr(args, "mllp_port", None),
    }
    settings = Settings.from_env(**overrides)
    if args.command != "serve" and not settings.base_url:
        # Tokens name the server as issuer and audience: use the running server's base URL.
        from app.store.client import running_server_info

        published = running_server_info(settings.data_dir).get("fhir_base")
        if isinstance(published, str) and published:
            settings = replace(settings, base_url=published)
    if args.command == "serve":
        return serve(settings, args.workers)
    if args.command == "status":
        return asyncio.run(status(settings))
    from app.security.cli import SECURITY_COMMANDS, run_security_command

    if args.command in SECURITY_COMMANDS:
        return run_security_command(args, settings)
    if args.command == "ingest":
        from app.ingest.cli import run_ingest_command

        return run_ingest_command(args, settings)
    if args.command == "audit":
        from app.audit.cli import audit_main

        return asyncio.run(audit_main(args, settings))
    return 2


if __name__ == "__main__":
    sys.exit(main())

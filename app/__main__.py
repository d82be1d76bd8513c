"""Command line: `hestia serve`, and the operator commands that share its --data-dir."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

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
    return parser


def serve(settings: Settings, workers: int) -> int:
    import uvicorn

    from app.main import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"Hestia FHIR R4 server: {settings.fhir_base}", flush=True)
    if settings.mongodb_uri:
        print("Database: HESTIA_MONGODB_URI", flush=True)
    else:
        print(f"Database: embedded SecantusDB in {settings.data_dir / 'db'}", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        workers=None if workers == 1 else workers,
        server_header=False,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "mongodb_uri": getattr(args, "mongodb_uri", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }
    settings = Settings.from_env(**overrides)
    if args.command == "serve":
        return serve(settings, args.workers)
    return 2


if __name__ == "__main__":
    sys.exit(main())

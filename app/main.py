"""create_app(settings): wiring only."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from app.api import fhir, ingest, smart
from app.api.audit import AuditMiddleware
from app.api.cors import BrowserAppCors
from app.api.errors import InternalErrorBoundary, internal_error, log_unexpected
from app.api.http import error_response
from app.audit.chain import audit_database_name
from app.audit.events import AuditSource
from app.audit.indexer import IndexerProcess, index_behind
from app.audit.log import AuditLog
from app.audit.projection import AuditIndex
from app.audit.relay import RelayClient
from app.audit.search import AuditSearchEngine
from app.context import Services
from app.fhir import model
from app.fhir.interactions import Interactions
from app.fhir.outcome import (
    BadRequest,
    FhirError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from app.fhir.search.execute import SearchEngine
from app.heap import serving_heap
from app.ingest.csv_ingest import CsvIngestor
from app.ingest.dicom_ingest import DicomIngestor, DicomSettings
from app.ingest.listener import audited_mllp_server
from app.ingest.mllp import MllpSettings
from app.ingest.service import Hl7v2Ingestor, IngestSettings
from app.security.admin import bootstrap_dev_client
from app.security.service import Security, SecurityConfig, parse_external_issuers
from app.settings import Settings
from app.store.cache import CurrentCache
from app.store.changes import ChangeFeed
from app.store.client import Database, shared_secret
from app.store.indexes import ensure_search_indexes
from app.store.pair_keys import PairKeys
from app.store.raw import RawStore
from app.store.store_format import claim_format
from app.store.versions import Store, instant, now_utc
from app.store.write_clock import WriteClock
from app.supervisor import stop_when_orphaned, supervisor_pid
from app.tasks import cancel_and_wait

log = logging.getLogger("hestia")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()

    audit_log: AuditLog | RelayClient | None = None
    if settings.audit and settings.audit_relay:
        # One of several workers: the host's relay writes the chain and indexes it.
        audit_log = RelayClient(settings.audit_relay, timeout=settings.audit_timeout_s)
    elif settings.audit:
        audit_log = AuditLog(
            window=settings.audit_window_ms / 1000,
            timeout=settings.audit_timeout_s,
            search_indexes=settings.audit_search_indexes,
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database.open(
            uri=settings.mongodb_uri,
            data_dir=settings.data_dir,
            name=settings.database,
            publish=True,
        )
        feed = ChangeFeed(database.db)
        audit_index: AuditIndex | None = None
        indexer: IndexerProcess | None = None
        pair_keys: PairKeys | None = None
        try:
            await database.ping()
            if audit_log is not None:
                # Fails start-up when the audit store is unreachable: no access unaudited.
                await audit_log.start(database.client[audit_database_name(settings.database)])
            # Before anything is written: an older server must not misread this store.
            await claim_format(database.db)
            cache = CurrentCache(settings.read_cache_entries)
            feed.subscribe(cache)
            clock = WriteClock()
            await clock.load(database.db)
            feed.subscribe(clock)
            store = Store(database.db, cache, clock)
            await store.ensure_indexes(sorted(model.STORABLE_TYPES))
            # Awaited, not built in the background: index DDL concurrent with the first
            # multi-document transactions stalls the embedded server. Idempotent and quick
            # (about 0.3 s) once the indexes exist.
            await ensure_search_indexes(store, sorted(model.STORABLE_TYPES))
            # Documents stored before the pair keys existed get them in the background;
            # searches use a type's pair key once all its documents have it.
            pair_keys = PairKeys(store)
            await pair_keys.open(model.STORABLE_TYPES)
            # Older instances in a rolling upgrade write without the keys: the feed tells.
            pair_keys.follow(feed)
            cursor_secret = await shared_secret(database, "cursor")
            engine = SearchEngine(
                store, cursor_secret=cursor_secret, pair_keys_ready=pair_keys.ready
            )
            audit_database = database.client[audit_database_name(settings.database)]
            audit_store = Store(audit_database)
            audit_index = AuditIndex(audit_database)
            if isinstance(audit_log, AuditLog):  # not with a relay: it indexes the host's chain
                indexer = await index_behind(
                    audit_log, audit_index, where=settings.audit_indexer, uri=database.uri
                )
            security = await open_security(settings, database)
            if security is not None:
                feed.subscribe(security.revocations)
            await feed.start()
            app.state.security = security
            interactions = Interactions(
                store, engine.match_ids, max_json_depth=settings.max_json_depth
            )
            raw = RawStore(database.db, inline_limit=settings.raw_inline_bytes)
            await raw.ensure_indexes()
            ingestor = Hl7v2Ingestor(
                interactions, raw, IngestSettings(max_message_bytes=settings.mllp_max_frame_bytes)
            )
            app.state.ingest = ingestor
            app.state.csv_ingest = CsvIngestor(interactions, raw, matcher=engine.match_ids)
            app.state.dicom_ingest = DicomIngestor(
                interactions,
                raw,
                DicomSettings(
                    wado_base_url=settings.wado_base_url or None,
                    keep="header" if settings.dicom_keep == "header" else "file",
                ),
                matcher=engine.match_ids,
            )
            app.state.services = Services(
                settings=settings,
                database=database,
                store=store,
                interactions=interactions,
                search=engine,
                started=instant(now_utc()),
                feed=feed,
                cache=cache,
                security=security,
                audit_store=audit_store,
                audit_index=audit_index,
                audit_search=AuditSearchEngine(
                    audit_store,
                    audit_index,
                    cursor_secret=cursor_secret,
                ),
            )
            mllp = None
            if settings.mllp_port:
                mllp = audited_mllp_server(
                    ingestor,
                    MllpSettings(
                        host=settings.mllp_host or settings.host,
                        port=settings.mllp_port,
                        max_frame_bytes=settings.mllp_max_frame_bytes,
                        # Several workers share the port; the kernel spreads connections.
                        reuse_port=True,
                    ),
                    audit_log,
                    AuditSource(settings.audit_source or settings.fhir_base),
                )
                await mllp.start()
            supervisor = supervisor_pid()
            watch = (
                asyncio.create_task(stop_when_orphaned(supervisor), name="supervisor-watch")
                if supervisor is not None
                else None
            )
            try:
                with serving_heap():
                    yield
            finally:
                await cancel_and_wait(watch)
                if mllp is not None:
                    await mllp.stop()
        finally:
            await feed.stop()
            if pair_keys is not None:
                await pair_keys.close()
            if audit_index is not None:
                await audit_index.stop()
            if indexer is not None:
                await indexer.stop()
            if audit_log is not None:
                await audit_log.stop()
            await database.close()

    app = FastAPI(
        title="Hestia FHIR R4 server",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Order is speed: FastAPI tries the routers in turn, and every route of each router it
    # passes, twice per request; the FHIR routes carry nearly all traffic, so only the three
    # routes that they would shadow come before them.
    # SMART discovery first: `/fhir/{type}/{id}` would otherwise take `/fhir/.well-known/…`.
    app.include_router(smart.discovery_router)
    # Binary/<payload id> serves stored HL7 v2 messages.
    app.include_router(ingest.binary_router)
    app.include_router(fhir.router)
    app.include_router(ingest.router)
    app.include_router(smart.router)
    install_error_handlers(app)
    app.add_middleware(InternalErrorBoundary)
    if settings.cors_origins:
        # Added before the audit gate, so inside it; outside routing and authentication, so
        # a preflight is answered before it could meet a 401, 404 or 405.
        app.add_middleware(BrowserAppCors, origins=settings.cors_origins)
    if audit_log is not None:
        # Outermost, so that 401s and errors from everything inside are audited too.
        app.add_middleware(
            AuditMiddleware,
            log=audit_log,
            source_name=settings.audit_source or settings.fhir_base,
        )
    else:
        log.warning("AUDIT IS OFF (HESTIA_AUDIT=off): accesses are not recorded")
    return app


async def open_security(settings: Settings, database: Database) -> Security | None:
    """The authorization server, or None when authentication is off (development only)."""
    if not settings.auth:
        log.warning(
            "AUTHENTICATION IS OFF (HESTIA_AUTH=off): every request has full access. "
            "Use this for local development only."
        )
        return None
    config = SecurityConfig(
        fhir_base=settings.fhir_base,
        external_issuers=parse_external_issuers(settings.external_issuers),
    )
    for issuer in config.external_issuers:
        log.info("accepting access tokens of external issuer %s", issuer.issuer)
    security = await Security.open(database.db, config)
    try:
        lines = await bootstrap_dev_client(security)
    except DuplicateKeyError:
        lines = None  # another worker registered it at the same moment
    if lines:
        # The console, not the log: the operator needs the secret once, log files keep it.
        print("\n".join(lines), flush=True)
    return security


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def on_fhir_error(request: Request, exc: FhirError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return error_response(
                MethodNotAllowed(f"{request.method} is not supported on {request.url.path}")
            )
        if exc.status_code == 404:
            return error_response(NotFound(f"No FHIR endpoint at {request.url.path}"))
        return error_response(FhirError(str(exc.detail), status=exc.status_code))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> Response:
        return error_response(BadRequest("The request is malformed"))

    @app.exception_handler(ConnectionFailure)
    async def on_db_down(request: Request, exc: ConnectionFailure) -> Response:
        log.error("database unreachable: %s", type(exc).__name__)
        return error_response(ServiceUnavailable("The database is unavailable; retry later"))

    @app.exception_handler(PyMongoError)
    async def on_db_error(request: Request, exc: PyMongoError) -> Response:
        log.error("database error: %s", type(exc).__name__)
        return error_response(
            FhirError("The database refused the operation", status=500, code="exception")
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Only failures outside InternalErrorBoundary (in the outer middlewares) reach here.
        log_unexpected(exc, request.method, request.url.path)
        return error_response(internal_error())

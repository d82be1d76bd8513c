"""Every setting, read from HESTIA_* environment variables (CLI flags override them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any


def _env(name: str, default: str) -> str:
    return os.environ.get(f"HESTIA_{name}", default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(f"HESTIA_{name}")
    return int(raw) if raw not in (None, "") else default


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(f"HESTIA_{name}")
    if raw in (None, ""):
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


AUDIT_INDEXERS = ("process", "in-process")


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = _env(name, default).strip().lower() or default
    if value not in choices:
        raise ValueError(f"HESTIA_{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _env_origins(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """`*`, comma-separated origins, or `off`; origins lose a trailing slash, since browsers
    send `scheme://host[:port]` and CORS compares exactly."""
    raw = os.environ.get(f"HESTIA_{name}")
    if raw in (None, "") or not raw.strip():
        return default
    if raw.strip().lower() in {"off", "none", "false", "no", "0"}:
        return ()
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    return ("*",) if "*" in origins else origins


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("./data")
    # Empty means: start the embedded SecantusDB server under data_dir/db.
    mongodb_uri: str = ""
    database: str = "hestia"
    # The externally visible base URL; derived from host/port when empty.
    base_url: str = ""
    auth: bool = True
    # Origins browser SMART apps may call from (bearer tokens, never cookies); () = CORS off.
    cors_origins: tuple[str, ...] = ("*",)
    # External identity providers whose access tokens are accepted: a JSON list of
    # {"issuer", "jwks_uri", "audience"?} objects (see app/security/service.py).
    external_issuers: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    max_json_depth: int = 64
    default_page_size: int = 20
    max_page_size: int = 1000
    max_bundle_entries: int = 10_000
    # Current versions kept in memory for reads by id; 0 turns the cache off.
    read_cache_entries: int = 50_000
    # MLLP listener for HL7 v2 feeds; 0 = off.
    mllp_port: int = 0
    mllp_host: str = ""
    mllp_max_frame_bytes: int = 8 * 1024 * 1024
    # Ingestion of CSV extracts and DICOM files.
    wado_base_url: str = ""
    dicom_keep: str = "file"  # or "header": keep only the bytes before pixel data
    raw_inline_bytes: int = 4 * 1024 * 1024  # larger payloads go to GridFS
    max_csv_bytes: int = 8 * 1024**3
    max_dicom_bytes: int = 2 * 1024**3
    # AuditEvent for every access (HESTIA_AUDIT=off only for benchmarks and development).
    audit: bool = True
    audit_retention_days: int = 2190
    audit_window_ms: int = 0
    audit_timeout_s: float = 5.0
    # The audit log's patient index (app/audit/log.py ensure_indexes). Unset: on with
    # HESTIA_MONGODB_URI, where it costs microseconds; off on the embedded database, where it
    # costs the indexer half as much again (auditors' patient queries then read every block).
    audit_search_indexes: bool = False
    # Who indexes AuditEvents for auditors: a process beside each worker (app/audit/indexer.py)
    # or the worker itself ("in-process", projection.py's pacing).
    audit_indexer: str = "process"
    # The socket of the host's audit relay (app/audit/relay.py): set by `hestia serve --workers
    # N` for its workers, which then append through it instead of each writing the chain.
    audit_relay: str = ""
    audit_source: str = ""
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        base = cls(
            host=_env("HOST", cls.host),
            port=_env_int("PORT", cls.port),
            data_dir=Path(_env("DATA_DIR", str(cls.data_dir))),
            mongodb_uri=_env("MONGODB_URI", ""),
            database=_env("DATABASE", cls.database),
            base_url=_env("BASE_URL", ""),
            auth=_env_bool("AUTH", True),
            cors_origins=_env_origins("CORS_ORIGINS", cls.cors_origins),
            external_issuers=_env("EXTERNAL_ISSUERS", ""),
            max_body_bytes=_env_int("MAX_BODY_BYTES", cls.max_body_bytes),
            max_json_depth=_env_int("MAX_JSON_DEPTH", cls.max_json_depth),
            default_page_size=_env_int("DEFAULT_PAGE_SIZE", cls.default_page_size),
            max_page_size=_env_int("MAX_PAGE_SIZE", cls.max_page_size),
            max_bundle_entries=_env_int("MAX_BUNDLE_ENTRIES", cls.max_bundle_entries),
            read_cache_entries=_env_int("READ_CACHE_ENTRIES", cls.read_cache_entries),
            mllp_port=_env_int("MLLP_PORT", 0),
            mllp_host=_env("MLLP_HOST", ""),
            mllp_max_frame_bytes=_env_int("MLLP_MAX_FRAME_BYTES", cls.mllp_max_frame_bytes),
            wado_base_url=_env("WADO_BASE_URL", ""),
            dicom_keep=_env("DICOM_KEEP", cls.dicom_keep),
            raw_inline_bytes=_env_int("RAW_INLINE_BYTES", cls.raw_inline_bytes),
            max_csv_bytes=_env_int("MAX_CSV_BYTES", cls.max_csv_bytes),
            max_dicom_bytes=_env_int("MAX_DICOM_BYTES", cls.max_dicom_bytes),
            audit=_env_bool("AUDIT", True),
            audit_retention_days=_env_int("AUDIT_RETENTION_DAYS", cls.audit_retention_days),
            audit_window_ms=_env_int("AUDIT_WINDOW_MS", cls.audit_window_ms),
            audit_timeout_s=float(_env("AUDIT_TIMEOUT_S", str(cls.audit_timeout_s))),
            audit_search_indexes=_env_bool("AUDIT_SEARCH_INDEXES", False),
            audit_indexer=_env_choice("AUDIT_INDEXER", cls.audit_indexer, AUDIT_INDEXERS),
            audit_relay=_env("AUDIT_RELAY", ""),
            audit_source=_env("AUDIT_SOURCE", ""),
            log_level=_env("LOG_LEVEL", cls.log_level),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in clean:
            clean["data_dir"] = Path(clean["data_dir"])
        if "audit_search_indexes" not in clean and _env("AUDIT_SEARCH_INDEXES", "") == "":
            # Unset: decided by the database the settings end up with.
            clean["audit_search_indexes"] = bool(clean.get("mongodb_uri", base.mongodb_uri))
        return replace(base, **clean)

    @property
    def fhir_base(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"http://{self.host}:{self.port}/fhir"

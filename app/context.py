"""The long-lived objects a request needs, built once by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from app.audit.projection import AuditIndex
from app.fhir.interactions import Interactions
from app.fhir.search.execute import SearchEngine
from app.security.service import Security
from app.settings import Settings
from app.store.cache import CurrentCache
from app.store.changes import ChangeFeed
from app.store.client import Database
from app.store.versions import Store


@dataclass
class Services:
    settings: Settings
    database: Database
    store: Store
    interactions: Interactions
    search: SearchEngine
    started: str
    feed: ChangeFeed
    cache: CurrentCache
    # The audit log's database, read as a FHIR store by auditors' AuditEvent searches.
    audit_store: Store
    # Brought up to date with the audit journal before auditors' reads and searches.
    audit_index: AuditIndex
    audit_search: SearchEngine
    security: Security | None = None

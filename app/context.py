"""The long-lived objects a request needs, built once by `create_app`."""

from __future__ import annotations

from dataclasses import dataclass

from app.fhir.interactions import Interactions
from app.settings import Settings
from app.store.client import Database
from app.store.versions import Store


@dataclass
class Services:
    settings: Settings
    database: Database
    store: Store
    interactions: Interactions
    started: str

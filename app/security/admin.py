"""Operator actions behind `hestia clients|users|token|launch|keys` (see cli.py), and the
development bootstrap. Plain async functions on a database handle, printable results.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from app.security.clients import Client, ClientRegistry, ClientType
from app.security.grants import LaunchStore
from app.security.keystore import KeyStore
from app.security.scopes import parse_scopes
from app.security.service import Security
from app.security.tokens import issue_access_token
from app.security.users import User, UserStore

Db = AsyncDatabase[dict[str, Any]]
CLI_CLIENT_ID = "hestia-cli"
DEV_CLIENT_ID = "hestia-dev"
DEV_CLIENT_SCOPE = "system/*.cruds"


async def clients_add(
    db: Db,
    client_id: str,
    client_type: ClientType,
    *,
    scope: str,
    redirect_uris: Sequence[str] = (),
    name: str = "",
    jwks: Mapping[str, Any] | None = None,
    jwks_file: str | Path | None = None,
    jwks_uri: str | None = None,
) -> tuple[Client, str | None]:
    """Register a client; the second value is a symmetric client's secret (shown once)."""
    if jwks_file is not None:
        text = await asyncio.to_thread(Path(jwks_file).read_text, "utf-8")
        jwks = json.loads(text)
    return await ClientRegistry(db).add(
        client_id,
        client_type,
        scope=scope,
        redirect_uris=tuple(redirect_uris),
        name=name,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )


async def clients_list(db: Db) -> list[dict[str, Any]]:
    return [c.summary() for c in await ClientRegistry(db).list()]


async def clients_remove(db: Db, client_id: str) -> bool:
    return await ClientRegistry(db).remove(client_id)


async def users_add(
    db: Db,
    username: str,
    password: str,
    *,
    fhir_user: str | None = None,
    roles: Sequence[str] = (),
    name: str = "",
) -> User:
    return await UserStore(db).add(
        username, password, fhir_user=fhir_user, roles=tuple(roles), name=name
    )


async def users_list(db: Db) -> list[dict[str, Any]]:
    return [u.summary() for u in await UserStore(db).list()]


async def users_remove(db: Db, username: str) -> bool:
    return await UserStore(db).remove(username)


async def issue_operator_token(
    db: Db,
    fhir_base: str,
    scope: str,
    *,
    patient: str | None = None,
    fhir_user: str | None = None,
    lifetime: int = 3600,
) -> str:
    """A signed access token for operators and scripted tests (`hestia token`)."""
    scopes = parse_scopes(scope)
    if scopes.ignored:
        bad = ", ".join(f"{i.scope} ({i.reason})" for i in scopes.ignored)
        raise ValueError(f"unrecognised scopes: {bad}")
    if not scopes.grants:
        raise ValueError("give at least one resource scope, e.g. system/*.rs")
    if "patient" in scopes.context and not patient:
        raise ValueError("patient/ scopes need --patient ID")
    keys = await KeyStore.open(db)
    base = fhir_base.rstrip("/")
    return issue_access_token(
        keys.ring,
        issuer=base,
        audience=base,
        client_id=CLI_CLIENT_ID,
        scope=str(scopes),
        subject="operator",
        patient=patient,
        fhir_user=fhir_user,
        lifetime=lifetime,
    ).token


async def create_launch(db: Db, *, patient: str, encounter: str | None = None) -> str:
    """An EHR launch id for `patient` (pass it to the app as `launch=`)."""
    return await LaunchStore(db).create(patient=patient, encounter=encounter)


async def rotate_signing_key(db: Db) -> list[str]:
    """New current signing keys (access token, id token) for every instance (they reload
    within seconds); their kids."""
    return await (await KeyStore.open(db)).rotate()


async def bootstrap_dev_client(security: Security) -> list[str] | None:
    """On a server with no clients, register a development client; the lines to print.

    Call at start-up when authentication is on. The secret appears only in the returned
    lines (for the operator's console), never in the log.
    """
    if await security.clients.count() > 0:
        return None
    _, secret = await security.clients.add(
        DEV_CLIENT_ID,
        "confidential-symmetric",
        scope=DEV_CLIENT_SCOPE,
        name="Hestia development admin client",
    )
    config = security.config
    return [
        "No OAuth clients were registered: created the development client "
        f"'{DEV_CLIENT_ID}' ({DEV_CLIENT_SCOPE}).",
        f"Its secret is shown only now: {secret}",
        "Get an access token:",
        f"  curl -s -u '{DEV_CLIENT_ID}:{secret}' -d grant_type=client_credentials "
        f"-d 'scope={DEV_CLIENT_SCOPE}' {config.token_url}",
        "or, on this machine: hestia token --scope 'system/*.rs' [--patient ID]",
        "Remove it for production: hestia clients remove hestia-dev",
    ]

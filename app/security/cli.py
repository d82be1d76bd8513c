"""The security commands of the `hestia` CLI.

app/__main__.py calls `add_security_commands(commands, common)` while building its parser and
`run_security_command(args, settings)` when `args.command` is in `SECURITY_COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from app.security import admin
from app.security.clients import CLIENT_TYPES, ClientConflict
from app.security.users import UserConflict
from app.settings import Settings
from app.store.client import Database

SECURITY_COMMANDS = ("clients", "users", "token", "launch", "keys")


def add_security_commands(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the subcommands to `commands` (an argparse subparsers object).

    `common` adds --data-dir/--mongodb-uri, as for every other command.
    """
    clients = commands.add_parser("clients", help="manage OAuth clients")
    clients_sub = clients.add_subparsers(dest="action", required=True)
    add = clients_sub.add_parser("add", help="register a client")
    common(add)
    add.add_argument("client_id")
    add.add_argument("--type", required=True, choices=CLIENT_TYPES, dest="client_type")
    add.add_argument("--scope", required=True, help='allowed scopes, e.g. "patient/*.rs openid"')
    add.add_argument("--redirect-uri", action="append", default=[], dest="redirect_uris")
    add.add_argument("--name", default="")
    add.add_argument("--jwks-file", help="public JWK Set (JSON file) of an asymmetric client")
    add.add_argument("--jwks-uri", help="URL of an asymmetric client's JWK Set")
    for action in ("list", "remove"):
        sub = clients_sub.add_parser(action, help=f"{action} clients")
        common(sub)
        if action == "remove":
            sub.add_argument("client_id")

    users = commands.add_parser("users", help="manage local users of the login page")
    users_sub = users.add_subparsers(dest="action", required=True)
    uadd = users_sub.add_parser("add", help="add a user (password from HESTIA_PASSWORD or prompt)")
    common(uadd)
    uadd.add_argument("username")
    uadd.add_argument("--fhir-user", help="e.g. Practitioner/123 or Patient/456")
    uadd.add_argument("--role", action="append", default=[], dest="roles")
    uadd.add_argument("--name", default="")
    for action in ("list", "remove"):
        sub = users_sub.add_parser(action, help=f"{action} users")
        common(sub)
        if action == "remove":
            sub.add_argument("username")

    token = commands.add_parser("token", help="print a signed access token")
    common(token)
    token.add_argument("--scope", required=True)
    token.add_argument("--patient")
    token.add_argument("--fhir-user")
    token.add_argument("--lifetime", type=int, default=3600, help="seconds")

    launch = commands.add_parser("launch", help="create an EHR launch id")
    common(launch)
    launch.add_argument("--patient", required=True)
    launch.add_argument("--encounter")

    keys = commands.add_parser("keys", help="signing keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    common(keys_sub.add_parser("rotate", help="new signing keys (access and id tokens)"))


def run_security_command(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    database = Database.open(
        uri=settings.mongodb_uri, data_dir=settings.data_dir, name=settings.database
    )
    try:
        await database.ping()
        return await _dispatch(args, settings, database)
    except (ValueError, ClientConflict, UserConflict, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await database.close()


async def _dispatch(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    db = database.db
    command, action = args.command, getattr(args, "action", None)
    if command == "clients" and action == "add":
        client, secret = await admin.clients_add(
            db,
            args.client_id,
            args.client_type,
            scope=args.scope,
            redirect_uris=args.redirect_uris,
            name=args.name,
            jwks_file=args.jwks_file,
            jwks_uri=args.jwks_uri,
        )
        _print(client.summary())
        if secret:
            print(f"client_secret (shown once): {secret}")
        return 0
    if command == "clients" and action == "list":
        _print(await admin.clients_list(db))
        return 0
    if command == "clients" and action == "remove":
        return 0 if await admin.clients_remove(db, args.client_id) else _missing(args.client_id)
    if command == "users" and action == "add":
        password = os.environ.get("HESTIA_PASSWORD") or getpass.getpass("Password: ")
        user = await admin.users_add(
            db, args.username, password, fhir_user=args.fhir_user, roles=args.roles, name=args.name
        )
        _print(user.summary())
        return 0
    if command == "users" and action == "list":
        _print(await admin.users_list(db))
        return 0
    if command == "users" and action == "remove":
        return 0 if await admin.users_remove(db, args.username) else _missing(args.username)
    if command == "token":
        print(
            await admin.issue_operator_token(
                db,
                settings.fhir_base,
                args.scope,
                patient=args.patient,
                fhir_user=args.fhir_user,
                lifetime=args.lifetime,
            )
        )
        return 0
    if command == "launch":
        print(await admin.create_launch(db, patient=args.patient, encounter=args.encounter))
        return 0
    if command == "keys" and action == "rotate":
        access_kid, id_token_kid = await admin.rotate_signing_key(db)
        print(f"new access token signing key: {access_kid}")
        print(f"new id token signing key: {id_token_kid}")
        return 0
    return 2


def _print(data: Any) -> None:
    print(json.dumps(data, indent=1, default=str))


def _missing(name: str) -> int:
    print(f"error: {name!r} not found", file=sys.stderr)
    return 1

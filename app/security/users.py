"""Local users for the login form (collection `oauth_users`).

A user has a username, a scrypt password hash, roles and, optionally, the FHIR resource that
represents them (`fhirUser`: `Practitioner/…`, `Patient/…`, `RelatedPerson/…`, `Person/…`
or `PractitionerRole/…`). A user whose fhirUser is a Patient is a patient-facing user: their
`user/` scopes reach only their own compartment (see policy.py), and a standalone
`launch/patient` picks them without showing the picker.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from app.security.passwords import dummy_verify, hash_password, verify_password

COLLECTION = "oauth_users"
FHIR_USER_TYPES = ("Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person")
_USERNAME = re.compile(r"[A-Za-z0-9._@\-]{1,128}")
_FHIR_USER = re.compile(r"(?P<type>[A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})")
MIN_PASSWORD_LENGTH = 8


class UserConflict(ValueError):
    """A user with that name already exists."""


@dataclass(frozen=True)
class User:
    username: str
    fhir_user: str | None = None
    roles: tuple[str, ...] = ()
    name: str = ""

    @property
    def patient_id(self) -> str | None:
        """The Patient id when this user is a patient, else None."""
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return self.fhir_user.removeprefix("Patient/")
        return None

    def summary(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "fhirUser": self.fhir_user,
            "roles": list(self.roles),
            "name": self.name,
        }


class UserStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._collection = db[COLLECTION]

    async def add(
        self,
        username: str,
        password: str,
        *,
        fhir_user: str | None = None,
        roles: list[str] | tuple[str, ...] = (),
        name: str = "",
    ) -> User:
        if not _USERNAME.fullmatch(username):
            raise ValueError("username must be 1-128 characters of [A-Za-z0-9._@-]")
        if len(password) < MIN_PASSWORD_LENGTH:
            raise ValueError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
        if fhir_user is not None:
            match = _FHIR_USER.fullmatch(fhir_user)
            if match is None or match["type"] not in FHIR_USER_TYPES:
                raise ValueError(
                    f"fhirUser must be <type>/<id> with type one of {', '.join(FHIR_USER_TYPES)}"
                )
        doc = {
            "_id": username,
            "password": hash_password(password),
            "fhir_user": fhir_user,
            "roles": list(roles),
            "name": name,
            "created": datetime.now(UTC),
        }
        try:
            await self._collection.insert_one(doc)
        except DuplicateKeyError as exc:
            raise UserConflict(f"user {username!r} already exists") from exc
        return _from_doc(doc)

    async def get(self, username: str) -> User | None:
        if not isinstance(username, str) or not _USERNAME.fullmatch(username):
            return None
        doc = await self._collection.find_one({"_id": username})
        return _from_doc(doc) if doc else None

    async def authenticate(self, username: str, password: str) -> User | None:
        """The user if the password is right; None otherwise, in constant-ish time."""
        doc = None
        if isinstance(username, str) and _USERNAME.fullmatch(username):
            doc = await self._collection.find_one({"_id": username})
        if doc is None:
            dummy_verify(password)
            return None
        return _from_doc(doc) if verify_password(password, doc["password"]) else None

    async def list(self) -> list[User]:
        return [_from_doc(d) async for d in self._collection.find({}).sort("_id", 1)]

    async def remove(self, username: str) -> bool:
        result = await self._collection.delete_one({"_id": username})
        return result.deleted_count == 1


def _from_doc(doc: Mapping[str, Any]) -> User:
    return User(
        username=doc["_id"],
        fhir_user=doc.get("fhir_user"),
        roles=tuple(doc.get("roles", ())),
        name=doc.get("name", ""),
    )

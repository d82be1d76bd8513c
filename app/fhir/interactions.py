"""The FHIR RESTful interactions on single resources: create, read, vread, update, delete,
their conditional forms, and history (R4 http.html). No HTTP here: callers pass parsed
inputs and get `Result`s; failures are `FhirError`s.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession

from app.fhir import model
from app.fhir.indexing import index_resource
from app.fhir.outcome import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
)
from app.store.versions import Store, Version, VersionConflict, WriteSpec, instant, now_utc

JsonDict = dict[str, Any]
Matcher = Callable[[str, list[tuple[str, str]]], Awaitable[list[str]]]


@dataclass
class Result:
    """A completed interaction: status plus the version it produced or found."""

    status: int
    version: Version | None = None
    resource: JsonDict | None = None

    @property
    def location(self) -> str | None:
        if self.version is None:
            return None
        return f"{self.version.resource_type}/{self.version.id}/_history/{self.version.vid}"


def version_from_doc(resource_type: str, doc: JsonDict) -> Version:
    return Version(
        resource_type=resource_type,
        id=str(doc.get("id", doc.get("_id"))),
        vid=int(doc["vid"]),
        updated=doc["updated"],
        resource=None if doc.get("deleted") else doc.get("resource"),
        method=str(doc.get("method", "PUT")),
    )


def parse_etag(value: str, header: str = "If-Match") -> int:
    """`W/"3"` or `"3"` → 3."""
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    if not text.isdigit():
        raise BadRequest(f"{header} must be an ETag like W/\"3\", got '{value[:40]}'")
    return int(text)


class Interactions:
    """Single-resource interactions over the versioned store.

    `matcher(type, criteria)` returns the ids of current resources matching a search; it is
    how the conditional interactions find their target.
    """

    def __init__(self, store: Store, matcher: Matcher) -> None:
        self.store = store
        self.matcher = matcher

    # Reads

    async def read(self, resource_type: str, resource_id: str) -> Version:
        model.check_id(resource_id)
        doc = await self.store.read_current(resource_type, resource_id)
        if doc is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        version = version_from_doc(resource_type, {**doc, "id": resource_id})
        if version.deleted:
            raise Gone(
                f"{resource_type}/{resource_id} was deleted",
                headers={"ETag": f'W/"{version.vid}"'},
            )
        return version

    async def vread(self, resource_type: str, resource_id: str, vid: str) -> Version:
        model.check_id(resource_id)
        if not vid.isdigit():
            raise NotFound(f"{resource_type}/{resource_id} has no version '{vid[:20]}'")
        doc = await self.store.read_version(resource_type, resource_id, int(vid))
        if doc is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {vid}")
        version = version_from_doc(resource_type, doc)
        if version.deleted:
            raise Gone(
                f"Version {vid} of {resource_type}/{resource_id} is a deletion",
                headers={"ETag": f'W/"{version.vid}"'},
            )
        return version

    # Writes

    def _prepare(self, resource_type: str, resource: JsonDict) -> JsonDict:
        if resource.get("resourceType") != resource_type:
            raise BadRequest(
                f"resourceType '{resource.get('resourceType')}' does not match the URL's "
                f"'{resource_type}'",
                expression=["resourceType"],
            )
        model.validate(resource)
        return resource

    async def _write(
        self,
        session: AsyncClientSession,
        resource_type: str,
        resource_id: str,
        resource: JsonDict | None,
        method: str,
        expected_vid: int | None,
    ) -> Version:
        updated = now_utc()
        last_updated = instant(updated)
        keys: JsonDict = {}
        compartments: list[str] = []
        if resource is not None:
            stored_shape = model.with_meta(resource, resource_id, 0, last_updated)
            keys, compartments = index_resource(stored_shape)
        spec = WriteSpec(resource_type, resource_id, resource, method, keys, compartments)

        def make(vid: int) -> JsonDict | None:
            if resource is None:
                return None
            return model.with_meta(resource, resource_id, vid, last_updated)

        return await self.store.write(session, spec, expected_vid, updated, make)

    async def create(
        self,
        resource_type: str,
        resource: JsonDict,
        *,
        if_none_exist: list[tuple[str, str]] | None = None,
    ) -> Result:
        self._prepare(resource_type, resource)
        if if_none_exist is not None:
            matches = await self.matcher(resource_type, if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist matched {len(matches)} {resource_type} resources"
                )
            if matches:
                return Result(200, await self.read(resource_type, matches[0]))
        resource_id = str(uuid.uuid4())

        async def work(session: AsyncClientSession) -> Version:
            return await self._write(session, resource_type, resource_id, resource, "POST", None)

        return Result(201, await self.store.run_transaction(work))

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: JsonDict,
        *,
        if_match: int | None = None,
    ) -> Result:
        model.check_id(resource_id)
        if "id" not in resource:
            raise BadRequest(
                "The resource in a PUT must carry an id equal to the one in the URL",
                expression=[f"{resource_type}.id"],
            )
        if resource.get("id") != resource_id:
            raise BadRequest(
                f"The resource id '{str(resource.get('id'))[:64]}' does not match the URL's "
                f"'{resource_id}'",
                expression=[f"{resource_type}.id"],
            )
        self._prepare(resource_type, resource)

        async def work(session: AsyncClientSession) -> Result:
            doc = await self.store.read_current(resource_type, resource_id, session)
            current_vid = int(doc["vid"]) if doc else None
            if if_match is not None and (current_vid != if_match or (doc and doc["deleted"])):
                raise PreconditionFailed(
                    f"If-Match W/\"{if_match}\" does not match the current version "
                    f"{'(none)' if current_vid is None else current_vid} of "
                    f"{resource_type}/{resource_id}"
                )
            version = await self._write(
                session, resource_type, resource_id, resource, "PUT", current_vid
            )
            created = doc is None or bool(doc.get("deleted"))
            return Result(201 if created else 200, version)

        return await self._run(work, resource_type, resource_id)

    async def _run(
        self,
        work: Callable[[AsyncClientSession], Awaitable[Result]],
        resource_type: str,
        resource_id: str,
    ) -> Result:
        try:
            return await self.store.run_transaction(work)
        except VersionConflict:
            raise Conflict(
                f"{resource_type}/{resource_id} is being changed by another request; retry"
            ) from None

    async def conditional_update(
        self,
        resource_type: str,
        criteria: list[tuple[str, str]],
        resource: JsonDict,
        *,
        if_match: int | None = None,
    ) -> Result:
        matches = await self.matcher(resource_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional update criteria matched {len(matches)} {resource_type} "
                "resources; they must match at most one"
            )
        if matches:
            target = matches[0]
            if "id" in resource and resource["id"] != target:
                raise BadRequest(
                    f"The resource id '{resource['id']}' differs from the matched {target}",
                    expression=[f"{resource_type}.id"],
                )
            return await self.update(
                resource_type, target, {**resource, "id": target}, if_match=if_match
            )
        if "id" in resource:
            return await self.update(resource_type, str(resource["id"]), resource)
        return await self.create(resource_type, resource)

    async def delete(self, resource_type: str, resource_id: str) -> Result:
        model.check_id(resource_id)

        async def work(session: AsyncClientSession) -> Result:
            doc = await self.store.read_current(resource_type, resource_id, session)
            if doc is None or doc.get("deleted"):
                return Result(204)
            version = await self._write(
                session, resource_type, resource_id, None, "DELETE", int(doc["vid"])
            )
            return Result(204, version)

        return await self._run(work, resource_type, resource_id)

    async def conditional_delete(
        self, resource_type: str, criteria: list[tuple[str, str]]
    ) -> Result:
        matches = await self.matcher(resource_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional delete criteria matched {len(matches)} {resource_type} "
                "resources; this server deletes at most one at a time"
            )
        if not matches:
            return Result(204)
        return await self.delete(resource_type, matches[0])

"""The FHIR RESTful interactions on single resources: create, read, vread, update, patch, delete,
their conditional forms, and history (R4 http.html). No HTTP here: callers pass parsed
inputs and get `Result`s; failures are `FhirError`s.

Each write exists twice: `create`, `update`, ... run their own transaction, and `create_in`,
`update_in`, ... run inside a caller's `UnitOfWork`, which is how a transaction Bundle puts
all its entries into one MongoDB transaction. The `*_in` methods take resources that already
passed `prepare` (validation is done once, outside the retried transaction).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from pymongo.asynchronous.client_session import AsyncClientSession

from app.fhir import model
from app.fhir.indexing import index_resource
from app.fhir.outcome import (
    BadRequest,
    Conflict,
    Gone,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from app.fhir.patch import apply_patch, detect_patch_kind
from app.fhir.patch.kind import FHIR_JSON_MEDIA_TYPES, JSON_PATCH_MEDIA_TYPE, media_type
from app.store.versions import (
    Store,
    Version,
    VersionConflict,
    WriteBatch,
    WriteSpec,
    instant,
    now_utc,
)

JsonDict = dict[str, Any]
Criteria = list[tuple[str, str]]
Matcher = Callable[[str, Criteria], Awaitable[list[str]]]
JSON_PATCH_TYPES = FHIR_JSON_MEDIA_TYPES | {JSON_PATCH_MEDIA_TYPE}


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


@dataclass
class UnitOfWork:
    """The writes of one transaction attempt: staged in `batch`, written by `flush`.

    `raw` (ids of source payloads) is recorded on every version written through it.
    A new UnitOfWork is made for every attempt of a retried transaction.
    """

    session: AsyncClientSession
    batch: WriteBatch
    raw: Sequence[str] = ()
    guards: set[str] = field(default_factory=set)

    async def flush(self) -> list[Version]:
        return await self.batch.flush(self.session)


@dataclass(frozen=True)
class Current:
    """A resource's current-collection document as the caller already read it in this
    transaction (`doc` None: never stored), so a write need not read it again."""

    doc: JsonDict | None


@dataclass(frozen=True)
class PatchRequest:
    """A parsed PATCH body and the Content-Type that says which format it is."""

    content_type: str
    body: Any


def version_from_doc(resource_type: str, doc: JsonDict) -> Version:
    return Version(
        resource_type=resource_type,
        id=str(doc.get("id", doc.get("_id"))),
        vid=int(doc["vid"]),
        updated=doc["updated"],
        resource=None if doc.get("deleted") else doc.get("resource"),
        method=str(doc.get("method", "PUT")),
        compartments=tuple(doc["compartments"]) if "compartments" in doc else None,
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


def guard_key(resource_type: str, criteria: Criteria) -> str:
    """The guard document id for a conditional write: type plus order-free criteria.

    Hashed because criteria carry identifiers (PHI) that have no business in a side table.
    """
    canonical = resource_type + "?" + urlencode(sorted(criteria))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_patch(content_type: str, body: bytes, *, max_depth: int = 64) -> PatchRequest:
    """Decode a PATCH body and check its format now, before anything is read or written."""
    if media_type(content_type) not in JSON_PATCH_TYPES:
        detect_patch_kind(content_type, None)  # raises 415 naming what is accepted
    data = model.parse_json(body, max_depth=max_depth)
    detect_patch_kind(content_type, data)
    return PatchRequest(content_type, data)


class Interactions:
    """Single-resource interactions over the versioned store.

    `matcher(type, criteria)` returns the ids of current resources matching a search; it is
    how the conditional interactions find their target.
    """

    def __init__(self, store: Store, matcher: Matcher, *, max_json_depth: int = 64) -> None:
        self.store = store
        self.matcher = matcher
        self.max_json_depth = max_json_depth

    # Reads

    async def read(
        self, resource_type: str, resource_id: str, session: AsyncClientSession | None = None
    ) -> Version:
        model.check_id(resource_id)
        doc = await self.store.read_current(resource_type, resource_id, session)
        if doc is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        version = version_from_doc(resource_type, {**doc, "id": resource_id})
        if version.deleted:
            raise Gone(
                f"{resource_type}/{resource_id} was deleted",
                headers={"ETag": f'W/"{version.vid}"'},
            )
        return version

    async def vread(
        self,
        resource_type: str,
        resource_id: str,
        vid: str,
        session: AsyncClientSession | None = None,
    ) -> Version:
        model.check_id(resource_id)
        if not vid.isdigit():
            raise NotFound(f"{resource_type}/{resource_id} has no version '{vid[:20]}'")
        doc = await self.store.read_version(resource_type, resource_id, int(vid), session)
        if doc is None:
            raise NotFound(f"{resource_type}/{resource_id} has no version {vid}")
        version = version_from_doc(resource_type, doc)
        if version.deleted:
            raise Gone(
                f"Version {vid} of {resource_type}/{resource_id} is a deletion",
                headers={"ETag": f'W/"{version.vid}"'},
            )
        return version

    # Preparation (outside any transaction)

    def prepare(self, resource_type: str, resource: JsonDict) -> JsonDict:
        """Check the type and validate; every `*_in` write expects a prepared resource."""
        if resource.get("resourceType") != resource_type:
            raise BadRequest(
                f"resourceType '{resource.get('resourceType')}' does not match the URL's "
                f"'{resource_type}'",
                expression=["resourceType"],
            )
        model.validate(resource)
        return resource

    def prepare_update(self, resource_type: str, resource_id: str, resource: JsonDict) -> JsonDict:
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
        return self.prepare(resource_type, resource)

    def parse_patch(self, content_type: str, body: bytes) -> PatchRequest:
        return parse_patch(content_type, body, max_depth=self.max_json_depth)

    # Staging a version

    def _stage(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource_id: str,
        resource: JsonDict | None,
        method: str,
        expected_vid: int | None,
    ) -> Version:
        updated = now_utc()
        # WriteBatch.add claims expected_vid + 1; build the stored body once, index it as is.
        body = (
            None
            if resource is None
            else model.with_meta(resource, resource_id, (expected_vid or 0) + 1, instant(updated))
        )
        keys: JsonDict = {}
        compartments: list[str] = []
        if body is not None:
            keys, compartments = index_resource(body)
        spec = WriteSpec(
            resource_type, resource_id, body, method, keys, compartments, tuple(uow.raw)
        )

        def make(vid: int) -> JsonDict | None:
            assert body is None or body["meta"]["versionId"] == str(vid)
            return body

        return uow.batch.add(spec, expected_vid, updated, make)

    async def match_for_write(
        self, uow: UnitOfWork, resource_type: str, criteria: Criteria
    ) -> list[str]:
        """Search for a conditional write that may create; see Store.claim_guard.

        A hit needs no guard. On a miss the guard is written first and the search repeated,
        so a creator that committed meanwhile is either seen now or makes this attempt
        conflict and retry.
        """
        matches = await self.matcher(resource_type, criteria)
        if matches:
            return matches
        key = guard_key(resource_type, criteria)
        if key not in uow.guards:
            await self.store.claim_guard(uow.session, key)
            uow.guards.add(key)
        return await self.matcher(resource_type, criteria)

    async def _read_matched(
        self, uow: UnitOfWork, resource_type: str, resource_id: str
    ) -> JsonDict:
        doc = await self.store.read_current(resource_type, resource_id, uow.session)
        if doc is None or doc.get("deleted"):
            # The search saw a commit newer than this transaction's snapshot: start again.
            raise VersionConflict(f"{resource_type}/{resource_id} appeared concurrently")
        return doc

    # Writes inside a caller's unit of work

    async def create_in(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource: JsonDict,
        *,
        if_none_exist: Criteria | None = None,
        resource_id: str | None = None,
    ) -> Result:
        """Create (POST). `resource_id` lets a retried transaction keep the id it assigned."""
        if if_none_exist is not None:
            matches = await self.match_for_write(uow, resource_type, if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(
                    f"If-None-Exist matched {len(matches)} {resource_type} resources"
                )
            if matches:
                doc = await self._read_matched(uow, resource_type, matches[0])
                return Result(200, version_from_doc(resource_type, {**doc, "id": matches[0]}))
        new_id = resource_id or str(uuid.uuid4())
        return Result(201, self._stage(uow, resource_type, new_id, resource, "POST", None))

    async def update_in(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource_id: str,
        resource: JsonDict,
        *,
        if_match: int | None = None,
        if_none_match_any: bool = False,
        current: Current | None = None,
    ) -> Result:
        doc = (
            current.doc
            if current is not None
            else await self.store.read_current(resource_type, resource_id, uow.session)
        )
        current_vid = int(doc["vid"]) if doc else None
        live = doc is not None and not doc.get("deleted")
        if if_match is not None and (current_vid != if_match or not live):
            raise PreconditionFailed(
                f'If-Match W/"{if_match}" does not match the current version '
                f"{'(none)' if current_vid is None else current_vid} of "
                f"{resource_type}/{resource_id}"
            )
        if if_none_match_any and live:
            raise PreconditionFailed(
                f"If-None-Match: * but {resource_type}/{resource_id} already exists"
            )
        version = self._stage(uow, resource_type, resource_id, resource, "PUT", current_vid)
        return Result(200 if live else 201, version)

    async def conditional_update_in(
        self,
        uow: UnitOfWork,
        resource_type: str,
        criteria: Criteria,
        resource: JsonDict,
        *,
        if_match: int | None = None,
        new_id: str | None = None,
    ) -> Result:
        """PUT Type?criteria: update the one match, or create when there is none."""
        target = await self.conditional_target(uow, resource_type, criteria, resource)
        if target is not None:
            return await self.update_in(
                uow, resource_type, target, {**resource, "id": target}, if_match=if_match
            )
        if "id" in resource:
            return await self.update_in(uow, resource_type, str(resource["id"]), resource)
        created_id = new_id or str(uuid.uuid4())
        return Result(201, self._stage(uow, resource_type, created_id, resource, "POST", None))

    async def conditional_target(
        self, uow: UnitOfWork, resource_type: str, criteria: Criteria, resource: JsonDict
    ) -> str | None:
        """The id a conditional update writes to (None: it creates)."""
        matches = await self.match_for_write(uow, resource_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional update criteria matched {len(matches)} {resource_type} "
                "resources; they must match at most one"
            )
        if not matches:
            return None
        target = matches[0]
        if "id" in resource and resource["id"] != target:
            raise BadRequest(
                f"The resource id '{resource['id']}' differs from the matched {target}",
                expression=[f"{resource_type}.id"],
            )
        await self._read_matched(uow, resource_type, target)
        return target

    async def patch_in(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource_id: str,
        patch: PatchRequest,
        *,
        if_match: int | None = None,
        transform: Callable[[JsonDict], JsonDict] | None = None,
    ) -> Result:
        """PATCH inside `uow`; `transform` (a Bundle's reference rewriting) runs on the result."""
        model.check_id(resource_id)
        doc = await self.store.read_current(resource_type, resource_id, uow.session)
        if doc is None:
            raise NotFound(f"{resource_type}/{resource_id} is not known")
        if doc.get("deleted"):
            raise Gone(
                f"{resource_type}/{resource_id} was deleted", headers={"ETag": f'W/"{doc["vid"]}"'}
            )
        current_vid = int(doc["vid"])
        if if_match is not None and current_vid != if_match:
            raise PreconditionFailed(
                f'If-Match W/"{if_match}" does not match the current version {current_vid} '
                f"of {resource_type}/{resource_id}"
            )
        patched = self.patched(resource_type, resource_id, doc["resource"], patch)
        if transform is not None:
            patched = transform(patched)
        return Result(
            200, self._stage(uow, resource_type, resource_id, patched, "PATCH", current_vid)
        )

    def patched(
        self, resource_type: str, resource_id: str, current: JsonDict, patch: PatchRequest
    ) -> JsonDict:
        """Apply `patch` to the stored body; the result must still be this resource."""
        result = apply_patch(current, patch.content_type, patch.body)
        if result.get("resourceType") != resource_type:
            raise Unprocessable(
                "A PATCH may not change resourceType", expression=[f"{resource_type}.resourceType"]
            )
        if result.get("id") != resource_id:
            raise Unprocessable(
                "A PATCH may not change or remove the id", expression=[f"{resource_type}.id"]
            )
        model.validate(result)
        return result

    async def conditional_patch_target(self, resource_type: str, criteria: Criteria) -> str:
        matches = await self.matcher(resource_type, criteria)
        if not matches:
            raise NotFound(f"The conditional patch criteria matched no {resource_type}")
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional patch criteria matched {len(matches)} {resource_type} "
                "resources; they must match exactly one"
            )
        return matches[0]

    async def delete_in(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource_id: str,
        *,
        if_match: int | None = None,
    ) -> Result:
        model.check_id(resource_id)
        doc = await self.store.read_current(resource_type, resource_id, uow.session)
        live = doc is not None and not doc.get("deleted")
        if if_match is not None and (not live or doc is None or int(doc["vid"]) != if_match):
            raise PreconditionFailed(
                f'If-Match W/"{if_match}" does not match the current version of '
                f"{resource_type}/{resource_id}"
            )
        if not live or doc is None:
            return Result(204)
        version = self._stage(uow, resource_type, resource_id, None, "DELETE", int(doc["vid"]))
        return Result(204, version)

    async def conditional_delete_target(self, resource_type: str, criteria: Criteria) -> str | None:
        matches = await self.matcher(resource_type, criteria)
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional delete criteria matched {len(matches)} {resource_type} "
                "resources; this server deletes at most one at a time"
            )
        return matches[0] if matches else None

    # One-shot interactions: each runs its own transaction

    async def _one_shot(
        self,
        work: Callable[[UnitOfWork], Awaitable[Result]],
        what: str,
        raw: Sequence[str] = (),
    ) -> Result:
        async def attempt(session: AsyncClientSession) -> Result:
            uow = UnitOfWork(session, WriteBatch(self.store), raw)
            result = await work(uow)
            await uow.flush()
            return result

        try:
            return await self.store.run_transaction(attempt)
        except VersionConflict:
            raise Conflict(f"{what} is being changed by another request; retry") from None

    async def create(
        self,
        resource_type: str,
        resource: JsonDict,
        *,
        if_none_exist: Criteria | None = None,
    ) -> Result:
        self.prepare(resource_type, resource)
        return await self._one_shot(
            lambda uow: self.create_in(uow, resource_type, resource, if_none_exist=if_none_exist),
            resource_type,
        )

    async def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: JsonDict,
        *,
        if_match: int | None = None,
    ) -> Result:
        self.prepare_update(resource_type, resource_id, resource)
        return await self._one_shot(
            lambda uow: self.update_in(
                uow, resource_type, resource_id, resource, if_match=if_match
            ),
            f"{resource_type}/{resource_id}",
        )

    async def conditional_update(
        self,
        resource_type: str,
        criteria: Criteria,
        resource: JsonDict,
        *,
        if_match: int | None = None,
    ) -> Result:
        if "id" in resource:
            model.check_id(str(resource["id"]), f"{resource_type}.id")
        self.prepare(resource_type, resource)
        new_id = str(uuid.uuid4())
        return await self._one_shot(
            lambda uow: self.conditional_update_in(
                uow, resource_type, criteria, resource, if_match=if_match, new_id=new_id
            ),
            resource_type,
        )

    async def patch(
        self,
        resource_type: str,
        resource_id: str,
        content_type: str,
        body: bytes,
        *,
        if_match: int | None = None,
        check: Callable[[JsonDict], None] | None = None,
    ) -> Result:
        """PATCH Type/id with JSON Patch or FHIRPath Patch (R4 http.html#patch).

        `check(patched)` may refuse the result (raise) before it is written, e.g. a patient-
        scoped caller moving a resource to another patient."""
        model.check_id(resource_id)
        patch = self.parse_patch(content_type, body)
        return await self._one_shot(
            lambda uow: self.patch_in(
                uow, resource_type, resource_id, patch, if_match=if_match, transform=_checked(check)
            ),
            f"{resource_type}/{resource_id}",
        )

    async def conditional_patch(
        self,
        resource_type: str,
        criteria: Criteria,
        content_type: str,
        body: bytes,
        *,
        if_match: int | None = None,
        check: Callable[[JsonDict], None] | None = None,
    ) -> Result:
        """PATCH Type?criteria: exactly one match is patched; none → 404, several → 412."""
        patch = self.parse_patch(content_type, body)
        target = await self.conditional_patch_target(resource_type, criteria)
        return await self._one_shot(
            lambda uow: self.patch_in(
                uow, resource_type, target, patch, if_match=if_match, transform=_checked(check)
            ),
            f"{resource_type}/{target}",
        )

    async def delete(self, resource_type: str, resource_id: str) -> Result:
        model.check_id(resource_id)
        return await self._one_shot(
            lambda uow: self.delete_in(uow, resource_type, resource_id),
            f"{resource_type}/{resource_id}",
        )

    async def conditional_delete(self, resource_type: str, criteria: Criteria) -> Result:
        target = await self.conditional_delete_target(resource_type, criteria)
        if target is None:
            return Result(204)
        return await self.delete(resource_type, target)


def _checked(check: Callable[[JsonDict], None] | None) -> Callable[[JsonDict], JsonDict] | None:
    if check is None:
        return None

    def transform(resource: JsonDict) -> JsonDict:
        check(resource)
        return resource

    return transform

"""Bundle.entry → `Entry`: the request URL split into type/id/criteria, the conditional headers
parsed, the resource (or patch) checked. All of it happens once, before any transaction."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from app.fhir import model
from app.fhir.interactions import Criteria, Interactions, PatchRequest, parse_etag
from app.fhir.outcome import BadRequest

JsonDict = dict[str, Any]

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# R4 http.html#trules: DELETE, then POST, then PUT/PATCH, then GET/HEAD.
PROCESSING_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
JSON_PATCH = "application/json-patch+json"


@dataclass
class Entry:
    index: int
    method: str
    resource_type: str
    resource_id: str | None = None
    vid: str | None = None
    history: bool = False
    criteria: Criteria | None = None
    full_url: str | None = None
    resource: JsonDict | None = None
    patch: PatchRequest | None = None
    if_none_exist: Criteria | None = None
    if_match: int | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    # Chosen once, outside the transaction, so every retry writes the same id.
    new_id: str | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


def _query(text: str) -> Criteria:
    return [(k, v) for k, v in parse_qsl(text, keep_blank_values=True)]


def split_url(url: str, base_url: str) -> tuple[list[str], Criteria | None]:
    """`[base/]Type[/id[/_history[/vid]]][?query]` → path parts and query criteria."""
    text = url.strip()
    base = base_url.rstrip("/") + "/"
    if text.startswith(base):
        text = text[len(base) :]
    elif "://" in text.split("?", 1)[0]:
        raise BadRequest(f"request.url '{url[:100]}' is not on this server ({base_url})")
    parts = urlsplit(text)
    path = [p for p in parts.path.split("/") if p]
    criteria = _query(parts.query) if "?" in text else None
    return path, criteria


def _criteria_text(value: Any, name: str) -> Criteria:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"request.{name} must be a search query string")
    query = value.split("?", 1)[1] if "?" in value else value
    criteria = _query(query)
    if not criteria:
        raise BadRequest(f"request.{name} carries no search criteria")
    return criteria


def _instant(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadRequest("request.ifModifiedSince must be an instant")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"request.ifModifiedSince '{value[:40]}' is not an instant") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _patch(resource: Any, interactions: Interactions) -> PatchRequest:
    """A PATCH entry carries a Binary (JSON Patch) or a Parameters (FHIRPath Patch)."""
    if not isinstance(resource, dict):
        raise BadRequest("A PATCH entry needs a Binary (JSON Patch) or Parameters resource")
    if resource.get("resourceType") == "Parameters":
        return PatchRequest("application/fhir+json", resource)
    if resource.get("resourceType") == "Binary":
        content_type = str(resource.get("contentType", ""))
        try:
            data = base64.b64decode(str(resource.get("data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("Binary.data of the PATCH entry is not base64") from None
        return interactions.parse_patch(content_type or JSON_PATCH, data)
    raise BadRequest(
        "A PATCH entry's resource must be a Binary holding JSON Patch or a Parameters "
        "holding FHIRPath Patch"
    )


def parse_entry(index: int, raw: Any, base_url: str, interactions: Interactions) -> Entry:
    """Check one entry and prepare what it writes (validation happens here, once)."""
    if not isinstance(raw, dict):
        raise BadRequest("The entry is not a JSON object")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise BadRequest("The entry has no request (method and url)")
    method = request.get("method")
    url = request.get("url")
    if method not in METHODS:
        raise BadRequest(f"request.method must be one of {', '.join(METHODS)}")
    if not isinstance(url, str) or not url.strip():
        raise BadRequest("request.url is missing")
    path, criteria = split_url(url, base_url)
    if not path:
        raise BadRequest(f"request.url '{url[:100]}' names no resource type")
    resource_type = model.check_type(path[0])
    entry = Entry(index, method, resource_type, criteria=criteria)
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise BadRequest("fullUrl must be a string")
    entry.full_url = full_url
    _parse_path(entry, path, url)
    _parse_conditions(entry, request)
    resource = raw.get("resource")
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise BadRequest(f"A {method} entry needs a resource")
        entry.resource = resource
        _prepare_write(entry, interactions)
    elif method == "PATCH":
        entry.patch = _patch(resource, interactions)
    return entry


def _parse_path(entry: Entry, path: list[str], url: str) -> None:
    method = entry.method
    if len(path) >= 2:
        entry.resource_id = model.check_id(path[1], "request.url")
    if len(path) >= 3:
        if path[2] != "_history" or len(path) > 4:
            raise BadRequest(f"request.url '{url[:100]}' is not a supported URL")
        entry.history = len(path) == 3
        entry.vid = path[3] if len(path) == 4 else None
    if method == "POST" and len(path) != 1:
        raise BadRequest("A POST entry's url must be the resource type alone")
    if method in ("PUT", "PATCH", "DELETE"):
        if len(path) > 2:
            raise BadRequest(f"A {method} entry's url must be Type/id or Type?criteria")
        if len(path) == 1 and not entry.criteria:
            raise BadRequest(f"A {method} entry's url needs an id or search criteria")
    if method in ("GET", "HEAD") and entry.history:
        raise BadRequest("History is not supported inside a Bundle")


def _parse_conditions(entry: Entry, request: JsonDict) -> None:
    if request.get("ifNoneExist") is not None:
        if entry.method != "POST":
            raise BadRequest("request.ifNoneExist applies to POST entries only")
        entry.if_none_exist = _criteria_text(request["ifNoneExist"], "ifNoneExist")
    if request.get("ifMatch") is not None:
        entry.if_match = parse_etag(str(request["ifMatch"]), "request.ifMatch")
    if request.get("ifNoneMatch") is not None:
        entry.if_none_match = str(request["ifNoneMatch"]).strip()
        if entry.method == "PUT" and entry.if_none_match != "*":
            raise BadRequest("On a PUT entry, request.ifNoneMatch may only be '*'")
    if request.get("ifModifiedSince") is not None:
        entry.if_modified_since = _instant(request["ifModifiedSince"])


def _prepare_write(entry: Entry, interactions: Interactions) -> None:
    resource = entry.resource
    assert resource is not None
    if entry.method == "POST":
        # The server assigns the id of a created resource; a client id is dropped (R4 3.1.0.8.1).
        body = {k: v for k, v in resource.items() if k != "id"}
        entry.resource = interactions.prepare(entry.resource_type, body)
        entry.new_id = str(uuid.uuid4())
    elif entry.resource_id is not None:
        interactions.prepare_update(entry.resource_type, entry.resource_id, resource)
    else:
        if "id" in resource:
            model.check_id(str(resource["id"]), f"{entry.resource_type}.id")
        interactions.prepare(entry.resource_type, resource)
        entry.new_id = str(uuid.uuid4())

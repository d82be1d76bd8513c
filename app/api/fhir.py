"""The FHIR REST interactions over HTTP (R4 http.html). Translation only: FHIR semantics
live in app.fhir, storage in app.store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.access import (
    audit_note,
    authorize,
    begin_audit,
    bundle_guard,
    caller,
    ensure_current_visible,
    ensure_visible,
    ensure_within_filters,
    ensure_writable,
    scoped_searcher,
)
from app.api.audit_events import (
    AUDIT_EVENT,
    authorize_auditor,
    capability_entry,
    check_parameters,
    index_for_auditors,
    journal_damage,
    read_event,
    refuse_in_general_search,
    refuse_write,
)
from app.api.http import (
    FhirResponse,
    check_content_type,
    http_date,
    is_pretty,
    negotiate,
    parse_http_date,
    prefer_return,
    prefer_strict,
    read_body,
    version_headers,
    write_response,
)
from app.audit.journal import UnreadableBlock
from app.context import Services
from app.fhir import capability, history, model
from app.fhir.bundle.processor import BundleProcessor
from app.fhir.interactions import parse_etag
from app.fhir.outcome import BadRequest, Forbidden
from app.fhir.search.extract import patient_compartments
from app.security.discovery import capability_security
from app.security.policy import Access, PolicyInteraction
from app.store.versions import Version, instant

router = APIRouter(prefix="/fhir")

JsonDict = dict[str, Any]
PATCH_CONTENT_TYPES = ("application/json-patch+json", "application/fhir+json", "application/json")
RESULT_PARAMS = {"_format", "_pretty", "_count", "_cursor", "_since", "_at", "_total"}


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def base_url(request: Request) -> str:
    configured = services(request).settings.base_url
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/") + "/fhir"


def query_items(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def criteria(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in RESULT_PARAMS]


def page_size(request: Request) -> int:
    settings = services(request).settings
    raw = request.query_params.get("_count")
    if raw is None:
        return settings.default_page_size
    if not raw.isdigit():
        raise BadRequest(
            f"_count must be a non-negative integer, got '{raw[:20]}'", expression=["_count"]
        )
    return min(int(raw), settings.max_page_size)


async def resource_body(request: Request) -> JsonDict:
    settings = services(request).settings
    check_content_type(request)
    body = await read_body(request, settings.max_body_bytes)
    return model.parse_resource(body, max_depth=settings.max_json_depth)


def note_version(request: Request, version: Version | None) -> None:
    """Name the version served or written, and its patients, in the audit record."""
    if version is None or not services(request).settings.audit:
        return
    patients: Sequence[str] = version.compartments or ()
    if version.compartments is None and version.resource:
        patients = patient_compartments(version.resource)
    audit_note(
        request, resource_id=version.id, version_id=str(version.vid), patients=list(patients)
    )


def note_bundle(
    request: Request, bundle: JsonDict, entry_patients: dict[str, list[str]] | None = None
) -> None:
    """The patients whose data a search or history bundle carries, for the audit record.

    `entry_patients` (fullUrl → stored compartments, from the search engine) spares extracting
    them again from each resource; entries it does not cover are extracted."""
    if not services(request).settings.audit:
        return
    known = entry_patients or {}
    found: dict[str, None] = {}
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource")
        if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
            stored = known.get(str(entry.get("fullUrl")))
            found.update(
                dict.fromkeys(stored if stored is not None else patient_compartments(resource))
            )
    audit_note(request, patients=list(found))


def read_response(request: Request, version: Version) -> Response:
    note_version(request, version)
    headers = version_headers(version, base_url(request))
    none_match = request.headers.get("if-none-match")
    if none_match and none_match.strip() in (f'W/"{version.vid}"', f'"{version.vid}"', "*"):
        return Response(status_code=304, headers=headers)
    modified_since = request.headers.get("if-modified-since")
    if modified_since:
        since = parse_http_date(modified_since, "If-Modified-Since")
        if version.updated.replace(microsecond=0) <= since:
            return Response(status_code=304, headers=headers)
    return FhirResponse(version.resource, 200, headers, pretty=is_pretty(request))


# Whole-system


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    negotiate(request)
    svc = services(request)
    base = base_url(request)
    statement = _capabilities.get(base)
    if statement is None or statement["date"] != svc.started:
        security = capability_security(svc.security.config) if svc.security else None
        statement = capability.capability_statement(
            base,
            published=svc.started,
            search_params={t: svc.search.search_parameters(t) for t in model.STORABLE_TYPES},
            security=security,
            overrides={
                AUDIT_EVENT: capability_entry(svc.audit_search.search_parameters(AUDIT_EVENT))
            },
        )
        _capabilities[base] = statement
    return FhirResponse(statement, pretty=is_pretty(request))


# Built once per base URL (and server start): it only changes when the code does.
_capabilities: dict[str, JsonDict] = {}


@router.get("")
async def search_system(request: Request) -> Response:
    negotiate(request)
    items = query_items(request)
    types = [t for k, v in items if k == "_type" for t in v.split(",") if t]
    for resource_type in types:
        model.check_type(resource_type)
    refuse_in_general_search(types)
    accesses = [await authorize(request, "search", t) for t in types] or [
        await authorize(request, "search-system", "*")
    ]
    access = accesses[0]
    audit_note(request, interaction="search-system", resource_type=None)
    if len(accesses) > 1 and not all(a.unrestricted for a in accesses):
        raise Forbidden(
            "This token's access is limited per type (patient compartment or granular "
            "scopes): search one type at a time, or through Patient/[id]/[type]"
        )
    return await _search(request, None, items, access)


@router.post("")
async def bundle(request: Request) -> Response:
    """Batch and transaction Bundles (R4 http.html#transaction)."""
    negotiate(request)
    svc = services(request)
    posted = await resource_body(request)
    kind = posted.get("type") if posted.get("resourceType") == "Bundle" else None
    begin_audit(request, "transaction" if kind == "transaction" else "batch")
    context = await caller(request)
    request.state.access = context
    audit_note(request, client_id=context.client_id, fhir_user=context.fhir_user, jti=context.jti)
    base = base_url(request)
    processor = BundleProcessor(svc.interactions, scoped_searcher(request, context, base))
    outcome = await processor.process_with_versions(
        posted,
        base_url=base,
        prefer_return=prefer_return(request) if "prefer" in request.headers else "minimal",
        max_entries=svc.settings.max_bundle_entries,
        guard=bundle_guard(request, context) if context.authenticated else None,
    )
    patients: dict[str, None] = {}
    for version in outcome.written:
        if version.resource:
            patients.update(dict.fromkeys(patient_compartments(version.resource)))
    audit_note(request, patients=list(patients))
    return FhirResponse(outcome.bundle, pretty=is_pretty(request))


@router.get("/_history")
async def history_system(request: Request) -> Response:
    access = await authorize(request, "history-system", "*")
    if access.patient_scope is not None:
        raise Forbidden(
            "System history is not available to a patient-scoped token; read the history "
            "of one resource instead"
        )
    return await _history(request, None, None)


# Type level


@router.get("/{resource_type}")
async def search_type(request: Request, resource_type: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        return await _search_audit(request, query_items(request))
    access = await authorize(request, "search", resource_type)
    return await _search(request, resource_type, query_items(request), access)


@router.post("/{resource_type}/_search")
async def search_post(request: Request, resource_type: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    form = await request.form()
    items = query_items(request) + [(k, str(v)) for k, v in form.multi_items()]
    if resource_type == AUDIT_EVENT:
        return await _search_audit(request, items)
    access = await authorize(request, "search", resource_type)
    return await _search(request, resource_type, items, access)


@router.post("/{resource_type}")
async def create(request: Request, resource_type: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("POST")
    access = await authorize(request, "create", resource_type)
    resource = await resource_body(request)
    ensure_writable(access, resource)
    if_none_exist = request.headers.get("if-none-exist")
    conditions = None
    if if_none_exist is not None:
        from urllib.parse import parse_qsl

        conditions = parse_qsl(if_none_exist.lstrip("?"), keep_blank_values=True)
        if not conditions:
            raise BadRequest("If-None-Exist carries no search criteria")
        _no_conditional_for_patient_scope(access)
    result = await services(request).interactions.create(
        resource_type, resource, if_none_exist=conditions
    )
    message = "Created" if result.status == 201 else "Matched an existing resource; not created"
    note_version(request, result.version)
    return write_response(request, result.status, result.version, base_url(request), message)


@router.put("/{resource_type}")
async def conditional_update(request: Request, resource_type: str) -> Response:
    _, conditions = await _conditional(request, resource_type, "update")
    resource = await resource_body(request)
    if_match = _if_match(request)
    result = await services(request).interactions.conditional_update(
        resource_type, conditions, resource, if_match=if_match
    )
    note_version(request, result.version)
    return write_response(request, result.status, result.version, base_url(request), "Updated")


@router.delete("/{resource_type}")
async def conditional_delete(request: Request, resource_type: str) -> Response:
    _, conditions = await _conditional(request, resource_type, "delete")
    result = await services(request).interactions.conditional_delete(resource_type, conditions)
    return _delete_response(request, result.version)


@router.get("/{resource_type}/_history")
async def history_type(request: Request, resource_type: str) -> Response:
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("GET _history")
    access = await authorize(request, "history-type", resource_type)
    if access.patient_scope is not None:
        raise Forbidden(
            f"History of all {resource_type} resources is not available to a patient-scoped "
            "token; read the history of one resource instead"
        )
    return await _history(request, resource_type, None)


# Instance level


@router.get("/{resource_type}/{resource_id}")
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        await authorize_auditor(request, "read")
        return read_response(request, await read_event(request, resource_id))
    access = await authorize(request, "read", resource_type, resource_id)
    version = await services(request).interactions.read(resource_type, resource_id)
    ensure_visible(access, version, f"{resource_type}/{resource_id}")
    await ensure_within_filters(request, access, resource_type, resource_id)
    return read_response(request, version)


@router.put("/{resource_type}/{resource_id}")
async def update(request: Request, resource_type: str, resource_id: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("PUT")
    model.check_id(resource_id)
    access = await authorize(request, "update", resource_type, resource_id)
    resource = await resource_body(request)
    ensure_writable(access, resource)
    if not access.unrestricted:
        await ensure_current_visible(request, access, resource_type, resource_id)
    result = await services(request).interactions.update(
        resource_type, resource_id, resource, if_match=_if_match(request)
    )
    message = "Created" if result.status == 201 else "Updated"
    note_version(request, result.version)
    return write_response(request, result.status, result.version, base_url(request), message)


@router.delete("/{resource_type}/{resource_id}")
async def delete(request: Request, resource_type: str, resource_id: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("DELETE")
    access = await authorize(request, "delete", resource_type, resource_id)
    if not access.unrestricted:
        await ensure_current_visible(request, access, resource_type, resource_id)
    result = await services(request).interactions.delete(resource_type, resource_id)
    return _delete_response(request, result.version)


@router.get("/{resource_type}/{resource_id}/_history")
async def history_instance(request: Request, resource_type: str, resource_id: str) -> Response:
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("GET _history")
    model.check_id(resource_id)
    access = await authorize(request, "history-instance", resource_type, resource_id)
    await ensure_within_filters(request, access, resource_type, resource_id)
    return await _history(request, resource_type, resource_id, access)


@router.get("/{resource_type}/{resource_id}/_history/{vid}")
async def vread(request: Request, resource_type: str, resource_id: str, vid: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        await authorize_auditor(request, "vread")
        return read_response(request, await read_event(request, resource_id, vid))
    access = await authorize(request, "vread", resource_type, resource_id)
    version = await services(request).interactions.vread(resource_type, resource_id, vid)
    ensure_visible(access, version, f"{resource_type}/{resource_id}")
    await ensure_within_filters(request, access, resource_type, resource_id)
    return read_response(request, version)


@router.get("/{compartment_type}/{compartment_id}/{resource_type}")
async def search_compartment(
    request: Request, compartment_type: str, compartment_id: str, resource_type: str
) -> Response:
    negotiate(request)
    model.check_type(compartment_type)
    model.check_id(compartment_id)
    target = None if resource_type == "*" else resource_type
    if target is not None:
        model.check_type(target)
        refuse_in_general_search([target])
    access = await authorize(request, "search", target or "*")
    return await _search(
        request,
        target,
        query_items(request),
        access,
        compartment=(compartment_type, compartment_id),
    )


@router.patch("/{resource_type}/{resource_id}")
async def patch(request: Request, resource_type: str, resource_id: str) -> Response:
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write("PATCH")
    model.check_id(resource_id)
    access = await authorize(request, "patch", resource_type, resource_id)
    content_type, body = await _patch_body(request)
    if not access.unrestricted:
        await ensure_current_visible(request, access, resource_type, resource_id)
    result = await services(request).interactions.patch(
        resource_type,
        resource_id,
        content_type,
        body,
        if_match=_if_match(request),
        check=None if access.unrestricted else lambda patched: ensure_writable(access, patched),
    )
    note_version(request, result.version)
    return write_response(request, result.status, result.version, base_url(request), "Patched")


@router.patch("/{resource_type}")
async def conditional_patch(request: Request, resource_type: str) -> Response:
    access, conditions = await _conditional(request, resource_type, "patch")
    content_type, body = await _patch_body(request)
    result = await services(request).interactions.conditional_patch(
        resource_type,
        conditions,
        content_type,
        body,
        if_match=_if_match(request),
        check=None if access.unrestricted else lambda patched: ensure_writable(access, patched),
    )
    note_version(request, result.version)
    return write_response(request, result.status, result.version, base_url(request), "Patched")


# Helpers


async def _patch_body(request: Request) -> tuple[str, bytes]:
    """JSON Patch, or FHIRPath Patch as a FHIR JSON Parameters resource (http.html#patch)."""
    content_type = check_content_type(request, PATCH_CONTENT_TYPES)
    return content_type, await read_body(request, services(request).settings.max_body_bytes)


async def _conditional(
    request: Request, resource_type: str, interaction: PolicyInteraction
) -> tuple[Access, list[tuple[str, str]]]:
    """The checks every conditional write starts with; the access and the search criteria."""
    negotiate(request)
    model.check_type(resource_type)
    if resource_type == AUDIT_EVENT:
        refuse_write(request.method)
    access = await authorize(request, interaction, resource_type)
    _no_conditional_for_patient_scope(access)
    conditions = criteria(request)
    if not conditions:
        raise BadRequest(f"A conditional {interaction} needs search criteria in the URL")
    return access, conditions


def _no_conditional_for_patient_scope(access: Access) -> None:
    # A conditional write would act on whatever the criteria match before the compartment
    # could be checked; patient-scoped apps address resources by id instead.
    if access.patient_scope is not None:
        raise Forbidden(
            "Conditional create, update and delete are not available to patient-scoped "
            "tokens; address the resource by id"
        )


def _if_match(request: Request) -> int | None:
    value = request.headers.get("if-match")
    return parse_etag(value) if value else None


def _delete_response(request: Request, version: Version | None) -> Response:
    note_version(request, version)
    headers = {"ETag": f'W/"{version.vid}"'} if version else {}
    return Response(status_code=204, headers=headers)


async def _history(
    request: Request,
    resource_type: str | None,
    resource_id: str | None,
    access: Access | None = None,
) -> Response:
    negotiate(request)
    svc = services(request)
    params = request.query_params
    count = page_size(request)
    page = await history.history(
        svc.store,
        resource_type,
        resource_id,
        count=count,
        since=params.get("_since"),
        at=params.get("_at"),
        cursor=params.get("_cursor"),
    )
    if access is not None and access.patient_scope is not None:
        for doc in page.entries:
            ensure_visible(access, doc.get("resource"), f"{resource_type}/{resource_id}")
    base = base_url(request)
    path = "/".join(p for p in (base, resource_type, resource_id, "_history") if p)
    kept = [(k, v) for k, v in params.multi_items() if k != "_cursor"]
    self_url = path + ("?" + urlencode(params.multi_items()) if params else "")
    next_url = (
        path + "?" + urlencode([*kept, ("_cursor", page.next_cursor)]) if page.next_cursor else None
    )
    bundle = history.history_bundle(page, base, self_url, next_url)
    note_bundle(request, bundle)
    return FhirResponse(bundle, pretty=is_pretty(request))


async def _search_audit(request: Request, items: list[tuple[str, str]]) -> Response:
    await authorize_auditor(request, "search")
    check_parameters(items)
    svc = services(request)
    await index_for_auditors(svc.audit_index)
    try:
        bundle = await svc.audit_search.search(
            AUDIT_EVENT,
            items,
            base_url=base_url(request),
            page_size=svc.settings.default_page_size,
            max_page_size=svc.settings.max_page_size,
            strict=True,
        )
    except UnreadableBlock as exc:
        raise journal_damage(exc) from None
    note_bundle(request, bundle)
    return FhirResponse(bundle, pretty=is_pretty(request))


async def _search(
    request: Request,
    resource_type: str | None,
    items: list[tuple[str, str]],
    access: Access,
    compartment: tuple[str, str] | None = None,
) -> Response:
    """Run a search; `items` are all the request's parameters, result parameters included."""
    svc = services(request)
    settings = svc.settings
    entry_patients: dict[str, list[str]] = {}
    bundle = await svc.search.search(
        resource_type,
        items + access.extra_criteria(),
        base_url=base_url(request),
        page_size=settings.default_page_size,
        max_page_size=settings.max_page_size,
        strict=prefer_strict(request),
        compartment=compartment,
        patient_scope=access.patient_scope,
        entry_patients=entry_patients,
    )
    context = await caller(request)
    # Included resources of types the token may not search are dropped, never shown.
    entries = bundle.get("entry")
    if entries and context.authenticated:
        bundle["entry"] = [
            e
            for e in entries
            if e.get("search", {}).get("mode") != "include"
            or context.permits("search", str(e.get("resource", {}).get("resourceType")))
        ]
    note_bundle(request, bundle, entry_patients)
    return FhirResponse(bundle, pretty=is_pretty(request))


__all__ = ["http_date", "instant", "router"]

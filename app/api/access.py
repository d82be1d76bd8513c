"""Who is calling, and what they may reach: the security check every FHIR route starts with.

Authentication and scope checks happen here, before any FHIR logic (DESIGN.md, request flow);
the compartment limits they produce travel with the call into the search and read layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request

from app.audit.events import AuditFacts
from app.context import Services
from app.fhir.bundle.entries import Entry
from app.fhir.outcome import Forbidden, NotFound
from app.fhir.search.extract import patient_compartments
from app.security.policy import Access, AccessContext, PolicyInteraction, authenticate
from app.store.versions import Version

JsonDict = dict[str, Any]

UNRESTRICTED = AccessContext.unrestricted()


async def caller(request: Request) -> AccessContext:
    """The request's AccessContext; 401 without a valid token when authentication is on."""
    services: Services = request.app.state.services
    if not services.settings.auth or services.security is None:
        return UNRESTRICTED
    cached = getattr(request.state, "caller", None)
    if isinstance(cached, AccessContext):
        return cached
    context = await authenticate(request.headers.get("authorization"), services.security)
    request.state.caller = context
    return context


# Policy interaction names → FHIR restful-interaction codes, as AuditEvent.subtype uses them.
AUDIT_INTERACTION = {"search": "search-type"}


async def authorize(
    request: Request,
    interaction: PolicyInteraction,
    resource_type: str,
    resource_id: str | None = None,
) -> Access:
    """The reach of this request's interaction on `resource_type`; 401 or 403 otherwise.

    It also starts the request's audit record, so that a refused request is described too.
    """
    facts = AuditFacts(
        AUDIT_INTERACTION.get(interaction, interaction),
        resource_type=None if resource_type == "*" else resource_type,
        resource_id=resource_id,
        query=request.url.query or None,
    )
    request.state.audit_facts = facts
    context = await caller(request)
    facts.with_agent(context)
    request.state.access = context
    return context.authorize(interaction, resource_type)


def audit_note(request: Request, **fields: Any) -> None:
    """Add what became known while serving (version, patients touched) to the audit record."""
    facts = getattr(request.state, "audit_facts", None)
    if facts is None:
        return
    for name, value in fields.items():
        setattr(facts, name, value)


def ensure_visible(access: Access, found: Version | dict[str, Any] | None, reference: str) -> None:
    """404 for a resource outside the caller's patient compartment (existence not leaked).

    `found` is a Version (its stored compartments are used when known) or a resource body."""
    if access.patient_scope is None or found is None:
        return
    if isinstance(found, Version):
        if found.resource is None:
            return
        compartments = found.compartments
        if compartments is None:
            compartments = tuple(patient_compartments(found.resource))
    else:
        compartments = tuple(patient_compartments(found))
    access.ensure_visible(compartments, reference)


def ensure_writable(access: Access, resource: dict[str, object]) -> None:
    """403 when a patient-scoped caller writes content outside its patient's compartment."""
    if access.patient_scope is None:
        return
    access.ensure_writable(patient_compartments(dict(resource)))


async def ensure_within_filters(
    request: Request, access: Access, resource_type: str, resource_id: str
) -> None:
    """404 for a resource a granular scope (e.g. `?category=laboratory`) does not cover.

    The check runs the scope's criteria as a search for this id, so reads apply exactly the
    rule searches apply.
    """
    if not access.filters:
        return
    services: Services = request.app.state.services
    items = [("_id", resource_id), *access.extra_criteria()]
    if not await services.search.match_ids(resource_type, items, limit=1):
        raise NotFound(f"{resource_type}/{resource_id} is not known")


def begin_audit(request: Request, interaction: str, resource_type: str | None = None) -> None:
    """Start the audit record of a request that is not a single-type interaction."""
    request.state.audit_facts = AuditFacts(
        interaction, resource_type=resource_type, query=request.url.query or None
    )


ENTRY_INTERACTIONS: dict[str, PolicyInteraction] = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


def bundle_guard(request: Request, context: AccessContext) -> Callable[[Entry], Awaitable[None]]:
    """Authorises each Bundle entry as if it were its own request (403 for that entry)."""

    async def guard(entry: Entry) -> None:
        interaction = ENTRY_INTERACTIONS.get(entry.method) or _get_interaction(entry)
        access = context.authorize(interaction, entry.resource_type)
        if access.unrestricted:
            return
        if entry.resource is not None:
            ensure_writable(access, entry.resource)
        if entry.writes and (entry.criteria or entry.if_none_exist) and access.patient_scope:
            raise Forbidden(
                "Conditional create, update and delete are not available to patient-scoped "
                "tokens; address the resource by id"
            )
        if entry.resource_id is not None:
            await ensure_current_visible(request, access, entry.resource_type, entry.resource_id)

    return guard


def _get_interaction(entry: Entry) -> PolicyInteraction:
    if entry.resource_id is None:
        return "search"
    if entry.history:
        return "history-instance"
    return "vread" if entry.vid is not None else "read"


async def ensure_current_visible(
    request: Request, access: Access, resource_type: str, resource_id: str
) -> None:
    """For a limited caller: an existing resource must be within its reach (else 404)."""
    services: Services = request.app.state.services
    doc = await services.store.read_current(resource_type, resource_id)
    if doc is not None and not doc.get("deleted"):
        if access.patient_scope is not None:
            access.ensure_visible(doc.get("compartments") or (), f"{resource_type}/{resource_id}")
        await ensure_within_filters(request, access, resource_type, resource_id)


def scoped_searcher(
    request: Request, context: AccessContext, base_url: str
) -> Callable[[str, list[tuple[str, str]]], Awaitable[JsonDict]]:
    """A search function for GET entries of a Bundle, limited as the caller's own searches."""
    services: Services = request.app.state.services

    async def search(resource_type: str, items: list[tuple[str, str]]) -> JsonDict:
        access = context.authorize("search", resource_type)
        bundle: JsonDict = await services.search.search(
            resource_type,
            items + access.extra_criteria(),
            base_url=base_url,
            page_size=services.settings.default_page_size,
            max_page_size=services.settings.max_page_size,
            patient_scope=access.patient_scope,
        )
        return bundle

    return search

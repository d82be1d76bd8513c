"""Who is calling, and what they may reach: the security check every FHIR route starts with.

Authentication and scope checks happen here, before any FHIR logic (DESIGN.md, request flow);
the compartment limits they produce travel with the call into the search and read layers.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from app.audit.events import AuditFacts
from app.context import Services
from app.fhir.outcome import NotFound
from app.fhir.search.extract import patient_compartments
from app.security.policy import Access, AccessContext, PolicyInteraction, authenticate

JsonDict = dict[str, object]

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


def ensure_visible(access: Access, resource: dict[str, object] | None, reference: str) -> None:
    """404 for a resource outside the caller's patient compartment (existence not leaked)."""
    if access.patient_scope is None or resource is None:
        return
    access.ensure_visible(patient_compartments(dict(resource)), reference)


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

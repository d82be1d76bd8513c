"""Audit facts from the bare request, for requests no route described (401, 404, crashes).

Only the method and path are trusted here: the body was not read, so the interaction is the
one the URL names. Path segments are client input and are cut short before they are stored.
"""

from __future__ import annotations

from app.audit.events import AuditFacts

SEGMENT_LIMIT = 64

OAUTH_ENDPOINTS = {
    "authorize": "authorize",
    "token": "token",
    "revoke": "revoke",
    "introspect": "introspect",
    "login": "login",
}

_TYPE_METHODS = {
    "GET": "search-type",
    "HEAD": "search-type",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_INSTANCE_METHODS = {
    "GET": "read",
    "HEAD": "read",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}


def _clip(value: str) -> str:
    return value[:SEGMENT_LIMIT]


def infer_facts(method: str, path: str, query: str, *, fhir_prefix: str = "/fhir") -> AuditFacts:
    """The best description of a request from its method and path alone."""
    method = method.upper()
    if path == fhir_prefix or path.startswith(fhir_prefix + "/"):
        return _fhir_facts(method, path[len(fhir_prefix) :], query)
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "oauth":
        endpoint = parts[-1] if len(parts) > 1 else ""
        return AuditFacts(OAUTH_ENDPOINTS.get(endpoint, "oauth"))
    return AuditFacts("ingest")


def _fhir_facts(method: str, rest: str, query: str) -> AuditFacts:
    parts = [_clip(p) for p in rest.split("/") if p]
    n = len(parts)
    if n == 0:
        return AuditFacts("search-system" if method == "GET" else "batch", query=query)
    first = parts[0]
    if first == "metadata" or first.startswith("."):
        return AuditFacts("capabilities")
    if first == "_history":
        return AuditFacts("history-system")
    if first == "_search":
        return AuditFacts("search-system", query=query)
    if parts[-1].startswith("$"):
        return AuditFacts(
            "operation",
            resource_type=first if n > 1 else None,
            resource_id=parts[1] if n > 2 else None,
            operation=parts[-1],
        )
    if n == 1:
        interaction = _TYPE_METHODS.get(method, "operation")
        facts = AuditFacts(interaction, resource_type=first)
        if interaction == "search-type":
            facts.query = query
        return facts
    second = parts[1]
    if n == 2 and second == "_search":
        return AuditFacts("search-type", resource_type=first, query=query)
    if n == 2 and second == "_history":
        return AuditFacts("history-type", resource_type=first)
    if n == 2:
        return AuditFacts(
            _INSTANCE_METHODS.get(method, "operation"), resource_type=first, resource_id=second
        )
    if n == 3 and parts[2] == "_history":
        return AuditFacts("history-instance", resource_type=first, resource_id=second)
    if n == 4 and parts[2] == "_history":
        return AuditFacts("vread", resource_type=first, resource_id=second, version_id=parts[3])
    if n == 3:
        # A compartment search: GET [base]/Patient/123/Observation.
        patients = [f"Patient/{second}"] if first == "Patient" else []
        return AuditFacts("search-type", resource_type=parts[2], patients=patients, query=query)
    return AuditFacts("operation", resource_type=first, resource_id=second)

"""openapi.yaml describes exactly the endpoints the app serves, and the running app answers
documented operations with documented statuses and content types."""

from __future__ import annotations

import re
from typing import Any

import httpx
import yaml

from app.main import create_app
from app.settings import Settings
from tests.conftest import ROOT

METHODS = {"get", "put", "post", "delete", "patch"}


def documented() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    assert spec["openapi"].startswith("3.")
    return spec


def operations(paths: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in paths.items() for m in ops if m in METHODS}


def test_openapi_lists_exactly_the_app_routes() -> None:
    # FastAPI's own route table, independent of the hand-written file.
    served = operations(create_app(Settings()).openapi()["paths"])
    assert operations(documented()["paths"]) == served


def test_every_reference_resolves() -> None:
    spec = documented()
    text = (ROOT / "openapi.yaml").read_text()
    for ref in set(re.findall(r'\$ref: "#/([^"]+)"', text)):
        node: Any = spec
        for part in ref.split("/"):
            assert part in node, f"unresolved $ref #/{ref}"
            node = node[part]


def test_live_answers_match_documented_statuses(fhir: httpx.Client) -> None:
    paths = documented()["paths"]
    json_header = {"Content-Type": "application/fhir+json"}
    created = fhir.post(
        "/Basic", json={"resourceType": "Basic", "code": {"text": "x"}}, headers=json_header
    )
    rid = created.json()["id"]
    calls = [
        ("get", "/fhir/metadata", fhir.get("/metadata")),
        ("get", "/fhir/_history", fhir.get("/_history", params={"_count": 1})),
        ("post", "/fhir/{resource_type}", created),
        ("get", "/fhir/{resource_type}/{resource_id}", fhir.get(f"/Basic/{rid}")),
        ("get", "/fhir/{resource_type}/{resource_id}", fhir.get("/Basic/does-not-exist")),
        (
            "get",
            "/fhir/{resource_type}/{resource_id}/_history/{vid}",
            fhir.get(f"/Basic/{rid}/_history/1"),
        ),
        (
            "get",
            "/fhir/{resource_type}/_history",
            fhir.get("/Basic/_history", params={"_count": 1}),
        ),
        ("get", "/fhir/{resource_type}/{resource_id}/_history", fhir.get(f"/Basic/{rid}/_history")),
        ("delete", "/fhir/{resource_type}/{resource_id}", fhir.delete(f"/Basic/{rid}")),
        ("get", "/fhir/{resource_type}/{resource_id}", fhir.get(f"/Basic/{rid}")),
        ("get", "/fhir/{resource_type}", fhir.get("/Basic", params={"_id": rid})),
    ]
    for method, path, response in calls:
        documented_statuses = paths[path][method]["responses"]
        assert str(response.status_code) in documented_statuses, (
            method,
            path,
            response.status_code,
        )
        if response.status_code >= 400 or response.content:
            assert response.headers["content-type"].startswith("application/fhir+json")

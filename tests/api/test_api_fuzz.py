"""Whatever a client sends, the FHIR API answers with a status below 500 and, for an error, an
OperationOutcome that says what was wrong (rules: no 500 for anything a client can send).

Searches are drawn from the real parameter registry, with modifiers, prefixes, escapes, chains
and result parameters, valid or not; bodies are official R4 examples with elements replaced by
arbitrary JSON. Over HTTP against the session's real server and database."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.fhir.definitions.npm import ensure_package
from app.fhir.search.parameters import registry
from app.store.client import EmbeddedServer
from tests.conftest import RunningServer, start_hestia, stop_hestia
from tests.fuzzing import examples, fuzz

pytestmark = fuzz


def own_server(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory, name: str, **env: str
) -> Iterator[RunningServer]:
    """A server with a database of its own on the session's database server: what the fuzzing
    stores must not show up in other tests' searches."""
    environment = {"HESTIA_MONGODB_URI": database.uri, "HESTIA_DATABASE": name, **env}
    server = start_hestia(tmp_path_factory.mktemp(name), environment, name=name)
    yield server
    stop_hestia(server)


@pytest.fixture(scope="module")
def fuzzed_server(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    yield from own_server(database, tmp_path_factory, "fuzz_api")


@pytest.fixture
def fhir(fuzzed_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzzed_server.fhir, timeout=30) as client:
        yield client


JSON = {"Content-Type": "application/fhir+json"}
TYPES = ["Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "AuditEvent"]
REGISTRY = registry()
PARAMETERS = {t: sorted(REGISTRY.for_type(t)) for t in TYPES}
MODIFIERS = [
    "", "", "", ":exact", ":contains", ":missing", ":not", ":text", ":of-type", ":below",
    ":above", ":identifier", ":Patient", ":iterate", ":nonsense", ":", "::",
]  # fmt: skip
PREFIXES = ["", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx"]
RESULT_PARAMETERS = [
    "_count", "_sort", "_include", "_revinclude", "_elements", "_summary", "_total",
    "_contained", "_format", "_pretty", "_type", "_cursor", "_has", "_list", "_id",
    "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content",
]  # fmt: skip
ATOMS = st.one_of(
    st.sampled_from(
        [
            "2013",
            "2013-01",
            "2013-01-14",
            "2013-01-14T10:00Z",
            "2013-13-45",
            "T10:00",
            "0",
            "-1",
            "1e400",
            "NaN",
            "5.4|http://unitsofmeasure.org|mg",
            "|code",
            "http://loinc.org|",
            "http://loinc.org|8310-5",
            "Patient/x",
            "x",
            "true",
            "false",
            "\\,",
            "\\$",
            "\\|",
            "a\\",
            "$where",
            "{$ne:1}",
            ".*",
            "[a-z]+",
            "%00",
            "\u0000",
            "Observation:subject",
            "Observation:*",
            "*",
            "-_lastUpdated",
            "name,-birthdate",
        ]
    ),
    st.text(max_size=12),
)
VALUES = st.builds(
    lambda prefix, atoms: prefix + ",".join(atoms),
    st.sampled_from(PREFIXES),
    st.lists(ATOMS, min_size=1, max_size=3),
)


def assert_answered(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:800]}"
    if response.status_code >= 400 and response.status_code not in (404, 405, 410):
        body = response.json()
        assert body["resourceType"] == "OperationOutcome", body
        assert body["issue"][0].get("diagnostics"), body


@st.composite
def search_items(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    resource_type = draw(st.sampled_from(TYPES))
    items: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["param", "param", "chain", "result", "junk"]))
        if kind == "param":
            name = draw(st.sampled_from(PARAMETERS[resource_type])) + draw(
                st.sampled_from(MODIFIERS)
            )
        elif kind == "chain":
            first = draw(st.sampled_from(PARAMETERS[resource_type]))
            second = draw(st.sampled_from(PARAMETERS["Patient"]))
            name = draw(
                st.sampled_from(
                    [
                        f"{first}.{second}",
                        f"{first}:Patient.{second}",
                        f"_has:Observation:patient:{second}",
                        f"_has:Observation:{first}",
                        f"{first}.{second}.{second}",
                    ]
                )
            )
        elif kind == "result":
            name = draw(st.sampled_from(RESULT_PARAMETERS)) + draw(
                st.sampled_from(["", "", ":iterate"])
            )
        else:
            name = draw(st.text(min_size=1, max_size=10))
        items.append((name, draw(VALUES)))
    return resource_type, items


FUZZ = settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(search_items(), st.booleans())
def test_any_search_is_answered_without_a_server_error(
    fhir: httpx.Client, search: tuple[str, list[tuple[str, str]]], strict: bool
) -> None:
    resource_type, items = search
    headers = {"Prefer": "handling=strict"} if strict else {}
    response = fhir.get(f"/{resource_type}?{urlencode(items)}", headers=headers)
    assert_answered(response)
    event(f"search: {response.status_code}")
    if response.status_code == 200 and "_format" not in dict(items):
        bundle = response.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    posted = fhir.post(
        f"/{resource_type}/_search",
        content=urlencode(items),
        headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_answered(posted)


def _examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(Path(ensure_package()).glob("*.json")):
        if path.name.split("-", 1)[0] not in TYPES:
            continue
        try:
            resource = json.loads(path.read_bytes())
        except ValueError:
            continue
        if isinstance(resource, dict) and resource.get("resourceType") in TYPES:
            found.append(resource)
    return found


EXAMPLES = _examples()
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)


def _paths(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a resource that a value could be replaced."""
    found = [here] if here else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += _paths(inner, (*here, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += _paths(inner, (*here, index))
    return found


def _damage(draw: st.DrawFn, document: dict[str, Any], values: st.SearchStrategy[Any]) -> None:
    """Delete or replace (with one of `values`) one to three elements anywhere in `document`."""
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(document)
        if not paths:
            return
        path = draw(st.sampled_from(paths))
        parent: Any = document
        for step in path[:-1]:
            parent = parent[step]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)


@st.composite
def damaged_resources(draw: st.DrawFn) -> dict[str, Any]:
    resource: dict[str, Any] = json.loads(json.dumps(draw(st.sampled_from(EXAMPLES))))
    _damage(draw, resource, JSON_VALUES)
    return resource


@FUZZ
@given(damaged_resources(), st.sampled_from(["post", "put"]))
def test_a_damaged_resource_is_stored_or_refused_with_a_reason(
    fhir: httpx.Client, resource: dict[str, Any], method: str
) -> None:
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    # A damaged type goes in the body only: in the path, "/" or "." would make another route
    # (POST /fhir/%2F is redirected), which the path test below covers.
    target = "Patient"
    if isinstance(resource_type, str) and resource_type.isascii() and resource_type.isalpha():
        target = resource_type
    if method == "post":
        path = f"/{quote(target, safe='')}"
        response = fhir.post(path, content=json.dumps(resource), headers=JSON)
        assert response.status_code in (201, 400, 404, 405, 413, 422), response.text[:800]
    else:
        rid = resource.get("id") if isinstance(resource, dict) else None
        if not isinstance(rid, str) or not rid or "/" in rid or rid in (".", ".."):
            rid = "fuzz-1"  # ids that would make another path, not a bad id
        path = f"/{quote(target, safe='')}/{quote(rid, safe='')}"
        response = fhir.put(path, content=json.dumps(resource), headers=JSON)
        assert response.status_code in (200, 201, 400, 404, 405, 413, 422), response.text[:800]
    assert_answered(response)
    event(f"{method}: {response.status_code}")


@FUZZ
@given(
    st.sampled_from(["get", "post", "put", "patch", "delete"]),
    st.lists(st.text(min_size=1, max_size=15), min_size=1, max_size=4),
    st.binary(max_size=200),
    st.sampled_from(
        [
            "application/fhir+json",
            "application/json-patch+json",
            "application/x-www-form-urlencoded",
            "application/fhir+xml",
            "text/plain",
            "",
        ]
    ),
)
def test_any_path_and_body_is_answered_without_a_server_error(
    fhir: httpx.Client, method: str, segments: list[str], body: bytes, content_type: str
) -> None:
    path = "/" + "/".join(quote(s, safe="") for s in segments)
    headers = {"Content-Type": content_type} if content_type else {}
    content = body if method in ("post", "put", "patch") else None
    response = fhir.request(method.upper(), path, content=content, headers=headers)
    assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text}"


HEADER_VALUES = st.one_of(
    st.sampled_from(
        [
            'W/"1"',
            'W/"x"',
            '"1"',
            "*",
            "W/",
            "",
            "Tue, 01 Jan 2030 00:00:00 GMT",
            "yesterday",
            "return=minimal",
            "return=OperationOutcome",
            "handling=strict",
            "respond-async",
            "application/fhir+json",
            "application/fhir+xml",
            "*/*",
            "text/html;q=0.1",
            "identifier=urn:x|1",
            "_id=x,y",
            "name[$ne]=x",
            "$where=1",
        ]
    ),
    # Printable ASCII without the surrounding spaces a client library refuses to send.
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(
        str.strip
    ),
)
HEADER_NAMES = [
    "If-Match",
    "If-None-Match",
    "If-Modified-Since",
    "If-None-Exist",
    "Prefer",
    "Accept",
]


@FUZZ
@given(
    st.sampled_from(["read", "vread", "update", "delete", "history", "create"]),
    st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUES, max_size=3),
    st.dictionaries(
        st.sampled_from(["_since", "_at", "_count", "_format", "_summary", "_elements"]),
        VALUES,
        max_size=2,
    ),
)
def test_any_conditional_header_or_history_parameter_is_answered(
    fhir: httpx.Client, interaction: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    body = {"resourceType": "Patient", "id": "fuzz-headers", "active": True}
    fhir.put("/Patient/fuzz-headers", json=body, headers=JSON)
    query = f"?{urlencode(params)}" if params else ""
    requests = {
        "read": ("GET", f"/Patient/fuzz-headers{query}"),
        "vread": ("GET", f"/Patient/fuzz-headers/_history/1{query}"),
        "update": ("PUT", f"/Patient/fuzz-headers{query}"),
        "delete": ("DELETE", f"/Patient/fuzz-headers{query}"),
        "history": ("GET", f"/Patient/_history{query}"),
        "create": ("POST", f"/Patient{query}"),
    }
    method, path = requests[interaction]
    content = json.dumps(body) if method in ("PUT", "POST") else None
    response = fhir.request(
        method, path, content=content, headers={**JSON, **headers} if content else headers
    )
    assert_answered(response)


@st.composite
def damaged_transactions(draw: st.DrawFn) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["transaction", "batch", "searchset", "bogus"])),
        "entry": [
            {
                "fullUrl": "urn:uuid:0b6a2d6e-1c9e-4e0a-9f8e-2b9f1c3e4d5a",
                "resource": {"resourceType": "Patient", "name": [{"family": "Fuzz"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "fuzz"},
                    "subject": {"reference": "urn:uuid:0b6a2d6e-1c9e-4e0a-9f8e-2b9f1c3e4d5a"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": "Patient?name=fuzz"}},
        ],
    }
    _damage(draw, bundle, st.one_of(JSON_VALUES, VALUES))
    return bundle


@FUZZ
@given(damaged_transactions())
def test_a_damaged_bundle_is_processed_or_refused_with_a_reason(
    fhir: httpx.Client, bundle: dict[str, Any]
) -> None:
    response = fhir.post("", content=json.dumps(bundle), headers=JSON)
    assert_answered(response)


CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus"
INGEST_SEEDS = {
    "hl7v2": sorted((CORPUS / "hl7v2" / "fhir-converter").glob("*.hl7"))[:20],
    "csv": [CORPUS / "csv" / "synthea" / "patients.csv"],
    "dicom": sorted((CORPUS / "dicom" / "pydicom").glob("*.dcm")),
}
INGEST_ROUTES = {
    "hl7v2": ("/ingest/hl7v2", "x-application/hl7-v2+er7"),
    "csv": ("/ingest/csv", "text/csv"),
    "dicom": ("/ingest/dicom", "application/dicom"),
}


@st.composite
def damaged_payloads(draw: st.DrawFn) -> tuple[str, bytes]:
    family = draw(st.sampled_from(sorted(INGEST_SEEDS)))
    data = bytearray(draw(st.sampled_from(INGEST_SEEDS[family])).read_bytes()[:20_000])
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if kind == "flip":
            data[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"|", b"\r", b",", b'"', b"\x00", b"\xff", b"\n"]))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return family, bytes(data)


def _payload_ids(body: Any) -> list[str]:
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("payload"), str):
        return [body["payload"]]
    return [f["payload"] for f in body.get("files", []) if isinstance(f.get("payload"), str)]


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(damaged_payloads(), st.booleans())
def test_a_damaged_payload_is_kept_and_answered_without_a_server_error(
    fuzzed_server: RunningServer, fhir: httpx.Client, payload: tuple[str, bytes], detect: bool
) -> None:
    """Through its own route or through format detection: an answer below 500, and every
    payload the answer names is stored byte for byte (what maps or not is kept)."""
    family, data = payload
    route, content_type = INGEST_ROUTES[family]
    path, headers = ("/ingest", {}) if detect else (route, {"Content-Type": content_type})
    response = httpx.post(fuzzed_server.base + path, content=data, headers=headers, timeout=60)
    assert response.status_code != 404, response.text
    assert response.status_code < 500, f"{family} {path}: {response.status_code} {response.text}"
    event(f"{family} via {path}: {response.status_code}")  # --hypothesis-show-statistics
    if response.headers.get("content-type", "").startswith("application/json"):
        for raw_id in _payload_ids(response.json()):
            stored = fhir.get(f"/Binary/{raw_id}", headers={"Accept": "application/octet-stream"})
            assert stored.status_code == 200, stored.text
            assert stored.content == data


@pytest.fixture(scope="module")
def secured_server(
    database: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """Authentication on, as a hospital runs it: the authorization server's endpoints."""
    yield from own_server(database, tmp_path_factory, "fuzz_auth", HESTIA_AUTH="on")


OAUTH_FIELDS = [
    "grant_type", "code", "redirect_uri", "client_id", "client_secret", "scope", "refresh_token",
    "code_verifier", "client_assertion", "client_assertion_type", "token", "token_type_hint",
    "response_type", "state", "aud", "launch", "code_challenge", "code_challenge_method",
]  # fmt: skip
OAUTH_VALUES = st.one_of(
    st.sampled_from(
        [
            "client_credentials",
            "authorization_code",
            "refresh_token",
            "code",
            "S256",
            "plain",
            "system/*.rs",
            "patient/*.rs openid fhirUser launch/patient",
            "user/*.cruds",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "hestia-dev",
            "eyJhbGciOiJub25lIn0.e30.",
            "a.b.c",
            "http://127.0.0.1/cb",
            "",
        ]
    ),
    st.text(max_size=40),
)


def _sendable(value: str) -> bool:
    """What an HTTP client can put in a header: printable ASCII, not empty, no outer spaces."""
    return bool(value) and value.isascii() and value.isprintable() and value == value.strip()


@FUZZ
@given(
    st.sampled_from(["/oauth/token", "/oauth/introspect", "/oauth/revoke", "/oauth/authorize"]),
    st.dictionaries(st.sampled_from(OAUTH_FIELDS), OAUTH_VALUES, max_size=6),
    st.sampled_from(["form", "query", "basic", "bearer"]),
    OAUTH_VALUES,
)
def test_the_authorization_server_answers_any_request_without_a_server_error(
    secured_server: RunningServer,
    endpoint: str,
    fields: dict[str, str],
    how: str,
    credential: str,
) -> None:
    headers: dict[str, str] = {}
    if how == "basic" and credential:
        token = base64.b64encode(credential.encode("utf-8", "surrogatepass")).decode()
        headers["Authorization"] = f"Basic {token}"
    elif how == "bearer" and _sendable(credential):
        headers["Authorization"] = f"Bearer {credential}"
    url = secured_server.base + endpoint
    if how == "query" or endpoint == "/oauth/authorize":
        response = httpx.get(url, params=fields, headers=headers, timeout=30)
    else:
        response = httpx.post(url, data=fields, headers=headers, timeout=30)
    assert response.status_code < 500, (
        f"{endpoint} {fields}: {response.status_code} {response.text}"
    )
    event(f"{endpoint}: {response.status_code}")


@FUZZ
@given(search_items(), OAUTH_VALUES)
def test_a_secured_fhir_api_answers_any_token_without_a_server_error(
    secured_server: RunningServer, search: tuple[str, list[tuple[str, str]]], token: str
) -> None:
    resource_type, items = search
    headers = {"Authorization": f"Bearer {token}"} if _sendable(token) else {}
    response = httpx.get(
        f"{secured_server.fhir}/{resource_type}?{urlencode(items)}", headers=headers, timeout=30
    )
    assert response.status_code in (400, 401, 403, 406), response.text
    assert_answered(response)

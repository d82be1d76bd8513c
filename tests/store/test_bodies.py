"""Resource bodies are stored as their JSON text, and bodies stored as nested documents by
earlier versions are still served by every read path."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from pymongo import MongoClient
from pymongo.database import Database

from app.store.client import EmbeddedServer

JSON = {"Content-Type": "application/fhir+json"}
Doc = dict[str, Any]


@pytest.fixture
def db(database: EmbeddedServer) -> Iterator[Database[Doc]]:
    client: MongoClient[Doc] = MongoClient(database.uri)
    yield client["hestia"]
    client.close()


def _patient(family: str) -> Doc:
    pid = f"body-{uuid.uuid4().hex[:12]}"
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Ana"]}]}


def test_current_and_history_hold_the_served_json_as_text(
    fhir: httpx.Client, db: Database[Doc]
) -> None:
    patient = _patient("Textform")
    assert fhir.put(f"/Patient/{patient['id']}", json=patient, headers=JSON).status_code == 201
    served = fhir.get(f"/Patient/{patient['id']}").json()

    current = db["Patient"].find_one({"_id": patient["id"]})
    version = db["history"].find_one({"_id": f"Patient/{patient['id']}/1"})
    assert current is not None and version is not None
    assert isinstance(current["resource"], str)
    assert orjson.loads(current["resource"]) == served
    assert version["resource"] == current["resource"]


def test_bodies_stored_as_documents_by_earlier_versions_are_still_served(
    fhir: httpx.Client, db: Database[Doc]
) -> None:
    family = f"Nested{uuid.uuid4().hex[:6]}"
    patient = _patient(family)
    pid = patient["id"]
    assert fhir.put(f"/Patient/{pid}", json=patient, headers=JSON).status_code == 201
    # Rewrite both documents the way a version before text bodies stored them, with a mark
    # the text form lacks, so each answer below shows which form was read.
    nested = {**fhir.get(f"/Patient/{pid}").json(), "gender": "unknown"}
    db["Patient"].update_one({"_id": pid}, {"$set": {"resource": nested}})
    db["history"].update_one({"_id": f"Patient/{pid}/1"}, {"$set": {"resource": nested}})
    assert isinstance(db["Patient"].find_one({"_id": pid})["resource"], dict)  # type: ignore[index]

    deadline = time.monotonic() + 2.0  # the server's cache drops its copy through the feed
    while fhir.get(f"/Patient/{pid}").json() != nested:
        assert time.monotonic() < deadline, "the nested body was never served"
        time.sleep(0.01)
    assert fhir.get(f"/Patient/{pid}/_history/1").json() == nested
    found = fhir.get("/Patient", params={"family": family}).json()
    assert [e["resource"] for e in found["entry"]] == [nested]
    history = fhir.get(f"/Patient/{pid}/_history").json()
    assert [e["resource"] for e in history["entry"]] == [nested]

    # Such a resource can be updated (If-Match reads its version) and is then written as text.
    changed = {**patient, "gender": "female"}
    response = fhir.put(f"/Patient/{pid}", json=changed, headers={**JSON, "If-Match": 'W/"1"'})
    assert response.status_code == 200, response.text
    assert isinstance(db["Patient"].find_one({"_id": pid})["resource"], str)  # type: ignore[index]
    versions = fhir.get(f"/Patient/{pid}/_history").json()["entry"]
    assert [e["resource"].get("gender") for e in versions] == ["female", "unknown"]

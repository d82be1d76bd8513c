"""With authentication on (the default), every FHIR interaction needs a valid token, scopes
are enforced, and a patient-scoped token cannot reach another patient's data."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, RunningServer, start_hestia, stop_hestia

JSON = {"Content-Type": "application/fhir+json"}
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    tmp = tmp_path_factory.mktemp("secured")
    server = start_hestia(tmp, {"HESTIA_AUTH": "on"}, name="secured")
    yield server, tmp / "secured"
    stop_hestia(server)


def token(data_dir: Path, scope: str, patient: str | None = None) -> str:
    args = [sys.executable, "-m", "app", "token", "--data-dir", str(data_dir), "--scope", scope]
    if patient:
        args += ["--patient", patient]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def bearer(value: str) -> dict[str, str]:
    return {**JSON, "Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def world(secured: tuple[RunningServer, Path]) -> dict[str, str]:
    server, data_dir = secured
    admin = bearer(token(data_dir, "system/*.cruds"))
    ids: dict[str, str] = {"admin": admin["Authorization"]}
    with httpx.Client(base_url=server.fhir, headers=admin, timeout=30) as fhir:
        for name in ("alice", "bob"):
            response = fhir.post(
                "/Patient", json={"resourceType": "Patient", "name": [{"family": name}]}
            )
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "heart rate"},
                "subject": {"reference": f"Patient/{ids[name]}"},
            }
            ids[f"{name}-obs"] = fhir.post("/Observation", json=observation).json()["id"]
    return ids


def test_metadata_is_public_and_names_the_oauth_endpoints(
    secured: tuple[RunningServer, Path],
) -> None:
    server, _ = secured
    statement = httpx.get(f"{server.fhir}/metadata").json()
    security = statement["rest"][0]["security"]
    uris = next(e for e in security["extension"] if e["url"] == OAUTH_URIS)
    names = {e["url"] for e in uris["extension"]}
    assert {"authorize", "token"} <= names
    smart = httpx.get(f"{server.fhir}/.well-known/smart-configuration")
    assert smart.status_code == 200 and "token_endpoint" in smart.json()


def test_startup_prints_how_to_get_a_token(secured: tuple[RunningServer, Path]) -> None:
    server, _ = secured
    assert "hestia token" in server.log.read_text()


def test_no_token_or_a_bad_token_is_401(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, _ = secured
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic eDp5"}):
        response = httpx.get(f"{server.fhir}/Patient/{world['alice']}", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"


def test_missing_scope_is_403(secured: tuple[RunningServer, Path], world: dict[str, str]) -> None:
    server, data_dir = secured
    read_only = bearer(token(data_dir, "system/Patient.rs"))
    assert (
        httpx.get(f"{server.fhir}/Patient/{world['alice']}", headers=read_only).status_code == 200
    )
    denied = httpx.get(f"{server.fhir}/Observation/{world['alice-obs']}", headers=read_only)
    assert denied.status_code == 403
    assert denied.json()["resourceType"] == "OperationOutcome"
    create = httpx.post(
        f"{server.fhir}/Patient", json={"resourceType": "Patient"}, headers=read_only
    )
    assert create.status_code == 403


def test_patient_token_reaches_only_its_patient(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, data_dir = secured
    alice = bearer(token(data_dir, "patient/*.rs", patient=world["alice"]))
    with httpx.Client(base_url=server.fhir, headers=alice, timeout=30) as fhir:
        assert fhir.get(f"/Patient/{world['alice']}").status_code == 200
        assert fhir.get(f"/Observation/{world['alice-obs']}").status_code == 200
        assert fhir.get(f"/Observation/{world['alice-obs']}/_history").status_code == 200
        # Another patient's data looks exactly like data that does not exist.
        for path in (
            f"/Patient/{world['bob']}",
            f"/Observation/{world['bob-obs']}",
            f"/Observation/{world['bob-obs']}/_history/1",
            f"/Observation/{world['bob-obs']}/_history",
        ):
            response = fhir.get(path)
            assert response.status_code == 404, path
            missing = fhir.get("/Observation/no-such-id")
            assert response.json()["issue"][0]["code"] == missing.json()["issue"][0]["code"]
        assert fhir.get("/_history").status_code == 403
        assert fhir.get("/Observation/_history").status_code == 403


def test_patient_writer_cannot_file_data_under_another_patient(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, data_dir = secured
    alice = bearer(token(data_dir, "patient/Observation.cruds", patient=world["alice"]))
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": f"Patient/{world['bob']}"},
    }
    response = httpx.post(f"{server.fhir}/Observation", json=observation, headers=alice)
    assert response.status_code == 403
    observation["subject"] = {"reference": f"Patient/{world['alice']}"}
    assert (
        httpx.post(f"{server.fhir}/Observation", json=observation, headers=alice).status_code == 201
    )
    # Nor overwrite or delete another patient's resource by id.
    bob_obs = f"/Observation/{world['bob-obs']}"
    changed = {**observation, "id": world["bob-obs"]}
    assert httpx.put(f"{server.fhir}{bob_obs}", json=changed, headers=alice).status_code == 404
    assert httpx.delete(f"{server.fhir}{bob_obs}", headers=alice).status_code == 404
    admin = {"Authorization": world["admin"]}
    assert httpx.get(f"{server.fhir}{bob_obs}", headers=admin).status_code == 200


def test_patient_token_searches_only_its_compartment(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, data_dir = secured
    alice = bearer(token(data_dir, "patient/*.rs", patient=world["alice"]))
    with httpx.Client(base_url=server.fhir, headers=alice, timeout=30) as fhir:
        found = fhir.get("/Observation", params={"code:text": "heart"}).json()
        ids = {e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"}
        assert ids == {world["alice-obs"]}
        # Asking for Bob's data by reference finds nothing, rather than an error.
        bobs = fhir.get("/Observation", params={"subject": f"Patient/{world['bob']}"}).json()
        assert bobs.get("total", 0) == 0 and not bobs.get("entry")
        # Reverse includes and _has stay inside the compartment too.
        patients = fhir.get("/Patient", params={"_revinclude": "Observation:subject"}).json()
        seen = {e["resource"]["id"] for e in patients["entry"]}
        assert world["bob"] not in seen and world["bob-obs"] not in seen
        has = fhir.get("/Patient", params={"_has:Observation:subject:code:text": "heart"}).json()
        assert {e["resource"]["id"] for e in has.get("entry", [])} == {world["alice"]}
        compartment = fhir.get(f"/Patient/{world['bob']}/Observation").json()
        assert not compartment.get("entry")


def test_granular_scope_hides_other_categories(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, data_dir = secured
    admin = {**JSON, "Authorization": world["admin"]}
    category = "http://terminology.hl7.org/CodeSystem/observation-category"
    ids = {}
    for code in ("laboratory", "vital-signs"):
        observation = {
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": category, "code": code}]}],
            "code": {"text": f"granular {code}"},
            "subject": {"reference": f"Patient/{world['alice']}"},
        }
        response = httpx.post(f"{server.fhir}/Observation", json=observation, headers=admin)
        ids[code] = response.json()["id"]
    labs_only = bearer(
        token(data_dir, "patient/Observation.rs?category=laboratory", patient=world["alice"])
    )
    with httpx.Client(base_url=server.fhir, headers=labs_only, timeout=30) as fhir:
        found = fhir.get("/Observation", params={"code:text": "granular"}).json()
        assert {e["resource"]["id"] for e in found["entry"]} == {ids["laboratory"]}
        assert fhir.get(f"/Observation/{ids['laboratory']}").status_code == 200
        assert fhir.get(f"/Observation/{ids['vital-signs']}").status_code == 404


def test_batch_mixing_allowed_and_forbidden_entries_gets_per_entry_403s(
    secured: tuple[RunningServer, Path], world: dict[str, str]
) -> None:
    server, data_dir = secured
    alice = bearer(token(data_dir, "patient/*.rs", patient=world["alice"]))
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{world['alice']}"}},
            {"request": {"method": "GET", "url": f"Observation/{world['bob-obs']}"}},
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"},
            },
            {"request": {"method": "GET", "url": f"Observation/{world['alice-obs']}"}},
        ],
    }
    response = httpx.post(server.fhir, json=batch, headers=alice)
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses[0].startswith("200")
    assert statuses[1].startswith("404")  # another patient's data is "not there"
    assert statuses[2].startswith("403")  # no write scope
    assert statuses[3].startswith("200")
    # A transaction with one forbidden entry changes nothing.
    transaction = {**batch, "type": "transaction", "entry": batch["entry"][2:3]}
    refused = httpx.post(server.fhir, json=transaction, headers=alice)
    assert refused.status_code == 403
    assert "Bundle.entry[0]" in str(refused.json()["issue"][0].get("expression"))

"""Two widely used FHIR client libraries drive the server as they would any FHIR R4 server."""

from __future__ import annotations

import uuid

from fhirclient import client as smart_client
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from tests.conftest import RunningServer


async def test_fhirpy_async_create_read_search_update_delete(hestia: RunningServer) -> None:
    fhir = AsyncFHIRClient(hestia.fhir, extra_headers={"Accept": "application/fhir+json"})
    mrn = uuid.uuid4().hex
    patient = fhir.resource(
        "Patient",
        identifier=[{"system": "urn:test:fhirpy", "value": mrn}],
        name=[{"family": "Nightingale", "given": ["Florence"]}],
    )
    await patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"

    fetched = await fhir.reference("Patient", patient.id).to_resource()
    assert fetched["name"][0]["family"] == "Nightingale"

    found = await fhir.resources("Patient").search(_id=patient.id).fetch()
    assert [p.id for p in found] == [patient.id]

    patient["gender"] = "female"
    await patient.save()
    assert patient["meta"]["versionId"] == "2"
    assert (await fhir.reference("Patient", patient.id).to_resource())["gender"] == "female"

    await patient.delete()
    try:
        await fhir.reference("Patient", patient.id).to_resource()
    except ResourceNotFound:
        pass
    else:
        raise AssertionError("a deleted Patient must not be readable")


def test_fhirclient_reads_the_capability_statement_and_resources(hestia: RunningServer) -> None:
    smart = smart_client.FHIRClient(settings={"app_id": "hestia-tests", "api_base": hestia.fhir})
    smart.prepare()
    capability = smart.server.capabilityStatement
    assert capability.fhirVersion == "4.0.1"
    assert any(r.type == "Patient" for r in capability.rest[0].resource)

    patient = SmartPatient({"resourceType": "Patient"})
    name = HumanName()
    name.family = "Seacole"
    name.given = ["Mary"]
    patient.name = [name]
    created = patient.create(smart.server)
    assert created is not None and created["resourceType"] == "Patient"

    read = SmartPatient.read(created["id"], smart.server)
    assert read.name[0].family == "Seacole"
    assert read.meta.versionId == "1"

"""Entry points: bytes (Part 10 or DICOM JSON) → resources → transaction Bundle."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

from mappers.dicom.mapping import JsonDict, StudyResources, map_dataset, merge_imaging_study
from mappers.dicom.read import quiet_pydicom, read_dicom_json, read_part10


def map_datasets(
    datasets: Iterable[Dataset], *, wado_base_url: str | None = None
) -> list[StudyResources]:
    """Map instances and fold those of the same study into one ImagingStudy each."""
    by_study: dict[str, StudyResources] = {}
    with quiet_pydicom():
        for ds in datasets:
            mapped = map_dataset(ds, wado_base_url=wado_base_url)
            key = mapped.imaging_study["id"]
            previous = by_study.get(key)
            if previous is None:
                by_study[key] = mapped
                continue
            by_study[key] = StudyResources(
                patient=previous.patient,
                imaging_study=merge_imaging_study(previous.imaging_study, mapped.imaging_study),
                endpoint=previous.endpoint,
            )
    return list(by_study.values())


def map_part10(data: bytes, *, wado_base_url: str | None = None) -> StudyResources:
    """One DICOM Part 10 file → its Patient, ImagingStudy (one instance) and Endpoint."""
    return map_datasets([read_part10(data)], wado_base_url=wado_base_url)[0]


def map_dicom_json(data: bytes | str, *, wado_base_url: str | None = None) -> list[StudyResources]:
    """DICOM JSON (one dataset, an array, or {"study": [...]}) → one result per study."""
    return map_datasets(read_dicom_json(data), wado_base_url=wado_base_url)


def transaction_bundle(results: Iterable[StudyResources]) -> JsonDict:
    """PUT entries with deterministic ids; each resource appears once.

    The ImagingStudy entry carries only what these files hold: the ingestion layer must
    `merge_imaging_study(stored, incoming)` with the stored version before writing, so
    earlier uploads of the same study are not lost.
    """
    entries: list[JsonDict] = []
    seen: set[str] = set()
    for result in results:
        for resource in (result.patient, result.endpoint, result.imaging_study):
            if resource is None:
                continue
            url = f"{resource['resourceType']}/{resource['id']}"
            if url in seen:
                continue
            seen.add(url)
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{resource['id']}",
                    "resource": resource,
                    "request": {"method": "PUT", "url": url},
                }
            )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

"""DICOM ingestion: each Part 10 file is kept, mapped and merged into its study.

For each file:
1. it is read with pydicom up to the pixel data (which is never parsed);
2. its bytes are stored as a raw payload (GridFS when large), or only the header (the bytes
   before the pixel data) when configured with keep="header"; files that are not DICOM or
   that cannot be mapped are stored too, with their OperationOutcome, and can be re-processed;
3. ONE transaction reads the stored ImagingStudy and Patient, merges this file's series and
   instance into them (mappers.dicom.merge_imaging_study, order-independent), writes what
   changed with a Provenance whose source is Binary/<payload>, and marks the payload mapped.
   Two uploads of one study racing each other conflict and retry, so counts are never lost;
4. quality findings: a Patient without identifier, a possible duplicate patient.

Errors: not DICOM → 415, corrupt DICOM → 400, no StudyInstanceUID (or other required UID) →
422, each as an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pydicom
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.errors import PyMongoError

from app.fhir.interactions import Interactions, UnitOfWork
from app.fhir.outcome import BadRequest, FhirError, PayloadTooLarge
from app.ingest.quality import Matcher, check_patients, missing_identifier
from app.ingest.writes import (
    WriteCounts,
    current_docs,
    provenance,
    put_all,
    put_provenance,
    versioned,
)
from app.store.raw import RawPayload, RawSource, RawStore, Status
from app.store.versions import StoreUnavailable, VersionConflict, WriteBatch, now_utc
from mappers.dicom import StudyResources, map_dataset, merge_imaging_study, read_part10
from mappers.dicom.mapping import deterministic_id
from mappers.dicom.read import is_part10, quiet_pydicom

JsonDict = dict[str, Any]
log = logging.getLogger("hestia.ingest.dicom")

DICOM_MEDIA_TYPE = "application/dicom"
APPLY_ATTEMPTS = 4
_TRANSIENT = (PyMongoError, StoreUnavailable, VersionConflict, OSError)
Keep = Literal["file", "header"]


@dataclass(frozen=True)
class DicomSettings:
    # WADO-RS base URL for the Endpoint; None: no Endpoint is made.
    wado_base_url: str | None = None
    # "file": the whole Part 10 file is kept; "header": only the bytes before pixel data.
    keep: Keep = "file"
    # Limits for a zip: files inside, and their total uncompressed size.
    max_zip_files: int = 10_000
    max_zip_bytes: int = 4 * 1024 * 1024 * 1024


@dataclass
class DicomFileResult:
    """What became of one file."""

    name: str
    payload: str | None
    status: Status
    http_status: int = 200
    duplicate: bool = False
    study: str | None = None  # ImagingStudy/<id>
    resources: list[str] = field(default_factory=list)  # versions written
    unchanged: list[str] = field(default_factory=list)
    provenance: str | None = None
    findings: list[JsonDict] = field(default_factory=list)
    outcome: JsonDict | None = None

    def as_json(self) -> JsonDict:
        return {
            "file": self.name,
            "payload": self.payload,
            "status": self.status,
            "duplicate": self.duplicate,
            "study": self.study,
            "resources": self.resources,
            "unchanged": self.unchanged,
            "provenance": self.provenance,
            "findings": self.findings,
            **({"outcome": self.outcome} if self.outcome else {}),
        }


def pixel_data_offset(data: bytes) -> int:
    """Where the pixel data element starts (the file's length when there is none)."""
    fp = io.BytesIO(data)
    with quiet_pydicom():
        pydicom.dcmread(fp, stop_before_pixels=True)
    # pydicom rewinds to the start of the element it stopped before.
    return fp.tell()


def unzip(data: bytes, settings: DicomSettings) -> Iterator[tuple[str, bytes]]:
    """The files of a zip archive, with limits against archives that expand without end."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise BadRequest(f"not a readable zip archive: {exc}") from exc
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) > settings.max_zip_files:
        raise PayloadTooLarge(
            f"the zip holds {len(members)} files; at most {settings.max_zip_files} are accepted"
        )
    if sum(m.file_size for m in members) > settings.max_zip_bytes:
        raise PayloadTooLarge(
            f"the zip expands beyond {settings.max_zip_bytes} bytes; send fewer files at once"
        )
    for member in members:
        yield member.filename, archive.read(member)


def is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def is_dicomdir(name: str) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1].upper() == "DICOMDIR"


class DicomIngestor:
    def __init__(
        self,
        interactions: Interactions,
        raw: RawStore,
        settings: DicomSettings | None = None,
        *,
        matcher: Matcher | None = None,
    ) -> None:
        self.interactions = interactions
        self.store = interactions.store
        self.raw = raw
        self.settings = settings or DicomSettings()
        self.matcher: Matcher = matcher or interactions.matcher

    # Intake

    async def ingest_files(
        self, files: Iterable[tuple[str, bytes]], *, source: RawSource
    ) -> list[DicomFileResult]:
        """Several files (a zip's members, a multipart upload, a directory), one by one.

        A DICOMDIR is an index of the media, not an instance: it is skipped.
        """
        results = []
        for name, data in files:
            if is_dicomdir(name):
                continue
            if is_zip(data[:4]):
                results.extend(await self.ingest_files(unzip(data, self.settings), source=source))
                continue
            results.append(await self.ingest_file(data, source=source, name=name))
        return results

    async def ingest_file(
        self, data: bytes, *, source: RawSource, name: str = ""
    ) -> DicomFileResult:
        """Store, map and merge one Part 10 file."""
        stored_bytes, header_only, parse_error = data, False, None
        if is_part10(data) and self.settings.keep == "header":
            try:
                offset = pixel_data_offset(data)
                stored_bytes, header_only = data[:offset], offset < len(data)
            except Exception as exc:  # corrupt: keep it whole, the mapping step reports it
                parse_error = exc
        extra: JsonDict = {"filename": name[:255]}
        if header_only:
            extra.update(header_only=True, received_size=len(data))
        stored, original = await self.raw.insert_bytes(
            stored_bytes,
            kind="dicom",
            content_type=DICOM_MEDIA_TYPE,
            source=source,
            received_at=now_utc(),
            extra=extra,
        )
        if original is not None and original.status not in ("received", "error"):
            return self._previous(original, name)
        if parse_error is not None:
            log.info("DICOM payload %s did not parse for header-only storage", stored.id)
        return await self._process(stored, stored_bytes, name)

    async def reprocess(self, raw_id: str) -> DicomFileResult | None:
        payload = await self.raw.get(raw_id)
        if payload is None or payload.kind != "dicom":
            return None
        data = await self.raw.read_all(payload)
        return await self._process(payload, data, payload.filename)

    def _previous(self, original: RawPayload, name: str) -> DicomFileResult:
        report = original.report or {}
        return DicomFileResult(
            name=name,
            payload=original.id,
            status=original.status,
            http_status=int(report.get("httpStatus", 200)),
            duplicate=True,
            study=report.get("study"),
            resources=list(original.resources),
            provenance=(report.get("provenance") or None),
            findings=original.findings,
            outcome=original.outcome,
        )

    # One file

    async def _process(self, payload: RawPayload, data: bytes, name: str) -> DicomFileResult:
        try:
            with quiet_pydicom():
                mapped = map_dataset(read_part10(data), wado_base_url=self.settings.wado_base_url)
        except FhirError as error:
            return await self._fail(payload, name, error)
        except Exception as exc:  # a mapper defect still gets an answer and is kept
            log.exception("DICOM mapping failed unexpectedly on payload %s", payload.id)
            return await self._fail(
                payload,
                name,
                BadRequest(f"the DICOM file could not be mapped: {type(exc).__name__}"),
            )
        study_ref = f"ImagingStudy/{mapped.imaging_study['id']}"
        try:
            counts, prov = await self._apply_with_retries(payload, mapped)
        except FhirError as error:
            return await self._fail(payload, name, error, study=study_ref)
        findings = await check_patients(self.store, self.matcher, counts.written, name)
        if not counts.written and "identifier" not in mapped.patient:
            # Unchanged, yet the finding still holds for this file.
            found = missing_identifier(mapped.patient, name)
            findings = [found] if found else []
        result = DicomFileResult(
            name=name,
            payload=payload.id,
            status="mapped",
            http_status=200,
            study=study_ref,
            resources=[versioned(v) for v in counts.written],
            unchanged=counts.unchanged,
            provenance=versioned(prov) if prov else None,
            findings=findings,
        )
        if findings:
            await self.raw.collection.update_one(
                {"_id": payload.id}, {"$set": {"findings": findings}}
            )
        return result

    async def _fail(
        self, payload: RawPayload, name: str, error: FhirError, *, study: str | None = None
    ) -> DicomFileResult:
        # Not DICOM or corrupt: "rejected" (nothing to map); mappable in principle: "failed".
        status: Status = "rejected" if error.status in (400, 415) else "failed"
        result = DicomFileResult(
            name=name,
            payload=payload.id,
            status=status,
            http_status=error.status,
            study=study,
            outcome=error.to_outcome(),
        )
        await self.raw.record_result(
            payload.id,
            status=status,
            outcome=result.outcome,
            report={"httpStatus": error.status, "study": study, "file": name},
            processed_at=now_utc(),
        )
        return result

    async def _apply_with_retries(
        self, payload: RawPayload, mapped: StudyResources
    ) -> tuple[WriteCounts, Any]:
        for attempt in range(APPLY_ATTEMPTS):
            try:
                return await self.store.run_transaction(
                    lambda session: self._apply(session, payload, mapped)
                )
            except VersionConflict:
                if attempt == APPLY_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0.05, 0.25) * (attempt + 1))
        raise AssertionError("unreachable")

    async def _apply(
        self, session: AsyncClientSession, payload: RawPayload, mapped: StudyResources
    ) -> tuple[WriteCounts, Any]:
        uow = UnitOfWork(session, WriteBatch(self.store), (payload.id,))
        study = mapped.imaging_study
        stored_study = await current_docs(self.interactions, uow, "ImagingStudy", [study["id"]])
        existing = stored_study.get(study["id"])
        merged_study = merge_imaging_study(_content(existing), study)
        patient = mapped.patient
        stored_patient = await current_docs(self.interactions, uow, "Patient", [patient["id"]])
        known = stored_patient.get(patient["id"])
        # What this file says wins; what only earlier files (or other feeds) said is kept.
        merged_patient = {**(_content(known) or {}), **patient}
        resources = [merged_patient, merged_study]
        if mapped.endpoint is not None:
            resources.insert(0, mapped.endpoint)
        counts = await put_all(self.interactions, uow, resources)
        prov = None
        if counts.written:
            body = provenance(
                deterministic_id("Provenance", "dicom", payload.id),
                counts.written,
                payload.id,
                recorded=now_utc(),
                agent="Hestia DICOM ingestion",
            )
            prov = await put_provenance(self.interactions, uow, body)
        await uow.flush()
        await self.raw.record_result(
            payload.id,
            status="mapped",
            outcome=None,
            report={
                "httpStatus": 200,
                "study": f"ImagingStudy/{study['id']}",
                "provenance": versioned(prov) if prov else None,
            },
            resources=[versioned(v) for v in counts.written],
            processed_at=now_utc(),
            session=session,
        )
        return counts, prov


def _content(doc: JsonDict | None) -> JsonDict | None:
    if doc is None:
        return None
    return {k: v for k, v in doc["resource"].items() if k != "meta"}


def worst_status(results: list[DicomFileResult]) -> int:
    """The HTTP status of an upload: the first failure's, or 200 when every file mapped."""
    for result in results:
        if result.http_status >= 400:
            return result.http_status
    return 200


__all__ = [
    "DICOM_MEDIA_TYPE",
    "DicomFileResult",
    "DicomIngestor",
    "DicomSettings",
    "is_dicomdir",
    "is_zip",
    "pixel_data_offset",
    "unzip",
    "worst_status",
]

"""CSV and DICOM ingestion wired on a test's database (on top of conftest's `wiring`)."""

from __future__ import annotations

from dataclasses import dataclass

from app.ingest.csv_ingest import CsvIngestor, CsvSettings
from app.ingest.dicom_ingest import DicomIngestor, DicomSettings
from app.store.raw import RawSource
from tests.ingest.conftest import Wiring

CSV_SOURCE = RawSource("http", "127.0.0.1:5000")
WADO = "https://pacs.example.org/dicom-web"


@dataclass
class Feeds:
    wiring: Wiring
    csv: CsvIngestor
    dicom: DicomIngestor


def feeds(wiring: Wiring, *, chunk_rows: int = 500, keep: str = "file") -> Feeds:
    return Feeds(
        wiring,
        CsvIngestor(wiring.interactions, wiring.raw, CsvSettings(chunk_rows=chunk_rows)),
        DicomIngestor(
            wiring.interactions,
            wiring.raw,
            DicomSettings(wado_base_url=WADO, keep="header" if keep == "header" else "file"),
        ),
    )

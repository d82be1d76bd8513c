"""Turn uploaded bytes into pydicom Datasets: DICOM Part 10 files and DICOM JSON.

Pixel data is never read (`stop_before_pixels=True`): the mapper needs the header only,
and the original bytes are kept by the raw-payload store anyway. Text values are decoded
by pydicom according to Specific Character Set (0008,0005) when they are accessed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pydicom
from pydicom.dataset import Dataset

from app.fhir.outcome import BadRequest, UnsupportedMediaType

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"


def is_part10(head: bytes) -> bool:
    """True when `head` starts with the 128-byte preamble followed by "DICM"."""
    return head[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4] == MAGIC


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    # pydicom warns (not raises) on values that break VR length rules; real-world data
    # does that constantly and the values are still usable, so the noise is dropped.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def read_part10(data: bytes) -> Dataset:
    """Parse a DICOM Part 10 file (preamble + DICM required)."""
    if not is_part10(data):
        raise UnsupportedMediaType(
            "not a DICOM Part 10 file: no 'DICM' marker after the 128-byte preamble"
        )
    try:
        with quiet_pydicom():
            dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            # pydicom decodes values when they are first read: decode them all here, so that
            # a corrupt one (an unknown VR, say) is this file's error, not the mapper's.
            for _ in dataset.iterall():
                pass
            return dataset
    except Exception as exc:  # pydicom raises a dozen unrelated types on corrupt input
        raise BadRequest(f"corrupt DICOM Part 10 file: {exc}") from exc


def read_dicom_json(data: bytes | str | Any) -> list[Dataset]:
    """Parse DICOM JSON (PS3.18 F.2): one dataset, a list of them, or {"study": [...]}.

    The `{"study": [...]}` wrapper is the form used by Google's Whistle DICOM samples.
    """
    try:
        doc = orjson.loads(data) if isinstance(data, bytes | str) else data
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"invalid DICOM JSON: {exc}") from exc
    if isinstance(doc, dict) and isinstance(doc.get("study"), list):
        items = doc["study"]
    elif isinstance(doc, list):
        items = doc
    elif isinstance(doc, dict):
        items = [doc]
    else:
        raise BadRequest("DICOM JSON must be an object or an array of objects")
    datasets = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadRequest(f"DICOM JSON item {index} is not an object", expression=[f"[{index}]"])
        try:
            with quiet_pydicom():
                datasets.append(Dataset.from_json(item))
        except Exception as exc:  # as for Part 10: pydicom's errors on bad input vary
            raise BadRequest(
                f"invalid DICOM JSON item {index}: {exc}", expression=[f"[{index}]"]
            ) from exc
    return datasets


def looks_like_dicom_json(head: bytes) -> bool:
    """Cheap check on the first bytes: a JSON object keyed by 8-hex-digit tags or "study"."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n[")
    if not text.startswith(b"{"):
        return False
    key = text[1:].lstrip()
    if key.startswith(b'"study"'):
        return True
    return len(key) > 10 and key[0:1] == b'"' and key[9:10] == b'"' and _is_hex(key[1:9])


def _is_hex(raw: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in raw)

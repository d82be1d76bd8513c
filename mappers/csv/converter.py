"""Stream CSV rows through a map into transaction Bundle entries, row by row.

Memory stays flat: rows are read lazily (`csv.reader` over a line iterator or a text
wrapper around a binary stream) and only a bounded window of row fingerprints is kept for
duplicate detection. Every row ends as exactly one of: an entry, a duplicate skipped with
a note, or a rejection with line, column and reason.

Units: a numeric value whose code has a target unit in the map is converted to it (mass
↔ substance via the molar mass of the LOINC analyte). The Quantity then carries the value
as received in the extension ORIGINAL_QUANTITY_URL, so nothing is lost. Converted values
are rounded to 6 significant digits.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from app.fhir.outcome import BadRequest, issue, outcome
from mappers.csv.spec import MISSING, Cells, CsvMap, JsonDict, available_maps
from mappers.csv.values import CellError, deterministic_id, parse_decimal
from terminology import ucum

UCUM_SYSTEM = "http://unitsofmeasure.org"
ORIGINAL_QUANTITY_URL = "urn:hestia:StructureDefinition:original-quantity"
# Distinct rows remembered for duplicate detection: about 150 bytes each. Repeats further
# apart than this are still harmless, since they PUT the same content to the same id.
DUPLICATE_WINDOW = 200_000
# Rejections kept in the report; beyond this they are only counted.
MAX_REPORTED_REJECTIONS = 10_000

_PLAUSIBLE: dict[str, dict[str, Any]] = {
    k: v
    for k, v in json.loads(
        (Path(__file__).parent / "plausible_ranges.json").read_text(encoding="utf-8")
    ).items()
    if not k.startswith("_")
}


@dataclass(frozen=True)
class Rejection:
    line: int
    column: str | None
    reason: str
    # The row's cells as read, so the rejected row can be shown and fixed later.
    row: tuple[str, ...] = ()

    def row_text(self) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="").writerow(self.row)
        return buffer.getvalue()

    def to_issue(self) -> JsonDict:
        where = [self.column] if self.column else None
        return issue("error", "invalid", f"line {self.line}: {self.reason}", expression=where)


@dataclass
class RowResult:
    """The outcome of one data row: an entry, a rejection, or a skipped duplicate."""

    line: int
    entry: JsonDict | None = None
    rejection: Rejection | None = None
    duplicate_of: int | None = None
    issues: list[JsonDict] = field(default_factory=list)
    # (column, "Type/id") references the map says must exist on the server; the converter
    # cannot see the server, so the ingestion layer checks them and may reject the row.
    must_exist: list[tuple[str, str]] = field(default_factory=list)
    row: tuple[str, ...] = ()


@dataclass
class ConversionReport:
    map_name: str
    rows_read: int = 0
    resources_produced: int = 0
    rows_rejected: int = 0
    duplicates_skipped: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    issues: list[JsonDict] = field(default_factory=list)

    def add(self, result: RowResult) -> None:
        self.rows_read += 1
        if result.entry is not None:
            self.resources_produced += 1
        if result.duplicate_of is not None:
            self.duplicates_skipped += 1
        if result.rejection is not None:
            self.rows_rejected += 1
            if len(self.rejections) < MAX_REPORTED_REJECTIONS:
                self.rejections.append(result.rejection)
        if len(self.issues) < MAX_REPORTED_REJECTIONS:
            self.issues.extend(result.issues)

    def to_outcome(self) -> JsonDict:
        summary = issue(
            "information",
            "informational",
            f"map {self.map_name}: {self.rows_read} rows read, {self.resources_produced} "
            f"resources, {self.rows_rejected} rejected, {self.duplicates_skipped} duplicates",
        )
        return outcome(summary, *(r.to_issue() for r in self.rejections), *self.issues)


@dataclass
class Batch:
    """Up to `batch_size` rows: their transaction Bundle plus what was rejected."""

    bundle: JsonDict
    rejections: list[Rejection]
    issues: list[JsonDict]
    first_line: int
    last_line: int


# --- input ------------------------------------------------------------------------------


def _text_lines(source: Iterable[str] | IO[bytes] | IO[str]) -> Iterable[str]:
    if isinstance(source, io.TextIOBase):
        return cast(IO[str], source)
    if hasattr(source, "read"):
        # utf-8-sig drops a BOM; newline="" lets csv handle quoted line breaks.
        return io.TextIOWrapper(cast(IO[bytes], source), encoding="utf-8-sig", newline="")
    return source


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith(codecs.BOM_UTF8.decode()) else text


def match_map(header_line: str | bytes) -> str | None:
    """The name of the shipped map whose signature the header carries, or None."""
    if isinstance(header_line, bytes):
        header_line = header_line.decode("utf-8", errors="replace")
    first = _strip_bom(header_line).splitlines()[0] if header_line.strip() else ""
    header = {h.strip() for h in next(csv.reader([first]), [])}
    best: tuple[int, str] | None = None
    for name, csv_map in available_maps().items():
        if all(col in header for col in csv_map.signature):
            score = len(csv_map.signature)
            if best is None or score > best[0]:
                best = (score, name)
    return best[1] if best else None


# --- conversion -------------------------------------------------------------------------


class _RowMapper:
    def __init__(self, csv_map: CsvMap, header: list[str]) -> None:
        self.map = csv_map
        self.header = [_strip_bom(h).strip() for h in header]
        missing = [
            c.name for c in csv_map.columns.values() if c.required and c.name not in self.header
        ]
        if missing:
            raise BadRequest(
                f"CSV header lacks required column(s) {', '.join(missing)} for map "
                f"'{csv_map.name}'",
                expression=missing,
            )
        self.positions = [
            (i, csv_map.columns[name])
            for i, name in enumerate(self.header)
            if name in csv_map.columns
        ]
        self.absent = [c for c in csv_map.columns.values() if c.name not in self.header]
        self.existing = [
            c.name for c in csv_map.columns.values() if c.must_exist and c.name in self.header
        ]
        self.seen: dict[str, tuple[int, int]] = {}

    def map_row(self, line: int, row: list[str]) -> RowResult:
        result = RowResult(line=line)
        if len(row) != len(self.header):
            result.rejection = Rejection(
                line, None, f"expected {len(self.header)} fields, found {len(row)}", tuple(row)
            )
            return result
        raw: dict[str, str] = {}
        cells: Cells = {}
        try:
            for index, column in self.positions:
                text = row[index].strip()
                if not text and column.default is not None:
                    text = column.default
                raw[column.name] = text
                if not text:
                    if column.required:
                        raise _Reject(column.name, "required value is empty")
                    if column.expected:
                        result.issues.append(self._missing_issue(line, column.name))
                    continue
                try:
                    cells[column.name] = column.parse(text, self.map.default_zone)
                except CellError as exc:
                    if column.lookup is not None and not column.known and column.type == "code":
                        result.issues.append(self._unknown_code_issue(line, column.name, text))
                        continue
                    raise _Reject(column.name, str(exc)) from exc
            for column in self.absent:
                if column.default is not None:
                    cells[column.name] = column.parse(column.default, self.map.default_zone)
            resource = self.map.template(cells)
            if resource is MISSING:
                raise _Reject(None, "row produced no resource")
            if self.map.value is not None:
                self._apply_value(resource, raw, line, result)
        except _Reject as rej:
            result.rejection = Rejection(line, rej.column, rej.reason, tuple(row))
            result.issues.clear()
            return result

        key = [raw.get(c, "") for c in self.map.id_columns]
        resource_id = deterministic_id(self.map.id_namespace, key)
        resource = {
            "resourceType": resource.pop("resourceType", self.map.resource),
            "id": resource_id,
            **resource,
        }
        fingerprint = hash(tuple(row))
        previous = self.seen.get(resource_id)
        if previous is not None:
            if previous[1] == fingerprint:
                result.duplicate_of = previous[0]
                result.issues.append(
                    issue(
                        "information",
                        "duplicate",
                        f"line {line}: same row as line {previous[0]}, skipped",
                    )
                )
                return result
            result.rejection = Rejection(
                line,
                None,
                f"same id as line {previous[0]} ({', '.join(self.map.id_columns)}) "
                "but different content",
                tuple(row),
            )
            result.issues.clear()
            return result
        self._remember(resource_id, line, fingerprint)
        result.row = tuple(row)
        result.must_exist = [
            (name, cells[name]) for name in self.existing if isinstance(cells.get(name), str)
        ]
        if resource["resourceType"] != self.map.resource:
            raise ValueError(f"map '{self.map.name}' template builds {resource['resourceType']}")
        result.entry = {
            "fullUrl": f"urn:uuid:{resource_id}",
            "resource": resource,
            "request": {"method": "PUT", "url": f"{self.map.resource}/{resource_id}"},
        }
        return result

    def _remember(self, resource_id: str, line: int, fingerprint: int) -> None:
        if len(self.seen) >= DUPLICATE_WINDOW:
            del self.seen[next(iter(self.seen))]  # oldest first: dicts keep insertion order
        self.seen[resource_id] = (line, fingerprint)

    def _apply_value(
        self, resource: JsonDict, raw: dict[str, str], line: int, result: RowResult
    ) -> None:
        spec = self.map.value
        assert spec is not None
        text = raw.get(spec.column, "")
        if not text:
            return
        kind = raw.get(spec.kind_column, "") if spec.kind_column else None
        if kind is not None and kind not in spec.numeric_kinds:
            resource["valueString"] = text
            return
        try:
            value = parse_decimal(text)
        except CellError as exc:
            raise _Reject(spec.column, str(exc)) from exc
        unit = raw.get(spec.unit_column, "") if spec.unit_column else ""
        code = raw.get(spec.code_column, "") if spec.code_column else ""
        quantity = self._quantity(value, unit, code, spec.target_units.get(code), spec.unit_column)
        resource["valueQuantity"] = quantity
        finding = _plausibility(code, quantity, line, self.map.resource)
        if finding:
            result.issues.append(finding)

    @staticmethod
    def _quantity(
        value: float, unit: str, code: str, target: str | None, unit_column: str | None
    ) -> JsonDict:
        if not unit:
            if target:
                raise _Reject(unit_column, f"no unit given; expected one convertible to {target}")
            return {"value": value}
        if not ucum.is_valid(unit):
            raise _Reject(unit_column, f"unknown UCUM unit '{unit}'")
        if target is None or target == unit:
            return {"value": value, "unit": unit, "system": UCUM_SYSTEM, "code": unit}
        try:
            converted = ucum.convert(value, unit, target, analyte=code or None)
        except ucum.UcumError as exc:
            raise _Reject(
                unit_column, f"unit '{unit}' cannot be converted to {target}: {exc}"
            ) from exc
        return {
            "value": float(f"{converted:.6g}"),
            "unit": target,
            "system": UCUM_SYSTEM,
            "code": target,
            "extension": [
                {
                    "url": ORIGINAL_QUANTITY_URL,
                    "valueQuantity": {
                        "value": value,
                        "unit": unit,
                        "system": UCUM_SYSTEM,
                        "code": unit,
                    },
                }
            ],
        }

    @staticmethod
    def _missing_issue(line: int, column: str) -> JsonDict:
        return issue("warning", "required", f"line {line}: {column} is empty", expression=[column])

    @staticmethod
    def _unknown_code_issue(line: int, column: str, text: str) -> JsonDict:
        return issue(
            "warning",
            "code-invalid",
            f"line {line}: unknown code '{text}' left out",
            expression=[column],
        )


class _Reject(Exception):
    def __init__(self, column: str | None, reason: str) -> None:
        super().__init__(reason)
        self.column = column
        self.reason = reason


def _plausibility(code: str, quantity: JsonDict, line: int, resource: str) -> JsonDict | None:
    plausible = _PLAUSIBLE.get(code)
    unit = quantity.get("code")
    if plausible is None or unit is None:
        return None
    try:
        value = ucum.convert(quantity["value"], unit, plausible["unit"], analyte=code)
    except ucum.UcumError:
        return None
    if plausible["low"] <= value <= plausible["high"]:
        return None
    return issue(
        "warning",
        "value",
        f"line {line}: {plausible['display']} {quantity['value']} {unit} is outside the "
        f"plausible range {plausible['low']}-{plausible['high']} {plausible['unit']}",
        expression=[f"{resource}.valueQuantity"],
    )


def iter_rows(
    source: Iterable[str] | IO[bytes] | IO[str],
    csv_map: CsvMap,
    report: ConversionReport | None = None,
) -> Iterator[RowResult]:
    """One RowResult per data row; the first row is the header. Bytes that are not UTF-8 end
    the file with a BadRequest naming the line after which they were met."""
    reader = csv.reader(_text_lines(source))
    try:
        header = next(reader, None)
        if header is None:
            raise BadRequest("CSV payload is empty: no header line")
        mapper = _RowMapper(csv_map, header)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines, including a trailing one
            result = mapper.map_row(reader.line_num, row)
            if report is not None:
                report.add(result)
            yield result
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, reader.line_num) from exc


def _not_utf8(exc: UnicodeDecodeError, line: int) -> BadRequest:
    if exc.start < len(exc.object):
        return BadRequest(
            f"the CSV is not UTF-8: invalid byte 0x{exc.object[exc.start]:02x} after line {line}"
        )
    return BadRequest(f"the CSV is not UTF-8: it ends inside a character after line {line}")


class _Lines:
    """An iterator that may run dry and be refilled: csv.reader asks it for the next line and
    simply stops when it is empty, ready to continue once more complete records arrive."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if not self.lines:
            raise StopIteration
        return self.lines.popleft()


class CsvStream:
    """Incremental conversion for push-style input (an upload read block by block).

    `feed(text)` maps every record completed by `text` and keeps the unfinished tail; a
    record ends at a line break outside quotes, so a quoted field spanning lines is never
    cut. Line numbers are the file's physical lines, as with `iter_rows`.
    """

    def __init__(self, csv_map: CsvMap, report: ConversionReport | None = None) -> None:
        self.map = csv_map
        self.report = report
        self._lines = _Lines()
        self._reader = csv.reader(self._lines)
        self._mapper: _RowMapper | None = None
        self._tail = ""
        self._in_quotes = False  # quote state at the end of `_tail`'s scanned part
        self._scanned = 0

    @property
    def header(self) -> list[str]:
        return self._mapper.header if self._mapper is not None else []

    def feed(self, text: str) -> list[RowResult]:
        self._tail += text
        cut = self._complete_prefix()
        if cut == 0:
            return []
        complete, self._tail = self._tail[:cut], self._tail[cut:]
        self._scanned = 0
        self._in_quotes = False
        self._lines.lines.extend(io.StringIO(complete, newline=""))
        return self._drain()

    def close(self) -> list[RowResult]:
        """Map what is left (a last record without a final line break)."""
        if self._tail:
            self._lines.lines.extend(io.StringIO(self._tail, newline=""))
            self._tail = ""
        results = self._drain()
        if self._mapper is None:
            raise BadRequest("CSV payload is empty: no header line")
        return results

    def _complete_prefix(self) -> int:
        """Length of the longest prefix of `_tail` made of complete records."""
        text, in_quotes, cut = self._tail, self._in_quotes, 0
        for index in range(self._scanned, len(text)):
            char = text[index]
            if char == '"':
                in_quotes = not in_quotes  # "" inside quotes toggles twice: parity holds
            elif char == "\n" and not in_quotes:
                cut = index + 1
        # Everything scanned stays scanned; the cut restarts the scan at the new tail.
        self._scanned, self._in_quotes = len(text), in_quotes
        return cut

    def _drain(self) -> list[RowResult]:
        results = []
        for row in self._reader:
            if self._mapper is None:
                self._mapper = _RowMapper(self.map, row)
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            result = self._mapper.map_row(self._reader.line_num, row)
            if self.report is not None:
                self.report.add(result)
            results.append(result)
        return results


def iter_bundles(
    source: Iterable[str] | IO[bytes] | IO[str],
    csv_map: CsvMap,
    batch_size: int = 100,
    report: ConversionReport | None = None,
) -> Iterator[Batch]:
    """Transaction Bundles of up to `batch_size` rows each, in file order."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    entries: list[JsonDict] = []
    rejections: list[Rejection] = []
    issues: list[JsonDict] = []
    first = last = 0
    count = 0
    for result in iter_rows(source, csv_map, report):
        if count == 0:
            first = result.line
        last = result.line
        count += 1
        if result.entry is not None:
            entries.append(result.entry)
        if result.rejection is not None:
            rejections.append(result.rejection)
        issues.extend(result.issues)
        if count >= batch_size:
            yield Batch(_bundle(entries), rejections, issues, first, last)
            entries, rejections, issues, count = [], [], [], 0
    if count:
        yield Batch(_bundle(entries), rejections, issues, first, last)


def _bundle(entries: list[JsonDict]) -> JsonDict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def convert(
    source: Iterable[str] | IO[bytes] | IO[str], csv_map: CsvMap
) -> tuple[list[JsonDict], ConversionReport]:
    """Whole-file convenience for small payloads: all entries and the report."""
    report = ConversionReport(map_name=csv_map.name)
    entries = [r.entry for r in iter_rows(source, csv_map, report) if r.entry is not None]
    return entries, report

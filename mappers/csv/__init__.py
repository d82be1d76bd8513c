"""CSV feeds → transaction Bundles through declarative YAML maps. Pure, no I/O."""

from mappers.csv.converter import (
    ORIGINAL_QUANTITY_URL,
    Batch,
    ConversionReport,
    Rejection,
    RowResult,
    convert,
    iter_bundles,
    iter_rows,
    match_map,
)
from mappers.csv.spec import CsvMap, available_maps, compile_map, load_map

__all__ = [
    "ORIGINAL_QUANTITY_URL",
    "Batch",
    "ConversionReport",
    "CsvMap",
    "Rejection",
    "RowResult",
    "available_maps",
    "compile_map",
    "convert",
    "iter_bundles",
    "iter_rows",
    "load_map",
    "match_map",
]

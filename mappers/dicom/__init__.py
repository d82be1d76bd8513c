"""DICOM (Part 10 and DICOM JSON) → Patient, ImagingStudy, Endpoint. Pure, no I/O."""

from mappers.dicom.convert import map_datasets, map_dicom_json, map_part10, transaction_bundle
from mappers.dicom.mapping import StudyResources, map_dataset, merge_imaging_study
from mappers.dicom.read import is_part10, read_dicom_json, read_part10

__all__ = [
    "StudyResources",
    "is_part10",
    "map_dataset",
    "map_datasets",
    "map_dicom_json",
    "map_part10",
    "merge_imaging_study",
    "read_dicom_json",
    "read_part10",
    "transaction_bundle",
]

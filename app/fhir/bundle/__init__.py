"""batch and transaction Bundle processing (R4 http.html#transaction); see processor.py."""

from app.fhir.bundle.processor import BundleOutcome, BundleProcessor, Searcher

__all__ = ["BundleOutcome", "BundleProcessor", "Searcher"]

"""Inspection records: every ``inspect`` row and ``/inspect`` request on record (SQLite by default, any
SQLAlchemy URL, PostgreSQL tested), images in a content-addressed folder, reviews with optimistic
versioning, export as a table or as a dataset the fit verbs read."""

from defectlab.records.export import export_dataset, export_table
from defectlab.records.integrity import check
from defectlab.records.recorder import from_prediction, model_version
from defectlab.records.review import (
    BadReview,
    ReviewConflict,
    ReviewInput,
    UnknownRecord,
    apply_review,
    history,
)
from defectlab.records.store import NewRecord, RecordFilter, RecordStore, open_store

__all__ = [
    "BadReview",
    "NewRecord",
    "RecordFilter",
    "RecordStore",
    "ReviewConflict",
    "ReviewInput",
    "UnknownRecord",
    "apply_review",
    "check",
    "export_dataset",
    "export_table",
    "from_prediction",
    "history",
    "model_version",
    "open_store",
]

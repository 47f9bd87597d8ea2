"""Reviews: a person confirms good / defect, sets the type and accepts, rejects or draws regions.

Optimistic concurrency: a review names the item's ``version`` it was based on; the update only applies
if the row still has that version (one conditional UPDATE, atomic on every database), and bumps it.
A stale review raises :class:`ReviewConflict` carrying the current state; nothing is overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update

from defectlab.records.models import REVIEWED, Inspection, Review
from defectlab.records.store import RecordStore, row_dict, utc

LABELS = ("good", "defect")
MASKS = ("box", "map")  # a region's mask: the whole box, or the anomaly map above threshold inside the box


class BadReview(ValueError):
    """A malformed review payload (the service answers 422, the CLI one line)."""


class UnknownRecord(LookupError):
    def __init__(self, record_id: int) -> None:
        super().__init__(f"no inspection record with id {record_id}")
        self.record_id = record_id


class ReviewConflict(Exception):
    def __init__(self, current: dict[str, Any], sent_version: int) -> None:
        super().__init__(
            f"record {current['id']} is at version {current['version']} (reviewed by "
            f"{current['reviewer'] or 'nobody'}); the review was based on version {sent_version}"
        )
        self.current = current


@dataclass(frozen=True)
class ReviewInput:
    label: str  # "good" | "defect"
    reviewer: str
    version: int  # the item's version this review is based on
    type: str | None = None  # defect type (defect only); None keeps the predicted type
    regions: list[dict[str, Any]] | None = (
        None  # [{"box": [x0, y0, x1, y1], "mask": "box"|"map"}]; None = accept predicted
    )


def validate(review: ReviewInput, item: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
    """The type and regions to store, or :class:`BadReview` naming the problem."""
    if review.label not in LABELS:
        raise BadReview(f"label must be one of {', '.join(LABELS)}, got {review.label!r}")
    if not isinstance(review.reviewer, str) or not review.reviewer.strip() or len(review.reviewer) > 200:
        raise BadReview("reviewer must be a non-empty name of at most 200 characters")
    if not isinstance(review.version, int) or isinstance(review.version, bool) or review.version < 1:
        raise BadReview(f"version must be a positive integer, got {review.version!r}")
    if review.label == "good":
        if review.type or review.regions:
            raise BadReview("a part confirmed good has no defect type and no regions")
        return None, []
    dtype = review.type if review.type is not None else (item["type"] or "defect")
    if (
        not isinstance(dtype, str)
        or not dtype.strip()
        or len(dtype) > 100
        or "/" in dtype
        or dtype.startswith(".")
    ):
        raise BadReview(f"type must be a plain name (no '/', at most 100 characters), got {dtype!r}")
    if dtype == "good":
        raise BadReview("type 'good' is not a defect type: send label 'good' instead")
    if review.regions is None:
        regions = [{"box": list(b), "mask": "map" if item["map_path"] else "box"} for b in item["boxes"]]
    else:
        regions = [_region(r, item["width"], item["height"]) for r in review.regions]
    return dtype.strip(), regions


def _region(r: Any, width: int, height: int) -> dict[str, Any]:
    if not isinstance(r, dict) or "box" not in r:
        raise BadReview(f"a region is an object with a 'box' [x0, y0, x1, y1], got {r!r}")
    box = r["box"]
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
    ):
        raise BadReview(f"box must be 4 integers [x0, y0, x1, y1], got {box!r}")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise BadReview(f"box {box} is empty or outside the {width}x{height} image")
    mask = r.get("mask", "box")
    if mask not in MASKS:
        raise BadReview(f"mask must be one of {', '.join(MASKS)}, got {mask!r}")
    return {"box": [x0, y0, x1, y1], "mask": mask}


def apply_review(store: RecordStore, record_id: int, review: ReviewInput) -> dict[str, Any]:
    """Store the review if ``review.version`` is current; returns the updated record."""
    item = store.get(record_id)
    if item is None:
        raise UnknownRecord(record_id)
    dtype, regions = validate(review, item)
    now = datetime.now(UTC)
    with store._tx() as conn:
        done = conn.execute(
            update(Inspection)
            .where(Inspection.id == record_id, Inspection.version == review.version)
            .values(
                version=Inspection.version + 1,
                review_state=REVIEWED,
                review_label=review.label,
                review_type=dtype,
                review_regions=regions,
                reviewer=review.reviewer.strip(),
                reviewed_at=now,
            )
        )
        if done.rowcount == 1:
            conn.execute(
                insert(Review).values(
                    inspection_id=record_id,
                    version=review.version + 1,
                    reviewer=review.reviewer.strip(),
                    reviewed_at=now,
                    label=review.label,
                    type=dtype,
                    regions=regions,
                )
            )
    if done.rowcount != 1:
        raise ReviewConflict(store.get(record_id) or item, review.version)
    return store.get(record_id)  # type: ignore[return-value]


def history(store: RecordStore, record_id: int) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = (
            conn.execute(
                select(Review.__table__).where(Review.inspection_id == record_id).order_by(Review.version)
            )
            .mappings()
            .all()
        )
    return [{**r, "reviewed_at": utc(r["reviewed_at"]).isoformat()} for r in rows]


__all__ = [
    "BadReview",
    "ReviewConflict",
    "ReviewInput",
    "UnknownRecord",
    "apply_review",
    "history",
    "row_dict",
]

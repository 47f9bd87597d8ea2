"""The record store's tables (SQLAlchemy 2 declarative). Alembic migrations in ``migrations/`` create them.

* ``inspections``: one row per inspected image (CLI ``inspect`` row or ``/inspect`` request), immutable
  prediction columns plus the current review state and ``version`` (optimistic concurrency: every review
  bumps it; a review that names an older version is refused).
* ``reviews``: every accepted review, append-only (who, when, what), for traceability.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED, SKIPPED, REVIEWED = "queued", "skipped", "reviewed"  # review_state values


class Base(DeclarativeBase):
    pass


class Inspection(Base):
    __tablename__ = "inspections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    source: Mapped[str] = mapped_column(String(200), nullable=False, default="")  # line/station tag
    origin: Mapped[str] = mapped_column(String(20), nullable=False)  # "cli" | "service"
    image_name: Mapped[str] = mapped_column(Text, nullable=False)  # original file name / relative path
    image_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    image_path: Mapped[str] = mapped_column(Text, nullable=False)  # relative to the image folder
    map_path: Mapped[str | None] = mapped_column(Text)  # 8-bit anomaly map PNG (128 = pixel threshold)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    threshold: Mapped[float] = mapped_column(Float, nullable=False)
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)  # "defect" | "good"
    type: Mapped[str | None] = mapped_column(String(100))  # predicted defect type ("unknown" allowed)
    type_prob: Mapped[float | None] = mapped_column(Float)
    type_top: Mapped[Any] = mapped_column(JSON, nullable=True)  # [[type, prob], ...] top-3
    boxes: Mapped[Any] = mapped_column(JSON, nullable=False)  # [[x0, y0, x1, y1], ...]
    regions: Mapped[Any] = mapped_column(
        JSON, nullable=True
    )  # predicted regions (bundle), free-form JSON list
    latency_ms: Mapped[float] = mapped_column(Float, nullable=False)
    priority: Mapped[float] = mapped_column(Float, nullable=False)  # review queue order (higher first)
    review_state: Mapped[str] = mapped_column(String(16), nullable=False)  # queued | skipped | reviewed
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    review_label: Mapped[str | None] = mapped_column(String(16))  # "good" | "defect"
    review_type: Mapped[str | None] = mapped_column(String(100))
    review_regions: Mapped[Any] = mapped_column(
        JSON, nullable=True
    )  # [{"box": [x0,y0,x1,y1], "mask": "map"|"box"}, ...]
    reviewer: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_inspections_queue", "review_state", "priority", "id"),
        Index("ix_inspections_created", "created_at"),
        Index("ix_inspections_verdict_created", "verdict", "created_at"),
        Index("ix_inspections_type", "type"),
        Index("ix_inspections_model", "model_version"),
        Index("ix_inspections_sha", "image_sha256"),
    )


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspections.id"), nullable=False, index=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)  # the item's version this review created
    reviewer: Mapped[str] = mapped_column(String(200), nullable=False)
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    label: Mapped[str] = mapped_column(String(16), nullable=False)
    type: Mapped[str | None] = mapped_column(String(100))
    regions: Mapped[Any] = mapped_column(JSON, nullable=True)

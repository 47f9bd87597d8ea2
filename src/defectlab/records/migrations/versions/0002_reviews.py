"""reviews: the current review state on each inspection (optimistic version) and the review history

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("review_label", sa.String(16)))
        batch.add_column(sa.Column("review_type", sa.String(100)))
        batch.add_column(sa.Column("review_regions", sa.JSON()))
        batch.add_column(sa.Column("reviewer", sa.String(200)))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True)))
        batch.create_index("ix_inspections_sha", ["image_sha256"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("inspection_id", sa.Integer(), sa.ForeignKey("inspections.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("type", sa.String(100)),
        sa.Column("regions", sa.JSON()),
    )
    op.create_index("ix_reviews_inspection_id", "reviews", ["inspection_id"])


def downgrade() -> None:
    op.drop_table("reviews")
    with op.batch_alter_table("inspections") as batch:
        batch.drop_index("ix_inspections_sha")
        for col in ("reviewed_at", "reviewer", "review_regions", "review_type", "review_label", "version"):
            batch.drop_column(col)

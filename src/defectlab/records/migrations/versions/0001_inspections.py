"""inspections table

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inspections",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("image_name", sa.Text(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("image_path", sa.Text(), nullable=False),
        sa.Column("map_path", sa.Text()),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("type", sa.String(100)),
        sa.Column("type_prob", sa.Float()),
        sa.Column("type_top", sa.JSON()),
        sa.Column("boxes", sa.JSON(), nullable=False),
        sa.Column("regions", sa.JSON()),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("review_state", sa.String(16), nullable=False),
    )
    op.create_index("ix_inspections_queue", "inspections", ["review_state", "priority", "id"])
    op.create_index("ix_inspections_created", "inspections", ["created_at"])
    op.create_index("ix_inspections_verdict_created", "inspections", ["verdict", "created_at"])
    op.create_index("ix_inspections_type", "inspections", ["type"])
    op.create_index("ix_inspections_model", "inspections", ["model_version"])


def downgrade() -> None:
    op.drop_table("inspections")

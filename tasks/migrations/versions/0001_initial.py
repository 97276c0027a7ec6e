"""Initial catalogue: scenes, datasets, dataset versions.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scenes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("scene_id", sa.Integer, sa.ForeignKey("scenes.id"), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("language", sa.String(32), nullable=False, server_default=""),
        sa.Column("licence", sa.String(128), nullable=False, server_default=""),
        sa.Column("source", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("scene_id", "name", name="uq_dataset_scene_name"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("run_key", sa.String(250), nullable=False),
        sa.Column("usage", sa.String(32), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False, server_default="text"),
        sa.Column("labelled", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("status", sa.String(16), nullable=False, server_default="ready"),
        sa.Column("uri", sa.Text, nullable=False),
        sa.Column("record_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("token_count", sa.Integer, nullable=True),
        sa.Column("char_count", sa.Integer, nullable=True),
        sa.Column("quarantined_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("size_bytes", sa.Integer, nullable=True),
        sa.Column("parents", sa.JSON, nullable=False),
        sa.Column("recipe", sa.JSON, nullable=False),
        sa.Column("stats", sa.JSON, nullable=False),
        sa.Column("code_version", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("published_at", TS, nullable=True),
        sa.UniqueConstraint("dataset_id", "number", name="uq_version_number"),
        sa.UniqueConstraint("dataset_id", "run_key", name="uq_version_run_key"),
    )


def downgrade() -> None:
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
    op.drop_table("scenes")

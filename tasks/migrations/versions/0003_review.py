"""Human sampling review: evaluation standards, review tasks and their items (seed 001 §2.1.5).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08

- ``review_standards``: named sets of evaluation items (category, item, description) as JSON; presets
  come from include/review/standards.yaml. ``deleted_at`` keeps a deleted preset from coming back.
- ``review_tasks``: a sample of one dataset version with a snapshot of the standard (later edits do not
  reach a running task), the reviewers, status pending → in_progress → done, and the report's URI.
- ``review_items``: one sampled record each (content snapshot), its assigned reviewer, verdict, problem
  tags and spans.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "review_standards",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("items", sa.JSON, nullable=False),
        sa.Column("preset", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("revision", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_by", sa.String(255), nullable=False, server_default=""),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
    )
    op.create_table(
        "review_tasks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(127), nullable=False),
        sa.Column("run_key", sa.String(250), nullable=True, unique=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"), nullable=False),
        sa.Column("version_ref", sa.String(255), nullable=False),
        sa.Column("version_uri", sa.Text, nullable=False),
        sa.Column("standard", sa.JSON, nullable=False),
        sa.Column("sample_size", sa.Integer, nullable=False),
        sa.Column("sampled", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("reviewers", sa.JSON, nullable=False),
        sa.Column("assignment", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("created_by", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("completed_at", TS, nullable=True),
        sa.Column("report_uri", sa.Text, nullable=True),
    )
    op.create_table(
        "review_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "task_id", sa.Integer, sa.ForeignKey("review_tasks.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("record_id", sa.String(255), nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("assignee", sa.String(255), nullable=False),
        sa.Column("verdict", sa.String(8), nullable=True),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("spans", sa.JSON, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("reviewer", sa.String(255), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.UniqueConstraint("task_id", "record_id", name="uq_review_item_record"),
        sa.UniqueConstraint("task_id", "position", name="uq_review_item_position"),
    )
    op.create_index("ix_review_items_assignee", "review_items", ["task_id", "assignee", "verdict"])


def downgrade() -> None:
    op.drop_index("ix_review_items_assignee", table_name="review_items")
    op.drop_table("review_items")
    op.drop_table("review_tasks")
    op.drop_table("review_standards")

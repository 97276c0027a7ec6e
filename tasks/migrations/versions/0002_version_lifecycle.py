"""Dataset version lifecycle: descriptive attributes, token counting, quality gate, publication.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

- ``note``, ``tags``, ``source``, ``language``, ``licence``: what the version is, set at import (a
  dataset's attributes describe the dataset; a version may come from a different source or licence).
- ``tokenizer``: which tokenizer counted ``token_count`` (a count without its tokenizer means nothing).
- ``quality``: the quality report of the version (statistics, charts, Great Expectations result) and an
  override with its reason when a failed suite is published anyway.
- ``visibility``: private (the owner's scene) or public (every scene may select it).
- ``publication``: what publishing produced: export format, splits with counts and URIs.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions") as b:
        b.add_column(sa.Column("note", sa.Text, nullable=False, server_default=""))
        b.add_column(sa.Column("tags", sa.JSON, nullable=True))
        b.add_column(sa.Column("source", sa.Text, nullable=False, server_default=""))
        b.add_column(sa.Column("language", sa.String(32), nullable=False, server_default=""))
        b.add_column(sa.Column("licence", sa.String(128), nullable=False, server_default=""))
        b.add_column(sa.Column("tokenizer", sa.String(256), nullable=False, server_default=""))
        b.add_column(sa.Column("quality", sa.JSON, nullable=True))
        b.add_column(sa.Column("visibility", sa.String(16), nullable=False, server_default="private"))
        b.add_column(sa.Column("publication", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as b:
        for name in (
            "publication",
            "visibility",
            "quality",
            "tokenizer",
            "licence",
            "language",
            "source",
            "tags",
            "note",
        ):
            b.drop_column(name)

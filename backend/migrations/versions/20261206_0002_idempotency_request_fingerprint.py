"""restoration jobs keep the fingerprint of the request that made them

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs made before this revision have none, and their keys replay as before.
    op.add_column(
        "restoration_jobs", sa.Column("request_fingerprint", sa.String(length=64), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("restoration_jobs", "request_fingerprint")

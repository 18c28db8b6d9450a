"""Languages: each player's chosen UI language, and the UI language each label was typed in.

Revision ID: 0005_i18n
Revises: 0004_accounts
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_i18n"
down_revision = "0004_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("players") as b:
        b.add_column(sa.Column("language", sa.String(16), nullable=True))
    with op.batch_alter_table("labels") as b:
        b.add_column(sa.Column("language", sa.String(16), nullable=True))  # NULL: before this revision


def downgrade() -> None:
    with op.batch_alter_table("labels") as b:
        b.drop_column("language")
    with op.batch_alter_table("players") as b:
        b.drop_column("language")

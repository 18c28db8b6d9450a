"""Integrity and anti-Sybil columns: bundle content hash, photo hash, seen-before rounds, client addresses,
verified labels, campaign settings, per-address sign-up and log-in throttles.

Revision ID: 0003_integrity
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0003_integrity"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as b:
        b.add_column(sa.Column("content_hash", sa.String(64), nullable=True))
        b.add_column(sa.Column("seen_policy", sa.String(16), nullable=False, server_default="label_only"))
        b.add_column(sa.Column("agreement_rule", sa.String(16), nullable=False, server_default="address"))
        b.create_index("ix_campaigns_content_hash", ["content_hash"], unique=True)
    with op.batch_alter_table("images") as b:
        b.add_column(sa.Column("photo_hash", sa.String(64), nullable=True))
        b.create_index("ix_images_photo_hash", ["photo_hash"])
    conn = op.get_bind()
    images = sa.table("images", sa.column("id", sa.Integer), sa.column("photo", sa.LargeBinary),
                      sa.column("photo_hash", sa.String))
    for row_id, photo in conn.execute(sa.select(images.c.id, images.c.photo)).all():
        conn.execute(images.update().where(images.c.id == row_id)
                     .values(photo_hash=hashlib.sha256(bytes(photo)).hexdigest()))
    with op.batch_alter_table("rounds") as b:
        b.add_column(sa.Column("seen_before", sa.Boolean, nullable=False, server_default=sa.false()))
        b.add_column(sa.Column("client_key", sa.String(64), nullable=True))
    with op.batch_alter_table("labels") as b:
        b.add_column(sa.Column("verified", sa.Boolean, nullable=True))  # NULL: labelled before this revision
    with op.batch_alter_table("login_failures") as b:
        b.add_column(sa.Column("client_key", sa.String(64), nullable=True))
        b.create_index("ix_login_failures_key_client_at", ["username_key", "client_key", "at"])
        b.create_index("ix_login_failures_client_at", ["client_key", "at"])
    op.create_table(
        "signups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("client_key", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_signups_client_at", "signups", ["client_key", "at"])


def downgrade() -> None:
    op.drop_index("ix_signups_client_at", table_name="signups")
    op.drop_table("signups")
    with op.batch_alter_table("login_failures") as b:
        b.drop_index("ix_login_failures_client_at")
        b.drop_index("ix_login_failures_key_client_at")
        b.drop_column("client_key")
    with op.batch_alter_table("labels") as b:
        b.drop_column("verified")
    with op.batch_alter_table("rounds") as b:
        b.drop_column("client_key")
        b.drop_column("seen_before")
    with op.batch_alter_table("images") as b:
        b.drop_index("ix_images_photo_hash")
        b.drop_column("photo_hash")
    with op.batch_alter_table("campaigns") as b:
        b.drop_index("ix_campaigns_content_hash")
        b.drop_column("agreement_rule")
        b.drop_column("seen_policy")
        b.drop_column("content_hash")

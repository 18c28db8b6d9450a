"""Accounts: confusable skeletons of user names (unique) and one-time password-reset tokens.

Revision ID: 0004_accounts
Revises: 0003_integrity
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_accounts"
down_revision = "0003_integrity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from featurelens.game.names import username_skeleton

    with op.batch_alter_table("players") as b:
        b.add_column(sa.Column("username_skeleton", sa.String(200), nullable=True))
        b.create_index("ix_players_username_skeleton", ["username_skeleton"], unique=True)
    conn = op.get_bind()
    players = sa.table("players", sa.column("id", sa.Integer), sa.column("username", sa.String),
                       sa.column("username_skeleton", sa.String))
    taken: set[str] = set()
    for pid, name in conn.execute(sa.select(players.c.id, players.c.username).order_by(players.c.id)).all():
        skel = username_skeleton(name)
        if skel in taken:  # an older look-alike keeps its name; the newer one simply has no skeleton
            continue
        taken.add(skel)
        conn.execute(players.update().where(players.c.id == pid).values(username_skeleton=skel))
    op.create_table(
        "password_resets",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("player_id", sa.Integer, sa.ForeignKey("players.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("used_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_password_resets_player_id", "password_resets", ["player_id"])


def downgrade() -> None:
    op.drop_index("ix_password_resets_player_id", table_name="password_resets")
    op.drop_table("password_resets")
    with op.batch_alter_table("players") as b:
        b.drop_index("ix_players_username_skeleton")
        b.drop_column("username_skeleton")

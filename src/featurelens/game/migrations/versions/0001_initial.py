"""Initial schema of the labelling game.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
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
        "players",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("username_key", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("player_id", sa.Integer, sa.ForeignKey("players.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_sessions_player_id", "sessions", ["player_id"])
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("class_names_json", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("params_json", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_key", sa.String(200), nullable=False),
        sa.Column("true_class", sa.String(200), nullable=True),
        sa.Column("predicted_class", sa.String(200), nullable=False),
        sa.Column("photo", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("campaign_id", "image_key"),
    )
    op.create_index("ix_images_campaign_id", "images", ["campaign_id"])
    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_pk", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cluster_key", sa.String(300), nullable=False),
        sa.Column("layer", sa.String(200), nullable=False),
        sa.Column("cluster_index", sa.Integer, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold_labels_json", sa.Text, nullable=False),
        sa.Column("label_count", sa.Integer, nullable=False),
        sa.Column("open_count", sa.Integer, nullable=False),
        sa.UniqueConstraint("campaign_id", "cluster_key"),
    )
    op.create_index("ix_clusters_image_pk", "clusters", ["image_pk"])
    op.create_index("ix_clusters_pick", "clusters", ["campaign_id", "is_gold", "label_count", "open_count"])
    op.create_table(
        "cluster_assets",
        sa.Column("cluster_pk", sa.Integer, sa.ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("player_id", sa.Integer, sa.ForeignKey("players.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cluster_pk", sa.Integer, sa.ForeignKey("clusters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("campaign_id", sa.Integer, sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reveal_step", sa.Integer, nullable=False),
        sa.Column("guessed_class", sa.String(200), nullable=True),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.Column("guess_points", sa.Integer, nullable=False),
        sa.Column("finish_key", sa.String(100), nullable=True),
        sa.Column("is_gold", sa.Boolean, nullable=False),
        sa.Column("gold_hit", sa.Boolean, nullable=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.UniqueConstraint("player_id", "cluster_pk", name="uq_rounds_player_cluster"),
        sa.UniqueConstraint("player_id", "finish_key", name="uq_rounds_player_finish_key"),
    )
    op.create_index("ix_rounds_cluster_pk", "rounds", ["cluster_pk"])
    op.create_index("ix_rounds_campaign_id", "rounds", ["campaign_id"])
    op.create_index("ix_rounds_player_status", "rounds", ["player_id", "status"])
    op.create_index("ix_rounds_player_finished", "rounds", ["player_id", "finished_at"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id", ondelete="CASCADE"), nullable=False),
        sa.Column("player_id", sa.Integer, sa.ForeignKey("players.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cluster_pk", sa.Integer, sa.ForeignKey("clusters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.String(200), nullable=False),
        sa.Column("norm", sa.String(200), nullable=False),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_labels_round_id", "labels", ["round_id"])
    op.create_index("ix_labels_player_id", "labels", ["player_id"])
    op.create_index("ix_labels_cluster_norm", "labels", ["cluster_pk", "norm"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("settings", "labels", "rounds", "cluster_assets", "clusters", "images", "campaigns",
                  "sessions", "players"):
        op.drop_table(table)

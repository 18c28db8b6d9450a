"""SQLAlchemy 2 models of the labelling game.

The schema is created and upgraded by the Alembic migrations in ``featurelens/game/migrations``;
these classes are the ORM view of it and must stay in step with the newest revision.

Tables
------
``players``          accounts (argon2 password hash, case-insensitive unique name)
``sessions``         server-side login sessions (only the SHA-256 of the cookie token is stored)
``campaigns``        one imported bundle: its class list and import parameters
``images``           the bundle's photos (JPEG bytes) with ``true_class`` / ``predicted_class``
``clusters``         one cluster map = one playable "map"; counters drive the assignment
``cluster_assets``   the pre-rendered reveal images (steps 0..5) and the overlay shown afterwards
``rounds``           a player's round on one map; ``UNIQUE(player_id, cluster_pk)`` = never the same map twice
``labels``           label texts of a finished round, with their normalised form and agreement points
``settings``         key/value pairs (reserved for server-wide configuration)
``login_failures``   failed log-ins per (casefolded user name, client address key): the log-in backoff
``signups``          sign-ups per client address key: the sign-up throttle
``password_resets``  admin-issued one-time reset tokens (only their SHA-256), with expiry and use time
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    """Timezone-aware current UTC time (stored as naive UTC for portability)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Player(Base):
    __tablename__ = "players"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    username_key: Mapped[str] = mapped_column(String(64), unique=True)  # casefolded, for uniqueness
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    # confusable skeleton (featurelens.game.names), unique: no look-alike names
    username_skeleton: Mapped[str | None] = mapped_column(String(200), nullable=True)
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)  # chosen UI language
    __table_args__ = (Index("ix_players_username_skeleton", "username_skeleton", unique=True),)


class Session(Base):
    __tablename__ = "sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    player: Mapped[Player] = relationship(lazy="joined")


class Campaign(Base):
    __tablename__ = "campaigns"
    __table_args__ = (Index("ix_campaigns_content_hash", "content_hash", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    class_names_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text, default="")
    params_json: Mapped[str] = mapped_column(Text, default="{}")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)  # of the bundle, unique
    seen_policy: Mapped[str] = mapped_column(String(16), default="label_only")  # label_only | skip
    agreement_rule: Mapped[str] = mapped_column(String(16), default="address")  # address | gold


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("campaign_id", "image_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    image_key: Mapped[str] = mapped_column(String(200))
    true_class: Mapped[str | None] = mapped_column(String(200), nullable=True)
    predicted_class: Mapped[str] = mapped_column(String(200))
    photo: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only when served
    photo_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # SHA-256 of photo


class Cluster(Base):
    __tablename__ = "clusters"
    __table_args__ = (
        UniqueConstraint("campaign_id", "cluster_key"),
        Index("ix_clusters_pick", "campaign_id", "is_gold", "label_count", "open_count"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    image_pk: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    cluster_key: Mapped[str] = mapped_column(String(300))  # the bundle's stable id <image>/<layer>/<k>
    layer: Mapped[str] = mapped_column(String(200))
    cluster_index: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_labels_json: Mapped[str] = mapped_column(Text, default="[]")
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    open_count: Mapped[int] = mapped_column(Integer, default=0)
    image: Mapped[Image] = relationship(lazy="joined")


class ClusterAsset(Base):
    __tablename__ = "cluster_assets"
    cluster_pk: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # "r0".."r5" or "overlay"
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("player_id", "cluster_pk", name="uq_rounds_player_cluster"),
        UniqueConstraint("player_id", "finish_key", name="uq_rounds_player_finish_key"),
        Index("ix_rounds_player_status", "player_id", "status"),
        Index("ix_rounds_player_finished", "player_id", "finished_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"))
    cluster_pk: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"), index=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | guessed | gave_up
    reveal_step: Mapped[int] = mapped_column(Integer, default=0)
    guessed_class: Mapped[str | None] = mapped_column(String(200), nullable=True)
    correct: Mapped[bool] = mapped_column(Boolean, default=False)
    guess_points: Mapped[int] = mapped_column(Integer, default=0)
    finish_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_hit: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    seen_before: Mapped[bool] = mapped_column(Boolean, default=False)  # the player had seen this photo
    client_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # hashed address of the answer
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    cluster: Mapped[Cluster] = relationship(lazy="joined")


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_cluster_norm", "cluster_pk", "norm"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), index=True)
    cluster_pk: Mapped[int] = mapped_column(ForeignKey("clusters.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(String(200))
    norm: Mapped[str] = mapped_column(String(200))
    points: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    verified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # agreed by an independent player
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)  # UI language it was typed in


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class LoginFailure(Base):
    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_key_at", "username_key", "at"),
        Index("ix_login_failures_at", "at"),
        Index("ix_login_failures_key_client_at", "username_key", "client_key", "at"),
        Index("ix_login_failures_client_at", "client_key", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username_key: Mapped[str] = mapped_column(String(200))  # casefolded name as typed (may not exist)
    at: Mapped[dt.datetime] = mapped_column(DateTime)
    client_key: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Signup(Base):
    __tablename__ = "signups"
    __table_args__ = (Index("ix_signups_client_at", "client_key", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_key: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(DateTime)


class PasswordReset(Base):
    __tablename__ = "password_resets"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    player_id: Mapped[int] = mapped_column(ForeignKey("players.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)

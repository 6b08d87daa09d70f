"""The database's tables (SQLAlchemy's declarative models); Alembic's revisions (migrations/) make them."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True, default=None)
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Per-key limits (vary.key_limits.KeyLimits): NULL takes the server's default, 0 means unlimited.
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    images_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    image_quota: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    # The content policy for this key: "off" skips the checks (a trusted internal key); NULL: the model's.
    safety: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)


class UsageRow(Base):
    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[float] = mapped_column(Float, index=True)
    key_id: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    size: Mapped[str | None] = mapped_column(String(16), nullable=True)
    response_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # Which model answered (a route's target, or the model itself) and after how many attempts.
    target: Mapped[str | None] = mapped_column(String(200), nullable=True, default=None)
    attempts: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)
    # A routed request's targets tried and the attempts on each ("a:2,b:1"), failed requests included.
    targets_tried: Mapped[str | None] = mapped_column(String(1000), nullable=True, default=None)
    # What the content checks found (which check flagged, on what, the score), for an operator's audit.
    policy: Mapped[str | None] = mapped_column(String(1000), nullable=True, default=None)
    # Images providers made (and billed) for a request that the client never got: an answer that was only
    # partly made (one of Nova's calls kept failing) ends all-or-nothing, but its paid images are counted here.
    unused_images: Mapped[int | None] = mapped_column(Integer, nullable=True, default=None)


class WriteProbeRow(Base):
    """One row, rewritten by each readiness probe: the database is ready when it takes a write."""

    __tablename__ = "write_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    written_at: Mapped[float] = mapped_column(Float)


class SecretRow(Base):
    """A secret every replica sharing the database must agree on (the URL-signing secret)."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """A job only one replica at a time may do (sweeping the image store): who holds it, and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Float)

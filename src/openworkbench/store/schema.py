"""The database schema. Changes here need a migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Always hand back aware UTC datetimes; SQLite would otherwise drop the zone."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_super_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_sign_in: Mapped[datetime | None] = mapped_column(default=None)
    # argon2id (PHC string) of the local password set with `workbench user passwd`; None: no local password.
    password_hash: Mapped[str | None] = mapped_column(String(255), default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # sha256 hex of the token; the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_used: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    cluster: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    # The job object as the client sent it (validated), for the reply and for re-launching.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    host: Mapped[str] = mapped_column(String(255), default="")
    stdout_file: Mapped[str] = mapped_column(Text, default="")
    stderr_file: Mapped[str] = mapped_column(Text, default="")
    # What the cluster backend needs to find the job again after a restart.
    cluster_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    stop_requested: Mapped[str | None] = mapped_column(String(16), default=None)
    submission_time: Mapped[datetime] = mapped_column(default=utcnow)
    last_update_time: Mapped[datetime] = mapped_column(default=utcnow)
    # When the job reached its final status (None while it is not final): what the active list, the history
    # and the output retention go by (migration 0005).
    end_time: Mapped[datetime | None] = mapped_column(default=None, index=True)
    # When the server removed the job's output files (jobs.output_retention_days); the row itself stays.
    output_purged: Mapped[datetime | None] = mapped_column(default=None)
    # When it was first seen Running (the product's runningTimestamp; terminatedTime is end_time).
    running_time: Mapped[datetime | None] = mapped_column(default=None)
    # The server process that launched it (migration 0011): a monitor on another replica leaves a Pending row
    # without cluster state alone while that process lives (its launch is under way).
    replica: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (Index("ix_jobs_user_id_end_time", "user_id", "end_time"),)


class Session(Base):
    """An IDE session: its URL, its state, and the Launcher job that runs the IDE."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    workbench: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(8))
    url: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    status_detail: Mapped[str] = mapped_column(Text, default="")
    cluster: Mapped[str] = mapped_column(String(255))
    # What the client asked for, kept to resume the session the same way.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    working_dir: Mapped[str] = mapped_column(Text)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    socket_path: Mapped[str] = mapped_column(Text)
    # "host:port" of an IDE on a cluster node, reported by its job once it runs.
    endpoint: Mapped[str | None] = mapped_column(String(300), default=None)
    state_dir: Mapped[str] = mapped_column(Text)
    # Sent by the proxy to the IDE on every request; the data dir is the operator's alone.
    secret: Mapped[str] = mapped_column(String(64))
    suspend_manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    suspend_size: Mapped[int | None] = mapped_column(Integer, default=None)
    executing: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_state_updated: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    last_used: Mapped[datetime] = mapped_column(default=utcnow)
    # The loopback port of an IDE that cannot listen on a socket (RStudio), allocated from sessions.port_range
    # on ``port_host`` while the session lives (proxy/ports.py); unique per host.
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    port_host: Mapped[str | None] = mapped_column(String(255), default=None)
    # The server process that last moved it (migration 0011): the one carrying out its start or stop. The
    # sessions leader takes over a session in flight only once that process is gone (services/leadership.py).
    replica: Mapped[str | None] = mapped_column(String(64), default=None)

    __table_args__ = (Index("ix_sessions_port_host_port", "port_host", "port", unique=True),)


class SessionTransition(Base):
    """One change of a session's state, written by ``sessions/transitions.py`` alone: when, from, to and why.
    The session's row keeps its current state and ``last_state_updated``; this is the history, read only
    to explain a session (never on the get_session path)."""

    __tablename__ = "session_transitions"
    __table_args__ = (Index("ix_session_transitions_session", "session_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(String(16), default=None)  # None: the session was created
    to_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(Text, default="")


class BrowserSession(Base):
    """A browser's sign-in: a random cookie (stored hashed) bound to the API token used to sign in, or, for a
    password sign-in, to the user (exactly one of the two is set)."""

    __tablename__ = "browser_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cookie_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Revoking the token ends the browser sign-ins made with it.
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True,
                                                 default=None)
    # A password sign-in; disabling the user ends it (as it ends every token of theirs).
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True,
                                                default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime] = mapped_column()


class AuthEpoch(Base):
    """One row whose value triggers bump on every change to who may sign in (see migration 0004)."""

    __tablename__ = "auth_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class RouteRecord(Base):
    """Where the proxy sends ``/s/<part>/`` (proxy/routes.py); written by the process that drives the session."""

    __tablename__ = "routes"

    part: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), unique=True)
    owner: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    upstream: Mapped[str | None] = mapped_column(Text, default=None)  # str(Upstream); None: not known yet
    upstream_uid: Mapped[int] = mapped_column(Integer, default=-1)  # who must serve a socket upstream
    strip_prefix: Mapped[bool] = mapped_column(Boolean)
    # Sent upstream on every request (the IDE's secret): the store is the operator's alone, as sessions.secret.
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)


class RoutesEpoch(Base):
    """One row whose value triggers bump on every change to ``routes`` (see migration 0009)."""

    __tablename__ = "routes_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)

"""The Store: engine, sessions and migrations. Database errors become StoreError here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DataError, SQLAlchemyError
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from openworkbench.errors import BadRequest, StoreError, StoreUnavailable
from openworkbench.store.availability import MESSAGE, Availability, is_unavailable

MIGRATIONS = Path(__file__).with_name("migrations")
WRITTEN = "openworkbench.written"  # Session.info key: what the open transaction has written
# Seconds a new PostgreSQL connection may take: a database host that is away without refusing (a network
# partition) must not hold a request for the system's TCP timeout (minutes). A URL's own connect_timeout wins.
CONNECT_TIMEOUT_S = 5

# Called after each commit with what it wrote: ORM objects, or a mapped class for a bulk UPDATE/DELETE.
CommitWatcher = Callable[[list[Any]], None]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run while the job monitor writes; NORMAL is durable across process crashes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    """One database, opened once per process."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.url = url
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.availability = Availability(parsed.render_as_string())
        try:
            # pre_ping: a pooled connection that died with the database (restarted, or stopped for a while) is
            # replaced before it is used, so the server recovers by itself once the database is back.
            self.engine: Engine = create_engine(url, pool_pre_ping=not self.is_sqlite,
                                                connect_args=_connect_args(parsed))
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open database {parsed.render_as_string()}: {exc}") from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._watchers: list[CommitWatcher] = []
        event.listen(self._sessions, "after_flush", _note_flushed)
        event.listen(self._sessions, "do_orm_execute", _note_bulk)
        event.listen(self._sessions, "after_commit", self._committed)
        event.listen(self._sessions, "after_rollback", lambda session: session.info.pop(WRITTEN, None))

    def watch_commits(self, watcher: CommitWatcher) -> None:
        """Have ``watcher`` told, after every successful commit, what it wrote (for in-memory caches)."""
        self._watchers.append(watcher)

    def after_flush(self, hook: Callable[[Session, list[Any]], None]) -> None:
        """Have ``hook(session, objects)`` run inside each ORM transaction after a flush, with what it wrote
        (the replicas' relay sends its NOTIFY there: delivered on commit only)."""
        event.listen(self._sessions, "after_flush",
                     lambda session, _context: hook(session, [*session.new, *session.dirty, *session.deleted]))

    def wrote(self, objects: list[Any]) -> None:
        """Tell the watchers what a committed ``transaction()`` wrote (they do not see Core writes)."""
        for watcher in self._watchers:
            watcher(objects)

    def _committed(self, session: Session) -> None:
        written = session.info.pop(WRITTEN, None)
        if written:
            for watcher in self._watchers:
                watcher(written)

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"database migration failed: {exc}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any error."""
        with _translated(self.availability), self._sessions.begin() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in a transaction, for hot paths where the ORM's unit of work costs more than the
        SQL; commits on success, rolls back on any error. Commit watchers do not see these writes."""
        with _translated(self.availability), self.engine.begin() as connection:
            yield connection

    def dispose(self) -> None:
        self.engine.dispose()


def _connect_args(parsed: URL) -> dict[str, Any]:
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return {}
    return {"connect_timeout": CONNECT_TIMEOUT_S}


@contextmanager
def _translated(availability: Availability) -> Iterator[None]:
    """Database errors become StoreError (the rollback has happened by then, inside the block); a database out
    of reach becomes StoreUnavailable (503), noted once in the log, with its return noted once too."""
    try:
        yield
    except SQLAlchemyError as exc:
        if is_unavailable(exc):
            availability.failed(exc)
            raise StoreUnavailable(MESSAGE) from None
        _raise_translated(exc)
    availability.succeeded()


def _raise_translated(exc: SQLAlchemyError) -> None:
    if isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig):
        # PostgreSQL's text cannot hold it; the API's checks refuse it first
        raise BadRequest("a text value contains a NUL byte, which the database cannot store") from None
    raise StoreError(f"database error: {type(exc).__name__}: {exc.args[0] if exc.args else ''}") from None


def _note_flushed(session: Session, _context: Any) -> None:
    session.info.setdefault(WRITTEN, []).extend([*session.new, *session.dirty, *session.deleted])


def _note_bulk(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and state.bind_mapper is not None:
        state.session.info.setdefault(WRITTEN, []).append(state.bind_mapper.class_)

"""The store on both SQLite and PostgreSQL: migrations, users, tokens, jobs."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openworkbench.auth.tokens import hash_token
from openworkbench.errors import InvalidParameter, NotFound, StoreError, Unauthenticated
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.schema import ApiToken, Base, Job, User


def test_migrations_are_idempotent_and_match_the_schema(store: Store) -> None:
    store.migrate()  # a second run changes nothing
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert diff == []
    assert version == "0011"


def test_sqlite_uses_wal(tmp_path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'w.db'}")
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
    store.dispose()


def test_tokens_are_stored_only_as_hash(store: Store) -> None:
    accounts = Accounts(store)
    token = accounts.generate_token("admin", "ci", "alice")
    assert len(token) >= 43
    with store.session() as db:
        stored = db.scalars(sa.select(ApiToken)).one()
        values = [str(v) for v in db.execute(sa.select(ApiToken.__table__)).one()]
        user = db.scalars(sa.select(User)).one()
    assert stored.token_hash == hash_token(token)
    assert token not in values
    assert (user.username, user.is_admin, user.is_super_admin) == ("alice", True, False)


def test_authenticate_revoke_and_last_used(store: Store) -> None:
    accounts = Accounts(store)
    token = accounts.generate_token("super-admin", "t", "root")
    principal = accounts.authenticate(f"Bearer {token}")
    assert (principal.username, principal.kind) == ("root", "super-admin")
    assert accounts.authenticate(f"Key {token}") == principal
    [info] = accounts.list_tokens()
    assert info.last_used is not None and info.last_used.tzinfo is not None
    accounts.revoke_token("t")
    with pytest.raises(Unauthenticated):
        accounts.authenticate(f"Bearer {token}")
    with pytest.raises(NotFound):
        accounts.revoke_token("t")


def test_disabled_user_and_demotion(store: Store) -> None:
    accounts = Accounts(store)
    token = accounts.generate_token("admin", "a", "bob")
    with store.session() as db:
        db.scalars(sa.select(User)).one().is_admin = False
    assert accounts.authenticate(f"Bearer {token}").kind == "user"  # standing caps the kind
    accounts.disable_user("bob")
    with pytest.raises(Unauthenticated, match="disabled"):
        accounts.authenticate(f"Bearer {token}")


def test_user_errors_change_nothing(store: Store) -> None:
    accounts = Accounts(store)
    accounts.add_user("carol", admin=True)
    with pytest.raises(InvalidParameter, match="already exists"):
        accounts.add_user("carol")
    with pytest.raises(InvalidParameter, match="token kind"):
        accounts.generate_token("root", "x", "dave")
    with pytest.raises(InvalidParameter, match="invalid username"):
        accounts.add_user("a/b")
    assert [u["username"] for u in accounts.list_users()] == ["carol"]


def test_job_rows_round_trip_with_utc_times(store: Store) -> None:
    user_id = Accounts(store).ensure_user("erin")
    when = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    with store.session() as db:
        db.add(Job(id="j1", user_id=user_id, cluster="Local", name="n", spec={"args": ["a", "ü"]}, status="Pending",
                   status_message="", host="", stdout_file="", stderr_file="", cluster_state={},
                   submission_time=when, last_update_time=when))
    with store.session() as db:
        job = db.get(Job, "j1")
        assert job is not None
        assert job.submission_time == when and job.spec == {"args": ["a", "ü"]}


def test_database_errors_are_translated(store: Store) -> None:
    accounts = Accounts(store)
    accounts.ensure_user("frank")
    with pytest.raises(StoreError), store.session() as db:
        db.add(User(username="frank", is_admin=False, is_super_admin=False))  # unique violation


def test_unreachable_database_is_a_store_error(tmp_path) -> None:
    store = Store("postgresql+psycopg://nobody@/nodb?host=/nonexistent")
    with pytest.raises(StoreError):
        store.migrate()


def test_no_token_for_a_disabled_user(store: Store) -> None:
    accounts = Accounts(store)
    accounts.add_user("gina")
    accounts.disable_user("gina")
    with pytest.raises(InvalidParameter, match="disabled"):
        accounts.generate_token("admin", "g", "gina")
    assert accounts.list_tokens() == [] and not accounts.list_users()[0]["isAdmin"]

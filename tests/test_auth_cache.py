"""Sign-ins and session listings served from memory, and every way they must be dropped at once.

Each case warms the cache with a few successful calls, changes access from *another process's*
connection (as the CLI or an operator's SQL would), and expects the very next request to be refused.
Both databases: SQLite (``PRAGMA data_version``) and PostgreSQL (a one-row read of the epoch per hit).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from openworkbench.services.accounts import LAST_USED_RESOLUTION, Accounts
from openworkbench.services.signin import COOKIE_NAME
from openworkbench.sessions.views import SessionViews
from openworkbench.store import Store
from openworkbench.store.schema import Session
from tests.conftest import Server, make_pg_database, sign_in_form, sign_out_form

ROUNDS = 10  # repeated, so a check that lags behind a commit would show
RACE_ROUNDS = 50


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    url = make_pg_database() if request.param == "postgresql" else ""
    server = Server(tmp_path_factory.mktemp("cache") / "data", database_url=url).start()
    yield server
    server.stop()


def sql(server: Server, statement: str, **values: object) -> None:
    """A write by an operator's own connection, outside the server and its services."""
    store = Store(server.database_url or f"sqlite:///{server.data_dir / 'workbench.db'}")
    with store.engine.begin() as conn:
        conn.execute(sa.text(statement), values)
    store.dispose()


def status(client: httpx.Client, server: Server, token: str, method: str = "get_session") -> int:
    return client.post(f"{server.url}/api/{method}", json={}, headers={"Authorization": f"Bearer {token}"}).status_code


def warm(client: httpx.Client, server: Server, token: str, method: str = "get_session") -> None:
    for _ in range(3):
        assert status(client, server, token, method) == 200


def test_revoking_by_another_process_refuses_the_next_request(srv: Server) -> None:
    accounts = srv.accounts()
    with httpx.Client() as client:
        for _ in range(ROUNDS):
            name = f"c-{secrets.token_hex(4)}"
            token = accounts.generate_token("user", name, "cacheuser")
            warm(client, srv, token)
            accounts.revoke_token(name)
            assert status(client, srv, token) == 401


def test_an_operators_sql_delete_refuses_the_next_request(srv: Server) -> None:
    name = f"c-{secrets.token_hex(4)}"
    token = srv.accounts().generate_token("user", name, "cacheuser")
    with httpx.Client() as client:
        warm(client, srv, token)
        sql(srv, "DELETE FROM api_tokens WHERE name = :name", name=name)
        assert status(client, srv, token) == 401


def test_demoting_and_disabling_take_effect_on_the_next_request(srv: Server) -> None:
    username = f"demo{secrets.token_hex(3)}"
    token = srv.token(username, "admin")
    with httpx.Client() as client:
        warm(client, srv, token, "get_users")
        sql(srv, "UPDATE users SET is_admin = false WHERE username = :u", u=username)
        assert status(client, srv, token, "get_users") == 403  # the standing caps the token at once
        warm(client, srv, token)
        sql(srv, "UPDATE users SET disabled = true WHERE username = :u", u=username)
        assert status(client, srv, token) == 401


def test_signing_out_and_deleting_a_cookie_refuse_the_next_request(srv: Server) -> None:
    token = srv.token(f"ck{secrets.token_hex(3)}")
    for end in ("sign-out", "sql"):
        with httpx.Client(base_url=srv.url) as client:
            assert sign_in_form(client, token).status_code in (200, 302, 303)
            for _ in range(3):  # signed in: an unknown session is a 404, not a 401
                assert client.get("/s/00000nope/").status_code == 404
            cookie = client.cookies[COOKIE_NAME]
            if end == "sign-out":
                assert sign_out_form(client).status_code in (200, 302, 303)
                client.cookies.set(COOKIE_NAME, cookie)  # a browser that kept it anyway
            else:
                sql(srv, "DELETE FROM browser_sessions")
            assert client.get("/s/00000nope/").status_code == 401


def test_last_use_is_still_recorded_while_cached(srv: Server) -> None:
    """A token in steady use keeps its last use current: the cache lets the store record it again once the
    recorded value is older than LAST_USED_RESOLUTION (5 s), however many hits came from memory meanwhile."""
    name = f"lu-{secrets.token_hex(4)}"
    accounts = srv.accounts()
    token = accounts.generate_token("user", name, "cacheuser")

    def last_used() -> datetime | None:
        return {t.name: t for t in accounts.list_tokens()}[name].last_used  # a read: the cache stays warm

    with httpx.Client() as client:
        warm(client, srv, token)
        first = last_used()
        assert first is not None
        deadline = time.monotonic() + 60  # the resolution is 5 s; the rest is for a loaded machine
        while (latest := last_used()) == first:
            assert time.monotonic() < deadline, "last_used never advanced while the token was in use"
            assert status(client, srv, token) == 200
            time.sleep(0.2)
    assert latest is not None and (latest - first).total_seconds() >= LAST_USED_RESOLUTION.total_seconds()


def test_a_revocation_by_sql_is_never_beaten_by_the_next_request(srv: Server) -> None:
    """The race PostgreSQL's LISTEN/NOTIFY lost under load: the operator's COMMIT returns, the request goes
    out at once. Every round must be refused; before, a NOTIFY arriving late let some through with 200."""
    accounts = srv.accounts()
    operator = Store(srv.database_url or f"sqlite:///{srv.data_dir / 'workbench.db'}")
    served = []
    try:
        with httpx.Client() as client:
            for round_ in range(RACE_ROUNDS):
                name = f"race-{secrets.token_hex(4)}"
                token = accounts.generate_token("user", name, "cacheuser")
                warm(client, srv, token)
                with operator.engine.begin() as conn:
                    conn.execute(sa.text("DELETE FROM api_tokens WHERE name = :name"), {"name": name})
                if status(client, srv, token) != 401:
                    served.append(round_)
    finally:
        operator.dispose()
    assert served == [], f"a revoked token was served in rounds {served} of {RACE_ROUNDS}"


READING_EPOCH = "FROM pg_stat_activity WHERE query LIKE 'SELECT (SELECT value FROM auth_epoch%'"  # epoch reads
EPOCH_READERS = f"SELECT pg_terminate_backend(pid) {READING_EPOCH}"


def test_a_broken_epoch_connection_never_serves_a_revoked_token(tmp_path: Path) -> None:
    """PostgreSQL only: the connections that read the epoch are killed; the server asks the store instead
    (no error to the client), connects again, and never answers a revoked token from memory."""
    server = Server(tmp_path / "data", database_url=make_pg_database()).start()
    try:
        accounts = server.accounts()
        with httpx.Client() as client:
            name = f"c-{secrets.token_hex(4)}"
            token = accounts.generate_token("user", name, "cacheuser")
            warm(client, server, token)
            sql(server, EPOCH_READERS)
            assert status(client, server, token) == 200  # a broken connection: looked up in the store
            warm(client, server, token)
            sql(server, EPOCH_READERS)
            accounts.revoke_token(name)
            assert status(client, server, token) == 401
            other = accounts.generate_token("user", f"c-{secrets.token_hex(4)}", "cacheuser")
            warm(client, server, other)  # and sign-ins keep working on a new connection
        store = Store(server.database_url)
        with store.engine.connect() as conn:
            readers = conn.scalar(sa.text(f"SELECT count(*) {READING_EPOCH}"))
        store.dispose()
        assert readers, "the server did not connect again to read the epoch"
    finally:
        server.stop()


# -- the triggers, directly: every change to who may do what bumps the epoch ----------------------------------

# Each statement runs against fresh rows: :user (with :token and its browser sign-in) and :lone (a user with no
# token, whose id may change without a foreign key in the way).
BUMPING = [
    "DELETE FROM api_tokens WHERE id = :token",
    "UPDATE api_tokens SET kind = 'admin' WHERE id = :token",
    "UPDATE api_tokens SET token_hash = 'x' || substr(token_hash, 2) WHERE id = :token",
    "UPDATE api_tokens SET user_id = :lone WHERE id = :token",
    "UPDATE api_tokens SET id = id + 100000 WHERE id = :unused_token",
    "DELETE FROM users WHERE id = :user",
    "UPDATE users SET username = username || 'x' WHERE id = :user",
    "UPDATE users SET is_admin = true WHERE id = :user",
    "UPDATE users SET is_super_admin = true WHERE id = :user",
    "UPDATE users SET disabled = true WHERE id = :user",
    "UPDATE users SET id = id + 100000 WHERE id = :lone",
    "DELETE FROM browser_sessions WHERE token_id = :token",
    "UPDATE browser_sessions SET cookie_hash = 'x' || substr(cookie_hash, 2) WHERE token_id = :token",
    "UPDATE browser_sessions SET token_id = :unused_token WHERE token_id = :token",
    "UPDATE browser_sessions SET expires = created WHERE token_id = :token",
]
POSTGRES_BUMPING = ["TRUNCATE api_tokens CASCADE", "TRUNCATE users CASCADE", "TRUNCATE browser_sessions"]
NOT_BUMPING = [  # the last-use bookkeeping every sign-in writes
    "UPDATE api_tokens SET last_used = created WHERE id = :token",
    "UPDATE users SET last_sign_in = created WHERE id = :user",
]


def _fresh_rows(store: Store) -> dict[str, int]:
    accounts = Accounts(store)
    tag = secrets.token_hex(4)
    accounts.generate_token("user", f"t-{tag}", f"u{tag}")
    accounts.generate_token("user", f"t2-{tag}", f"u{tag}")
    accounts.ensure_user(f"lone{tag}")
    with store.engine.begin() as conn:
        ids = {
            "user": conn.scalar(sa.text("SELECT id FROM users WHERE username = :u"), {"u": f"u{tag}"}),
            "lone": conn.scalar(sa.text("SELECT id FROM users WHERE username = :u"), {"u": f"lone{tag}"}),
            "token": conn.scalar(sa.text("SELECT id FROM api_tokens WHERE name = :n"), {"n": f"t-{tag}"}),
            "unused_token": conn.scalar(sa.text("SELECT id FROM api_tokens WHERE name = :n"), {"n": f"t2-{tag}"}),
        }
        conn.execute(sa.text("INSERT INTO browser_sessions (cookie_hash, token_id, created, expires) "
                             "VALUES (:h, :t, :now, :now)"),
                     {"h": secrets.token_hex(32), "t": ids["token"], "now": datetime.now(UTC)})
    return ids


def _epoch_after(store: Store, statement: str) -> tuple[int, int]:
    ids = _fresh_rows(store)
    with store.engine.begin() as conn:
        before = conn.scalar(sa.text("SELECT value FROM auth_epoch"))
        result = conn.execute(sa.text(statement), {k: v for k, v in ids.items() if f":{k}" in statement})
        assert statement.startswith("TRUNCATE") or result.rowcount == 1, f"{statement} changed no row"
    with store.engine.connect() as conn:
        return before, conn.scalar(sa.text("SELECT value FROM auth_epoch"))


def test_every_change_to_who_may_do_what_bumps_the_epoch(store: Store) -> None:
    bumping = BUMPING + (POSTGRES_BUMPING if not store.is_sqlite else [])
    missed = [statement for statement in bumping if len(set(_epoch_after(store, statement))) == 1]
    assert missed == [], f"these changes leave cached sign-ins in place: {missed}"
    bumped = [statement for statement in NOT_BUMPING if len(set(_epoch_after(store, statement))) == 2]
    assert bumped == [], f"these writes needlessly empty the cache: {bumped}"


# -- the session listing cache, directly ------------------------------------------------------------------


def test_a_fill_racing_a_commit_is_not_kept(tmp_path: Path) -> None:
    views = SessionViews()
    row = Session(id="abcd1234", user_id=1, workbench="JupyterLab", name="n", project_id="p", url="/s/x/",
                  state="running", status_detail="", cluster="Local", request={}, working_dir="/",
                  socket_path="/s", state_dir="/d", secret="s", suspend_manifest={}, executing=False)
    row.created = row.last_state_updated = row.last_used = datetime.now(UTC)
    before = views.generation()
    views.written([row])  # a commit lands while the reader was reading
    views.fill("u", [(row, "u")], whole=True, generation=before)
    assert views.listing("u", None) is None
    views.fill("u", [(row, "u")], whole=True, generation=views.generation())
    listed = views.listing("u", None)
    assert listed is not None and [view.data["id"] for view in listed] == ["abcd1234"]
    assert views.listing("someone-else", ["abcd1234"]) == []  # another user's id is left out
    row.state = "finished"
    views.written([row])
    assert views.listing("u", None) is None  # dropped: the next read goes to the store
    views.fill("u", [(row, "u")], whole=True, generation=views.generation())
    views.written([Session])  # a bulk UPDATE: everything goes
    assert views.listing("u", ["abcd1234"]) is None

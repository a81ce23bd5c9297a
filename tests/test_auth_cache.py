"""Sign-ins and session listings served from memory, and every way they must be dropped at once.

Each case warms the cache with a few successful calls, changes access from *another process's*
connection (as the CLI or an operator's SQL would), and expects the very next request to be refused.
Both databases: SQLite (``PRAGMA data_version``) and PostgreSQL (LISTEN/NOTIFY).
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

from openworkbench.services.accounts import LAST_USED_RESOLUTION
from openworkbench.services.session_views import SessionViews
from openworkbench.services.signin import COOKIE_NAME
from openworkbench.store import Store
from openworkbench.store.schema import Session
from tests.conftest import Server, make_pg_database, sign_in_form, sign_out_form

ROUNDS = 10  # repeated, so a listener that lags behind a commit would show


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


def test_a_lost_listener_connection_never_serves_a_revoked_token(tmp_path: Path) -> None:
    """PostgreSQL only: the listener's connection is killed, then a token revoked meanwhile."""
    server = Server(tmp_path / "data", database_url=make_pg_database()).start()
    try:
        accounts = server.accounts()
        with httpx.Client() as client:
            name = f"c-{secrets.token_hex(4)}"
            token = accounts.generate_token("user", name, "cacheuser")
            warm(client, server, token)
            sql(server, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
            accounts.revoke_token(name)
            assert status(client, server, token) == 401
            other = accounts.generate_token("user", f"c-{secrets.token_hex(4)}", "cacheuser")
            warm(client, server, other)  # and sign-ins keep working without the listener
    finally:
        server.stop()


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

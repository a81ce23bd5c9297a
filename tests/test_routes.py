"""Routes in the store (proxy/routes.py) and IDE ports allocated in it (proxy/ports.py), on both databases.

- The RouteTable: add / get / remove, the per-process cache and its invalidation by the routes epoch, seen from a
  second table on its own connections.
- Across processes: a route cached by a real server is refused by its very next request once another process
  removes it, and a session started by one server is proxied, then refused, by a second server on the same
  PostgreSQL store (SQLite: one server, the test process writing).
- Ports: concurrent allocations on separate engines never share a port, a port something else listens on is
  skipped, the range runs out with a clear error, and ended sessions give theirs back. End to end, RStudio
  sessions (a stand-in rserver) get distinct ports of ``sessions.port_range`` and are proxied through them.
"""

from __future__ import annotations

import contextlib
import pwd
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from openworkbench.errors import InvalidState, NotAvailable, NotFound
from openworkbench.proxy import NOWHERE, ProxyTarget, Route, RouteTable, Upstream
from openworkbench.proxy.ports import PortAllocator, _bindable
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.epochs import open_epochs
from openworkbench.store.schema import Session
from tests.conftest import Server
from tests.sessions_helpers import launch, session_config, wait_state

LIVE = ("launching", "running")
FAKE_IDE = Path(__file__).with_name("fake_ide.py")
FAKE_RSERVER = r'''#!/usr/bin/python3
"""A stand-in rserver: answers every GET on 127.0.0.1:--www-port with the port it was given."""
import http.server, sys
FLAGS = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args): pass
    def do_GET(self):
        body = FLAGS["www-port"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(FLAGS["www-port"])), Handler).serve_forever()
'''


def _table(url: str) -> RouteTable:
    """A RouteTable on its own engine and epoch connection, as another process has."""
    return RouteTable(Store(url), open_epochs(url).counter(1))


def _sessions(store: Store, count: int, state: str = "launching") -> list[str]:
    owner_id = Accounts(store).ensure_user("alice")
    ids = [secrets.token_hex(4) for _ in range(count)]
    with store.session() as db:
        for session_id in ids:
            db.add(Session(id=session_id, user_id=owner_id, workbench="RStudio", name="s", project_id="p",
                           url=f"/s/part{session_id}/", state=state, status_detail="", cluster="Local", request={},
                           working_dir="/tmp", socket_path=f"/tmp/{session_id}.sock", state_dir="/tmp/x",
                           secret="secret", suspend_manifest={}, executing=False))
    return ids


def _route(session_id: str, state: str = "running", upstream: Upstream = NOWHERE) -> Route:
    target = ProxyTarget(upstream, f"/s/part{session_id}/", False, {"Authorization": "token t"}, session_id)
    return Route(session_id, "alice", state, target)


def _epoch(store: Store) -> int:
    with store.session() as db:
        return int(db.scalar(sa.text("SELECT value FROM routes_epoch WHERE id = 1")))


# -- the table ---------------------------------------------------------------------------------------------------

def test_route_table_add_get_remove_and_invalidation(store: Store, database_url: str) -> None:
    [sid] = _sessions(store, 1)
    writer, reader = _table(database_url), _table(database_url)
    part = f"part{sid}"
    assert reader.get(part) is None and reader.known_target(part, "alice") is None
    writer.add(_route(sid, upstream=Upstream.unix("/run/x.sock", 1234)))
    got = reader.get(part)
    assert got == _route(sid, upstream=Upstream.unix("/run/x.sock", 1234))
    assert reader.known_target(part, "alice") == (sid, got.target)  # now from memory
    # Only the owner of a running session passes; another user is told what a URL of no session gets.
    with pytest.raises(NotFound, match=f"no session at /s/{part}/"):
        reader.target(part, "mallory")
    before = _epoch(store)
    writer.add(_route(sid, upstream=Upstream.unix("/run/x.sock", 1234)))  # unchanged: nothing written
    assert _epoch(store) == before and reader.cached(part) is got
    writer.add(_route(sid, "suspended", Upstream.tcp("node1", 4321)))  # by another table: the cache drops it
    assert _epoch(store) > before and reader.cached(part) is None
    with pytest.raises(InvalidState, match="the session is suspended"):
        reader.target(part, "alice")
    assert reader.get(part) == _route(sid, "suspended", Upstream.tcp("node1", 4321))
    writer.remove(part)
    assert reader.known_target(part, "alice") is None and reader.get(part) is None
    with pytest.raises(NotFound):
        reader.target(part, "alice")
    assert reader.get("bad\x00part") is None  # refused before it reaches the store
    # An operator's SQL counts too: the trigger bumps the epoch whoever writes.
    writer.add(_route(sid))
    assert reader.get(part) is not None
    with store.session() as db:
        db.execute(sa.text("UPDATE routes SET state = 'failed'"))
    assert reader.cached(part) is None and reader.get(part).state == "failed"  # type: ignore[union-attr]
    for table in (writer, reader):
        table.close()
        table.store.dispose()


def test_one_epoch_read_serves_the_sign_in_and_the_route_check(store: Store, database_url: str) -> None:
    """A request's route check takes the sign-in check's epoch read when it began after the request came in
    (one round trip for both); a write committed before a request came in is always seen by it."""
    [sid] = _sessions(store, 1)
    writer, epochs = _table(database_url), open_epochs(database_url)
    auth, routes = epochs.counter(0), epochs.counter(1)
    came_in = time.perf_counter()
    assert auth.current() is not None  # the sign-in check: reads both counters
    before = routes.current_since(came_in)
    writer.add(_route(sid))  # commits after the request came in: it may or may not see it
    assert routes.current_since(came_in) == before  # the shared read, no new one
    later = time.perf_counter()
    assert routes.current_since(later) == _epoch(store) > before  # came in after the commit: sees it
    epochs.close()
    writer.close()
    writer.store.dispose()


# -- across processes ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _ide_dir() -> Iterator[Path]:
    """Stand-in IDEs where the session's user can run them (pytest's dirs are not readable to it)."""
    where = Path("/tmp") / f"owb-routes-ide-{secrets.token_hex(4)}"
    where.mkdir(mode=0o755)
    shutil.copy(FAKE_IDE, where / "fake_ide.py")
    (where / "fake_rserver.py").write_text(FAKE_RSERVER)
    for exe in where.iterdir():
        exe.chmod(0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def _servers(tmp_path: Path, database_url: str, count: int, extra: str) -> Iterator[list[Server]]:
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    servers = [Server(tmp_path / f"data{n}", database_url=database_url, config_text=session_config(runtime, extra))
               for n in range(count)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def test_routes_cross_processes(tmp_path: Path, database_url: str, posix_user: pwd.struct_passwd) -> None:
    """PostgreSQL: server A starts the session, B (which never drove it) proxies it from its cached route, and
    both refuse it at once when another process removes the route or A stops the session. SQLite: one server
    (a store of one server), the route removed by the test process."""
    postgres = database_url.startswith("postgresql")
    with _ide_dir() as ides, _servers(tmp_path, database_url, 2 if postgres else 1,
                                      f'[ides."Jupyter Notebook"]\nexe = "{ides}/fake_ide.py"\n') as servers:
        driver, other = servers[0], servers[-1]
        token = driver.token(posix_user.pw_name)
        started = launch(driver, token, "Jupyter Notebook")
        wait_state(driver, token, started["id"], ("running",))
        auth = {"Authorization": f"Bearer {token}"}
        status = f"{started['url']}api/status"
        for _ in range(2):  # the second answer comes from B's cached route
            assert other.client.get(other.url + status, headers=auth).status_code == 200
        part = started["url"].split("/")[2]
        # Those requests were activity: a replica that does not watch sessions writes it to the session's row
        # within 0.5 s, and the row's route with it (a route follows its row). Removed before that write, the
        # route would be put back by it; the removal stands for a process that ends a route for good.
        time.sleep(1.5)
        table = _table(database_url)
        table.remove(part)  # another process: no server is told, each finds out by its next request
        for server in servers:
            gone = server.client.get(server.url + status, headers=auth)
            assert gone.status_code == 404 and gone.json()["error"]["message"] == f"no session at /s/{part}/"
        driver.rpc("stop_session", token, session_ids=started["id"])  # A writes the route again as it stops
        wait_state(driver, token, started["id"], ("finished", "killed"))
        refused = other.client.get(other.url + status, headers=auth)
        assert refused.status_code == 503 and refused.json()["error"]["message"].startswith("the session is ")
        table.close()
        table.store.dispose()


# -- ports ------------------------------------------------------------------------------------------------------

def _range(size: int) -> tuple[int, int]:
    """A range below the kernel's ephemeral ports (no outgoing connection takes them), free right now."""
    while True:
        low = 21000 + secrets.randbelow(8000)
        if all(_bindable(port) for port in range(low, low + size)):
            return low, low + size - 1


def test_ports_unique_under_concurrent_launches(store: Store, database_url: str) -> None:
    count = 10
    low, high = _range(count)
    ids = _sessions(store, count + 1)
    barrier = threading.Barrier(count)
    got: dict[str, int] = {}
    errors: list[BaseException] = []

    def allocate(session_id: str) -> None:
        allocator = PortAllocator(Store(database_url), low, high, LIVE, host="hostA")  # an engine of its own
        try:
            barrier.wait(timeout=60)
            got[session_id] = allocator.allocate(session_id)
        except BaseException as exc:
            errors.append(exc)
        finally:
            allocator.store.dispose()

    threads = [threading.Thread(target=allocate, args=(sid,)) for sid in ids[:count]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(got.values()) == list(range(low, high + 1))  # every port once: the whole range, no repeat
    allocator = PortAllocator(store, low, high, LIVE, host="hostA")
    with pytest.raises(NotAvailable, match=f"no free port in sessions.port_range {low}-{high}"):
        allocator.allocate(ids[count])
    # The database itself refuses a second holder of a port on one host; another host may hold the same port.
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.update(Session).where(Session.id == ids[count]).values(port=low, port_host="hostA"))
    assert PortAllocator(store, low, low, LIVE, host="hostB").allocate(ids[count]) == low
    allocator.release(ids[0])  # its session ended: the port is free again
    freed = got[ids[0]]
    assert PortAllocator(store, freed, freed, LIVE, host="hostA").allocate(ids[count]) == freed
    with store.session() as db:  # a session that ended without giving its port back (its server died)
        row = db.get(Session, ids[1])
        assert row is not None
        row.state = "failed"
    lost = got[ids[1]]
    assert PortAllocator(store, lost, lost, LIVE, host="hostA").allocate(ids[0]) == lost
    with socket.socket() as busy:  # something else listens on a port of the range: it is passed over
        busy.bind(("127.0.0.1", lost))
        busy.listen()
        allocator.release(ids[0])
        with pytest.raises(NotAvailable, match="the others are in use"):
            PortAllocator(store, lost, lost, LIVE, host="hostA").allocate(ids[0])


def test_rstudio_sessions_get_ports_of_the_range(tmp_path: Path, posix_user: pwd.struct_passwd) -> None:
    """Two RStudio sessions (a stand-in rserver) launched at once listen on distinct ports of sessions.port_range,
    are proxied there, and give their ports back when they end."""
    low, high = _range(4)
    with _ide_dir() as ides:
        extra = f'port_range = [{low}, {high}]\n[ides.RStudio]\nexe = "{ides}/fake_rserver.py"\n'
        with _servers(tmp_path, "", 1, extra) as [server]:
            token = server.token(posix_user.pw_name)
            started = [launch(server, token, "RStudio", name=f"r{n}") for n in range(2)]
            ports = set()
            for one in started:
                wait_state(server, token, one["id"], ("running",))
                answer = server.client.get(server.url + one["url"], headers={"Authorization": f"Bearer {token}"})
                assert answer.status_code == 200
                ports.add(int(answer.text))
            assert len(ports) == 2 and ports <= set(range(low, high + 1))
            server.rpc("stop_session", token, session_ids=",".join(one["id"] for one in started))
            for one in started:
                wait_state(server, token, one["id"], ("finished", "killed"))
            with server.accounts().store.session() as db:
                held = db.scalars(sa.select(Session.port).where(Session.id.in_([one["id"] for one in started])))
                assert list(held) == [None, None]

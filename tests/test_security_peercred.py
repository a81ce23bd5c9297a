"""Issue 9, attack 2: the proxy (root) as a confused deputy of the user whose socket path it connects to.

Done for real: a root server, two real POSIX users (alice attacks, bob is the victim), real JupyterLab
sessions, the swap done in alice's own socket directory. Alice's IDE process itself is hers to subvert: a
``sitecustomize.py`` on the PYTHONPATH she passes in ``environment`` runs first in it (and in the port picker
of a Slurm session), which makes the start-up attacks deterministic.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from openworkbench.clusters.slurm.info import ClusterInfo, endpoint_host_refusal
from openworkbench.clusters.slurm.parse import Node
from openworkbench.errors import UpstreamRefused
from openworkbench.safefs.sockets import REFUSED
from openworkbench.sessions.files import read_endpoint
from tests.conftest import Server, temporary_posix_user
from tests.sessions_helpers import kernel_round_trip, launch, session, session_server, wait_state

SLURM_CONF = os.environ.get("WORKBENCH_TEST_SLURM_CONF", "")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs a root server and two POSIX users"),
    pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(), reason="IDEs not installed"),
]
needs_slurm = pytest.mark.skipif(not SLURM_CONF, reason="no test Slurm cluster: run the suite with `make test`")

# Runs first in every Python process of alice's session (PYTHONPATH); acts as OWB_EVIL_PLAN says.
EVIL_SITE = r'''
import os, re
def _argv(pid="self"):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")]
plan, me = os.environ.get("OWB_EVIL_PLAN", ""), _argv()
kind, _, arg = plan.partition(":")
sock = [a.split("=", 1)[1] for a in me if a.startswith("--ServerApp.sock=")]
if kind == "socket" and sock:  # the IDE: put a symlink where it should listen, and never listen
    os.symlink(arg, sock[0])
    os.execv("/bin/sleep", ["sleep", "600"])
if kind.startswith("endpoint") and any("getsockname" in a for a in me):  # a Slurm session's port picker
    endpoint = re.search(r"mv \S+ (\S+/endpoint)", " ".join(_argv(os.getppid()))).group(1)
    if kind == "endpoint-symlink":
        os.symlink(arg, endpoint)
    elif kind == "endpoint-fifo":
        os.mkfifo(endpoint)
    else:
        with open(endpoint, "w") as f:
            f.write(arg + "\n")
    os.execv("/bin/sleep", ["sleep", "600"])  # holds the wrapper's $(...): the real report never comes
'''


@dataclass
class Listener:
    """A Unix or TCP listener standing in for a service the user must not reach; counts connections."""

    sock: socket.socket
    reply: bytes
    connections: int = 0
    received: list[bytes] = field(default_factory=list)

    def serve(self) -> Listener:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(self.reply)
                except OSError:
                    pass


def unix_listener(path: Path, reply: bytes) -> Listener:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen()
    return Listener(sock, reply).serve()


def http_reply(text: str) -> bytes:
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(text)}\r\nConnection: close\r\n\r\n{text}".encode()


def as_user(user: pwd.struct_passwd, *argv: str) -> None:
    """Do what the user herself can do, with her rights only."""
    subprocess.run(list(argv), user=user.pw_uid, group=user.pw_gid, extra_groups=[], check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def alice() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owba") as user:
        yield user


@pytest.fixture(scope="module")
def bob() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owbb") as user:
        yield user


@pytest.fixture(scope="module")
def evil_site() -> Iterator[Path]:
    where = Path("/tmp") / f"owb-evil-{secrets.token_hex(4)}"
    where.mkdir(mode=0o755)
    (where / "sitecustomize.py").write_text(EVIL_SITE)
    os.chmod(where / "sitecustomize.py", 0o644)
    yield where
    shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with session_server(tmp_path_factory.mktemp("peercred") / "data") as server:
        yield server


@dataclass
class Running:
    token: str
    id: str
    url: str
    socket: Path


def running_lab(srv: Server, user: pwd.struct_passwd) -> Running:
    token = srv.token(user.pw_name)
    started = launch(srv, token, "JupyterLab")
    wait_state(srv, token, started["id"], ("running",))
    runtime = next(line for line in srv.config_text.splitlines() if line.startswith("runtime_dir")).split('"')[1]
    return Running(token, started["id"], srv.url + started["url"], Path(runtime) / str(user.pw_uid) /
                   f"{started['id']}.sock")


@pytest.fixture(scope="module")
def bobs(srv: Server, bob: pwd.struct_passwd) -> Running:
    return running_lab(srv, bob)


def refused_json(response: httpx.Response) -> None:
    assert response.status_code == 502, response.text
    assert response.json() == {"error": {"code": 502, "message": REFUSED}}


def bobs_lab_works(srv: Server, bobs: Running) -> None:
    status = httpx.get(bobs.url + "api/status", headers={"Authorization": f"Bearer {bobs.token}"}, timeout=30)
    assert status.status_code == 200 and "started" in status.json()
    assert kernel_round_trip(bobs.url, bobs.token, "6*7") == "42"


def test_a_swapped_socket_is_refused_and_nothing_behind_it_is_reached(
    srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, bobs: Running, tmp_path: Path
) -> None:
    mine = running_lab(srv, alice)
    # No request of alice's has gone through the proxy yet: every one below opens a new (checked) connection.
    aside = mine.socket.with_name(mine.socket.name + ".real")
    as_user(alice, "/bin/mv", str(mine.socket), str(aside))
    headers = {"Authorization": f"Bearer {mine.token}"}

    def attempt(path: str = "api/contents") -> httpx.Response:
        return httpx.get(mine.url + path, headers=headers, timeout=30)

    # 1. A symlink to bob's IDE socket (its path is in `ps`).
    as_user(alice, "/bin/ln", "-s", str(bobs.socket), str(mine.socket))
    response = attempt()
    refused_json(response)
    assert bob.pw_name not in response.text
    as_user(alice, "/bin/rm", str(mine.socket))

    # 2. A symlink to a root-only listening socket (a docker.sock): not even a connection reaches it.
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    docker = unix_listener(private / "docker.sock", http_reply("ROOT-ONLY"))
    as_user(alice, "/bin/ln", "-s", str(private / "docker.sock"), str(mine.socket))
    refused_json(attempt())
    assert docker.connections == 0
    as_user(alice, "/bin/rm", str(mine.socket))

    # 3. A socket file that is alice's at the path, but served by bob's process (root chowns and moves
    #    the inode: the stand-in for a listening socket handed over between colluding users).
    shared = Path(tempfile.mkdtemp(prefix="owb-shared-", dir="/tmp"))  # bob must reach it: not under tmp_path
    os.chmod(shared, 0o777)
    served = shared / "bob.sock"
    bobs_server = subprocess.Popen(
        ["/usr/bin/python3", "-c", LISTEN_AS_USER, str(served)], user=bob.pw_uid, group=bob.pw_gid,
        extra_groups=[], stdout=subprocess.PIPE, text=True,
    )
    try:
        assert bobs_server.stdout is not None and bobs_server.stdout.readline().strip() == "listening"
        os.chown(served, alice.pw_uid, alice.pw_gid)
        os.rename(served, mine.socket)
        assert os.stat(mine.socket).st_uid == alice.pw_uid and stat.S_ISSOCK(os.stat(mine.socket).st_mode)
        response = attempt()
        refused_json(response)
        assert "BOB-ONLY" not in response.text
    finally:
        bobs_server.kill()
        bobs_server.wait()
        shutil.rmtree(shared, ignore_errors=True)
    received = bobs_server.stdout.read()
    assert "GET" not in received  # it was connected to (that is how its uid was learnt), never sent a byte
    as_user(alice, "/bin/rm", str(mine.socket))

    # The refusals are logged with the session, the uid expected and the one found.
    log = srv.log()
    assert f"proxy refused session {mine.id}" in log
    assert f"expected uid {alice.pw_uid}, found uid {bob.pw_uid}" in log
    assert f"{mine.socket} is a symbolic link; expected uid {alice.pw_uid}, found no socket" in log

    # Her own IDE back in place: served again (what was refused was the swap, not the session).
    as_user(alice, "/bin/mv", str(aside), str(mine.socket))
    assert attempt("api/status").status_code == 200
    bobs_lab_works(srv, bobs)
    srv.rpc("stop_session", mine.token, session_ids=mine.id)


LISTEN_AS_USER = r'''
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen()
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    conn.settimeout(2)
    try:
        data = conn.recv(65536)
        print(data.decode(errors="replace"), flush=True)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nBOB-ONLY")
    except OSError:
        pass
    conn.close()
'''


def test_a_websocket_handshake_to_a_swapped_socket_is_refused(
    srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, bobs: Running
) -> None:
    mine = running_lab(srv, alice)
    as_user(alice, "/bin/mv", str(mine.socket), str(mine.socket) + ".real")
    as_user(alice, "/bin/ln", "-s", str(bobs.socket), str(mine.socket))
    url = mine.url.replace("http://", "ws://") + "api/events/subscribe"
    headers = {"Authorization": f"Bearer {mine.token}"}
    with pytest.raises(InvalidStatus) as refused, connect(url, additional_headers=headers, open_timeout=30):
        pass
    assert refused.value.response.status_code == 502
    assert REFUSED.encode() in refused.value.response.body
    as_user(alice, "/bin/rm", str(mine.socket))
    as_user(alice, "/bin/mv", str(mine.socket) + ".real", str(mine.socket))
    with connect(url, additional_headers=headers, open_timeout=30):
        pass  # her own IDE: the handshake goes through again
    bobs_lab_works(srv, bobs)
    srv.rpc("stop_session", mine.token, session_ids=mine.id)


def test_the_readiness_probe_refuses_a_swapped_socket_at_start_up(
    srv: Server, alice: pwd.struct_passwd, bobs: Running, evil_site: Path
) -> None:
    token = srv.token(alice.pw_name)
    env = {"PYTHONPATH": str(evil_site), "OWB_EVIL_PLAN": f"socket:{bobs.socket}"}
    started = launch(srv, token, "JupyterLab", environment=env)
    failed = wait_state(srv, token, started["id"], ("failed",), timeout=90)
    assert failed["status_detail"] == REFUSED
    assert f"session {started['id']}: readiness probe refused" in srv.log()
    assert not session(srv, token, started["id"])["running"]
    bobs_lab_works(srv, bobs)


# -- the Slurm endpoint report -------------------------------------------------------------------------------


def test_read_endpoint_checks_the_file_itself(tmp_path: Path, alice: pwd.struct_passwd) -> None:
    uid = alice.pw_uid
    good = tmp_path / "good"
    good.write_text("node1 41234\n")
    os.chown(good, uid, alice.pw_gid)
    assert read_endpoint(str(good), uid, str(tmp_path)) == ("node1", 41234)
    assert read_endpoint(str(tmp_path / "absent"), uid, str(tmp_path)) is None

    link = tmp_path / "link"
    link.symlink_to(good)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chown(fifo, uid, alice.pw_gid)
    big = tmp_path / "big"
    big.write_text("node1 " + "1" * 4096)
    os.chown(big, uid, alice.pw_gid)
    foreign = tmp_path / "foreign"
    foreign.write_text("node1 41234\n")  # root's, not alice's
    cases = {link: "is a symbolic link", fifo: "is not a regular file", big: "does not hold 'host port'",
             foreign: f"not to uid {uid}"}
    for path, why in cases.items():
        outcome: list[BaseException] = []
        reader = threading.Thread(target=_capture, args=(outcome, path, uid), daemon=True)
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), f"reading {path.name} blocked the thread"
        assert len(outcome) == 1 and isinstance(outcome[0], UpstreamRefused), outcome
        assert why in outcome[0].message and str(path) in outcome[0].message


def _capture(outcome: list[BaseException], path: Path, uid: int) -> None:
    try:
        read_endpoint(str(path), uid, str(path.parent))
    except BaseException as exc:
        outcome.append(exc)


def test_an_endpoint_host_must_be_the_jobs_node() -> None:
    info = ClusterInfo((), (Node("node1", 4, 1000, (), ("main",)), Node("node2", 4, 1000, (), ("main",))))
    assert endpoint_host_refusal("node1", info, "node1") is None
    assert endpoint_host_refusal("NODE1", info, "") is None  # host names are case-insensitive
    assert "not a node of the cluster" in (endpoint_host_refusal("169.254.169.254", info, "node1") or "")
    assert "not a node of the cluster" in (endpoint_host_refusal("node1.evil.example", info, "node1") or "")
    assert "runs the session's job on 'node2'" in (endpoint_host_refusal("node1", info, "node2") or "")


@pytest.fixture(scope="module")
def slurm_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    shared = Path("/tmp") / f"owb-shared-{secrets.token_hex(4)}"
    shared.mkdir(mode=0o755)
    extra = (f'[clusters.Local]\ntype = "Local"\n[clusters.Slurm]\ntype = "Slurm"\nslurm_conf = "{SLURM_CONF}"\n'
             f'output_dir = "{shared}"\npoll_interval_s = 0.5\n')
    with session_server(tmp_path_factory.mktemp("peercred-slurm") / "data", extra) as server:
        yield server
    shutil.rmtree(shared, ignore_errors=True)


@needs_slurm
@pytest.mark.serial  # asserts another user's get_session under 1 s: alone, not beside the parallel phase
@pytest.mark.parametrize("kind", ["fifo", "symlink", "foreign-host"])
def test_a_slurm_session_with_a_subverted_endpoint_fails_and_routes_nowhere(
    slurm_srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, evil_site: Path, kind: str,
    tmp_path: Path,
) -> None:
    bait = socket.create_server(("127.0.0.1", 0))
    listener = Listener(bait, http_reply("NOT-A-NODE")).serve()
    port = bait.getsockname()[1]
    plan = {
        "fifo": "endpoint-fifo:",
        # A symlink to a file alice owns, which names a real node and the bait's port.
        "symlink": f"endpoint-symlink:{_alices_file(tmp_path, alice, f'{socket.gethostname()} {port}')}",
        "foreign-host": f"endpoint-host:127.0.0.1 {port}",
    }[kind]
    token, bobs_token = slurm_srv.token(alice.pw_name), slurm_srv.token(bob.pw_name)
    started = launch(slurm_srv, token, "JupyterLab", environment={"PYTHONPATH": str(evil_site), "OWB_EVIL_PLAN": plan},
                     launch_parameters={"name": "evil", "cluster": "Slurm", "placement_constraints": [],
                                        "resource_limits": [], "queues": ["main"]})
    deadline, slowest, state = time.monotonic() + 120, 0.0, {}
    while time.monotonic() < deadline:
        before = time.monotonic()  # the requirement: another user is answered within 1 s meanwhile
        slurm_srv.rpc("get_session", bobs_token)
        slowest = max(slowest, time.monotonic() - before)
        state = session(slurm_srv, token, started["id"])
        if state["activity_state"] in ("failed", "running", "finished", "killed"):
            break
        time.sleep(0.2)
    assert state["activity_state"] == "failed", state
    expected = {"fifo": "is not a regular file", "symlink": "is a symbolic link",
                "foreign-host": "reported host '127.0.0.1', which is not a node of the cluster"}[kind]
    assert expected in state["status_detail"]
    assert slowest < 1.0, f"get_session of another user took {slowest:.2f} s during the attack"
    assert listener.connections == 0
    bait.close()


def _alices_file(tmp_path: Path, alice: pwd.struct_passwd, text: str) -> str:
    path = tmp_path / "endpoint-looking"  # never read: the server does not follow the link to it
    path.write_text(text + "\n")
    os.chown(path, alice.pw_uid, alice.pw_gid)
    return str(path)

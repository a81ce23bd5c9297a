"""The /s/<session>/ proxy against real upstreams on Unix sockets: a Jupyter Server and a small aiohttp app.

The proxy itself runs as a separate uvicorn process (so its memory can be watched while 20 MB bodies pass).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin, Subprotocol

from conftest import free_port
from openworkbench.config import Settings
from openworkbench.proxy import (
    SIGN_IN_COOKIE,
    ProxyTarget,
    Upstream,
    UpstreamPool,
    filter_request_headers,
    filter_response_headers,
    origin_allowed,
    rewrite_location,
    rewrite_set_cookie,
    upstream_path,
)
from openworkbench.proxy.rewrite import sendable_close_code
from openworkbench.services.accounts import Accounts
from openworkbench.services.signin import SignIn
from openworkbench.sessions.runner import SessionRunner
from openworkbench.store import Store
from openworkbench.store.schema import Session

JUPYTER = "/opt/openworkbench/jupyter/bin/jupyter-server"
TOKEN = "SECRET"
CHUNK = 65536
BIG_CHUNKS = 320  # 20 MiB
MiB = 1024 * 1024

UPSTREAM_APP = r'''
import asyncio, hashlib, json, random, sys
from aiohttp import web, WSMsgType

HOP = {"Keep-Alive": "timeout=5", "Proxy-Authenticate": "Basic", "Trailer": "X-Later", "Connection": "X-Hop-Out",
       "X-Hop-Out": "1", "X-Upstream": "1"}

async def echo(request):
    body = await request.read()
    return web.json_response({"method": request.method, "path": request.path, "raw_path": request.raw_path,
                              "query": request.query_string, "headers": list(request.headers.items()),
                              "body_len": len(body)}, headers=HOP)

async def big(request):
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    chunks = int(request.query["chunks"])
    if "length" in request.query:
        resp.content_length = chunks * 65536
    await resp.prepare(request)
    for i in range(chunks if request.method != "HEAD" else 0):  # aiohttp would send a HEAD answer a body
        await resp.write(random.Random(i).randbytes(65536))
    await resp.write_eof()
    return resp

async def upload(request):
    digest, length = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({"length": length, "sha256": digest.hexdigest(),
                              "transfer_encoding": request.headers.get("Transfer-Encoding"),
                              "content_length": request.headers.get("Content-Length")})

def redirect(location):
    async def handler(request):
        return web.Response(status=302, headers={"Location": location.replace("HOST", request.host)})
    return handler

async def cookies(request):
    resp = web.Response(text="ok")
    for value in ("a=1; Path=/", "b=2", "c=3; Path=/sub; HttpOnly"):
        resp.headers.add("Set-Cookie", value)
    return resp

async def short(request):
    """Announces Content-Length `length`, sends `send` bytes of it, then drops the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = int(request.query["length"])
    await resp.prepare(request)
    await resp.write(b"s" * int(request.query["send"]))
    await asyncio.sleep(0.1)
    request.transport.abort()
    return resp

async def die(request):
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"x" * 65536)
    await asyncio.sleep(0.2)
    request.transport.abort()
    return resp

STATE = {}

async def forever(request):
    resp = web.StreamResponse()
    await resp.prepare(request)
    STATE["forever"] = "streaming"
    try:
        while True:
            await resp.write(b"y" * 65536)
            await asyncio.sleep(0.005)
    finally:
        STATE["forever"] = "stopped"

async def state(request):
    return web.json_response(STATE)

BARRIERS = {}

async def barrier(request):
    """Answers once `n` requests of the same group are here at the same time; 504 if they never all come."""
    group = BARRIERS.setdefault(request.query["group"], {"here": 0, "event": asyncio.Event()})
    group["here"] += 1
    if group["here"] == int(request.query["n"]):
        group["event"].set()
    try:
        await asyncio.wait_for(group["event"].wait(), 90)
    except asyncio.TimeoutError:
        return web.Response(status=504, text=f"only {group['here']} here")
    return web.Response(text="all here")

async def slow(request):
    await asyncio.sleep(float(request.query["s"]))
    return web.Response(text="slow")

async def ws(request):
    sock = web.WebSocketResponse(protocols=("bar",))
    await sock.prepare(request)
    if request.path == "/ws-headers":
        await sock.send_json(list(request.headers.items()))
    async for msg in sock:
        if msg.type == WSMsgType.TEXT and msg.data.startswith("close:"):
            await sock.close(code=int(msg.data[6:]))
        elif msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    STATE["last_close"] = sock.close_code
    return sock

app = web.Application(client_max_size=0)
app.router.add_get("/big", big)
app.router.add_put("/upload", upload)
app.router.add_get("/die", die)
app.router.add_get("/short", short)
app.router.add_get("/slow", slow)
app.router.add_get("/cookies", cookies)
app.router.add_get("/state", state)
app.router.add_get("/barrier", barrier)
app.router.add_get("/forever", forever)
app.router.add_get("/ws", ws)
app.router.add_get("/ws-headers", ws)
for path, location in {"/redir": "/landing", "/redir-abs": "http://HOST/landing?q=1", "/redir-rel": "landing",
                       "/redir-other": "https://example.org/x"}.items():
    app.router.add_get(path, redirect(location))
app.router.add_route("*", "/{tail:.*}", echo)
web.run_app(app, path=sys.argv[1], print=None)
'''

PROXY_APP = r'''
# The real services of a server (store, sign-in, sessions, routes) built from settings against the test's SQLite
# database, behind the real proxy routes and error boundary; only the proxy is served (no RPC, no job monitors).
import json, sys
from collections import Counter
from contextlib import asynccontextmanager
import sqlalchemy as sa
import uvicorn
from starlette.responses import JSONResponse
from starlette.routing import Route, Router
from openworkbench.api.boundary import ErrorBoundary
from openworkbench.api.session_routes import ProxyRoutes
from openworkbench.config import Settings
from openworkbench.services.container import build_services

config = json.loads(open(sys.argv[1]).read())
services = build_services(Settings(data_dir=config["data_dir"], database={"url": config["database_url"]}))
statements = Counter()  # every SQL statement the services send the store, by the real engine's own events
sa.event.listen(services.store.engine, "before_cursor_execute",
                lambda conn, cursor, statement, *rest: statements.update(["all"]))

# The one fake: a store failing under a request (cannot be caused for one request of a running server).
authenticate = services.signin.authenticate
def failing_authenticate(authorization, cookie):
    if authorization == "Bearer boom":
        raise RuntimeError("the store is down")
    return authenticate(authorization, cookie)
services.signin.authenticate = failing_authenticate

@asynccontextmanager
async def lifespan(app):
    yield
    await services.pool.close()

async def get_statements(request):
    return JSONResponse(statements["all"])

router = Router([*ProxyRoutes(services).routes(), Route("/statements", get_statements)], lifespan=lifespan)
uvicorn.run(ErrorBoundary(router), host="127.0.0.1", port=config["port"], log_level="warning")
'''

@dataclass
class Stack:
    url: str
    host: str
    proxy_pid: int
    jupyter_sock: Path
    echo_sock: Path
    client: httpx.Client  # signed in as the sessions' owner
    database_url: str
    owner_token: str
    other_token: str
    jupyter_secret: str

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.owner_token}"}


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} did not open {path}: {log.read_text()[-3000:]}")
        time.sleep(0.02)


def _wait_http(client: httpx.Client, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args!r} never answered {url}: {log.read_text()[-3000:]}")
        time.sleep(0.05)


def _start(cmd: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _jupyter(tmp: Path) -> subprocess.Popen[bytes]:
    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data")}
    cmd = [JUPYTER, f"--ServerApp.sock={tmp / 'j.sock'}", "--ServerApp.base_url=/s/testprefix/",
           f"--IdentityProvider.token={TOKEN}", "--ServerApp.allow_remote_access=True",
           f"--ServerApp.root_dir={tmp / 'root'}", "--no-browser"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    (tmp / "root").mkdir()
    return _start(cmd, tmp / "jupyter.log", env=env, cwd=tmp)


# The sessions' owner: the proxy reaches a socket only if the session's user serves it, and the test's upstreams
# run as root.
OWNER = "root"
# The sessions the proxy serves, as rows of the real store: url part -> (IDE, socket file, state).
SESSIONS = {
    "testprefix": ("JupyterLab", "j.sock", "running"),  # Jupyter keeps the prefix; the proxy sends its token
    "echoj": ("JupyterLab", "e.sock", "running"),  # the echo app behind a Jupyter route: the token it is sent
    "echo": ("VS Code", "e.sock", "running"),  # code-server's kind of route: the prefix stripped
    "missing": ("VS Code", "none.sock", "running"),
    "cold": ("VS Code", "e.sock", "running"),  # only ever asked for in one test: not in the proxy's memory before
    "stopped": ("JupyterLab", "e.sock", "suspended"),
}


def _seed(database_url: str, tmp: Path) -> tuple[str, str]:
    """The owner's sessions, and API tokens of the owner and of another user."""
    store = Store(database_url)
    store.migrate()
    accounts = Accounts(store)
    owner, other = accounts.generate_token("user", "owner-token", OWNER), accounts.generate_token(
        "user", "other-token", "other")
    owner_id = accounts.ensure_user(OWNER)
    with store.session() as db:
        for number, (part, (workbench, sock, state)) in enumerate(SESSIONS.items()):
            db.add(Session(id=f"{number:08x}", user_id=owner_id, workbench=workbench, name=part, project_id="p",
                           url=f"/s/{part}/", state=state, status_detail="", cluster="Local", request={},
                           working_dir=str(tmp), socket_path=str(tmp / sock),
                           state_dir=f"{tmp}/.local/share/openworkbench/sessions/{part}",
                           secret=TOKEN if workbench == "JupyterLab" else "unused", suspend_manifest={},
                           executing=False))
    # Their routes, as the server that drives them writes them (the proxy's process only reads them).
    runner = SessionRunner(Settings(data_dir=tmp / "data", database={"url": database_url}), store, None, None)
    with store.session() as db:
        for row in db.scalars(sa.select(Session)):
            runner.remember(row, OWNER, db)
    runner.routes.close()
    store.dispose()
    return owner, other


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("proxy")
    port = free_port()
    database_url = f"sqlite:///{tmp / 'workbench.db'}"
    owner_token, other_token = _seed(database_url, tmp)
    (tmp / "proxy.json").write_text(json.dumps({"port": port, "data_dir": str(tmp / "data"),
                                                "database_url": database_url}))
    (tmp / "upstream.py").write_text(UPSTREAM_APP)
    (tmp / "proxy.py").write_text(PROXY_APP)
    procs = [_jupyter(tmp)]
    try:
        procs.append(_start([sys.executable, str(tmp / "upstream.py"), str(tmp / "e.sock")], tmp / "upstream.log"))
        procs.append(_start([sys.executable, str(tmp / "proxy.py"), str(tmp / "proxy.json")], tmp / "proxy.log"))
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"Authorization": f"Bearer {owner_token}"})
        _wait_socket(tmp / "e.sock", procs[1], tmp / "upstream.log")
        _wait_http(client, "/s/echo/ready", procs[2], tmp / "proxy.log")
        _wait_socket(tmp / "j.sock", procs[0], tmp / "jupyter.log")
        _wait_http(client, "/s/testprefix/api/status", procs[0], tmp / "jupyter.log")
        yield Stack(f"127.0.0.1:{port}", f"127.0.0.1:{port}", procs[2].pid, tmp / "j.sock", tmp / "e.sock", client,
                    database_url, owner_token, other_token, TOKEN)
        client.close()
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _header_values(pairs: list[list[str]], name: str) -> list[str]:
    return [value for key, value in pairs if key.lower() == name.lower()]


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _big_sha(chunks: int) -> str:
    digest = hashlib.sha256()
    for i in range(chunks):
        digest.update(random.Random(i).randbytes(CHUNK))
    return digest.hexdigest()


# -- pure functions ------------------------------------------------------------------------------------------

STRIP = ProxyTarget("/x.sock", "/s/abc/", True, {"X-Secret": "s"})
KEEP = ProxyTarget("/x.sock", "/s/abc/", False, {"Authorization": "token t"})


def test_upstream_path() -> None:
    assert upstream_path(STRIP, "/s/abc/lab/tree", "a=1") == "/lab/tree?a=1"
    assert upstream_path(STRIP, "/s/abc/", "") == "/"
    assert upstream_path(STRIP, "/s/abc", "") == "/"
    assert upstream_path(STRIP, "/s/abc/a%2Fb", "") == "/a%2Fb"
    assert upstream_path(KEEP, "/s/abc/api/status", "x=%20") == "/s/abc/api/status?x=%20"


@pytest.mark.parametrize(
    ("target", "location", "expected"),
    [
        (STRIP, "/login", "/s/abc/login"),
        (STRIP, "/", "/s/abc/"),
        (STRIP, "/s/abc/already", "/s/abc/already"),
        (STRIP, "http://wb.example:8787/login?x=1#f", "/s/abc/login?x=1#f"),
        (STRIP, "https://wb.example:8787/", "/s/abc/"),
        (STRIP, "https://other.example/login", "https://other.example/login"),
        (STRIP, "./login", "./login"),
        (STRIP, "login", "login"),
        (KEEP, "/s/abc/lab", "/s/abc/lab"),
        (KEEP, "/elsewhere", "/elsewhere"),
        (KEEP, "http://wb.example:8787/s/abc/lab", "/s/abc/lab"),
        (KEEP, "https://other.example/", "https://other.example/"),
    ],
)
def test_rewrite_location(target: ProxyTarget, location: str, expected: str) -> None:
    assert rewrite_location(location, target, "wb.example:8787") == expected


def test_rewrite_location_default_ports() -> None:
    assert rewrite_location("https://wb.example/x", STRIP, "wb.example:443") == "/s/abc/x"
    assert rewrite_location("http://wb.example:80/x", STRIP, "wb.example") == "/s/abc/x"
    assert rewrite_location("http://wb.example:81/x", STRIP, "wb.example") == "http://wb.example:81/x"


def test_rewrite_set_cookie() -> None:
    assert rewrite_set_cookie("a=1; Path=/", STRIP) == "a=1; Path=/s/abc/"
    assert rewrite_set_cookie("a=1; path=/sub; HttpOnly", STRIP) == "a=1; Path=/s/abc/sub; HttpOnly"
    assert rewrite_set_cookie("a=1", STRIP) == "a=1; Path=/s/abc/"
    assert rewrite_set_cookie("a=1; Secure", STRIP) == "a=1; Secure; Path=/s/abc/"
    # An IDE that knows its prefix keeps paths inside it; anything outside (Path=/) is confined to it too.
    assert rewrite_set_cookie("a=1; Path=/s/abc/lab", KEEP) == "a=1; Path=/s/abc/lab"
    assert rewrite_set_cookie("a=1; Path=/", KEEP) == "a=1; Path=/s/abc/"
    assert rewrite_set_cookie("a=1; Path=/s/abcd/", KEEP) == "a=1; Path=/s/abc/"
    assert rewrite_set_cookie("a=1", KEEP) == "a=1; Path=/s/abc/"
    # Domain would widen a cookie to sibling hosts (other sessions' origins); the server's own names are dropped.
    assert rewrite_set_cookie("a=1; Domain=example.com; Path=/", KEEP) == "a=1; Path=/s/abc/"
    assert rewrite_set_cookie(f"{SIGN_IN_COOKIE}=x; Path=/", KEEP) is None
    assert rewrite_set_cookie("owb_csrf=x", STRIP) is None


def test_filter_request_headers() -> None:
    raw = [("Host", "wb:1"), ("Authorization", "Bearer user-api-token"), ("Cookie", f"x=1; {SIGN_IN_COOKIE}=tok; y=2"),
           ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "5"), ("TE", "trailers"),
           ("Proxy-Authorization", "p"), ("Upgrade", "h2c"), ("X-Secret", "forged"), ("X-Forwarded-For", "10.0.0.1"),
           ("X-Forwarded-Host", "evil"), ("Accept", "*/*"), ("Transfer-Encoding", "chunked"), ("Content-Length", "5")]
    out = filter_request_headers(raw, STRIP, client_host="127.0.0.1", scheme="https")
    names = [name.lower() for name, _ in out]
    for gone in ("authorization", "connection", "x-hop", "keep-alive", "te", "proxy-authorization", "upgrade",
                 "transfer-encoding", "content-length"):
        assert gone not in names
    assert dict(out) == {"Host": "wb:1", "Accept": "*/*", "Cookie": "x=1; y=2",
                         "X-Forwarded-For": "10.0.0.1, 127.0.0.1", "X-Forwarded-Proto": "https",
                         "X-Forwarded-Host": "wb:1", "X-Forwarded-Prefix": "/s/abc", "X-Secret": "s"}
    only_sign_in = filter_request_headers([("Cookie", f"{SIGN_IN_COOKIE}=t")], KEEP, client_host=None, scheme="wss")
    assert only_sign_in == [("X-Forwarded-Proto", "https"), ("Authorization", "token t")]


def test_filter_response_headers() -> None:
    raw = [("Content-Type", "text/html"), ("Connection", "X-Out"), ("X-Out", "1"), ("Transfer-Encoding", "chunked"),
           ("Content-Length", "3"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2"), ("Location", "/in"),
           ("Date", "x"), ("Server", "TornadoServer"), ("Service-Worker-Allowed", "/"),
           ("Set-Cookie", f"{SIGN_IN_COOKIE}=forged; Path=/")]
    assert filter_response_headers(raw, STRIP, request_host="wb") == [
        ("Content-Type", "text/html"), ("Set-Cookie", "a=1; Path=/s/abc/"), ("Set-Cookie", "b=2; Path=/s/abc/"),
        ("Location", "/s/abc/in")]


def test_origin_allowed() -> None:
    assert origin_allowed(None, "wb:1")
    assert origin_allowed("http://wb:1", "wb:1")
    assert origin_allowed("https://WB", "wb:443")
    assert origin_allowed("https://wb.example", "127.0.0.1:8787", "wb.example")
    assert not origin_allowed("http://evil.example", "wb:1")
    assert not origin_allowed("http://wb:2", "wb:1")
    assert not origin_allowed("null", "wb:1")
    assert not origin_allowed("http://wb:1", None)


def test_sendable_close_code() -> None:
    assert [sendable_close_code(c) for c in (None, 1000, 1005, 1006, 1015, 4001, 999)] == [
        1000, 1000, 1000, 1001, 1000, 4001, 1011]


# -- Jupyter Server ------------------------------------------------------------------------------------------


def test_jupyter_status_and_token_replacement(stack: Stack) -> None:
    status = stack.client.get("/s/testprefix/api/status")
    assert status.status_code == 200 and "kernels" in status.json()
    # A browser signed in with the cookie that sends a Jupyter token of its own: the proxy replaces it with the
    # session's; Jupyter would refuse it directly.
    cookie = SignIn(Accounts(Store(stack.database_url))).sign_in(stack.owner_token)
    wrong = {"Authorization": "token not-the-secret"}
    with httpx.Client(base_url=f"http://{stack.url}", cookies={SIGN_IN_COOKIE: cookie}, timeout=30) as browser:
        assert browser.get("/s/testprefix/api/kernels", headers=wrong).status_code == 200
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(stack.jupyter_sock)), base_url="http://localhost") as raw:
        assert raw.get("/s/testprefix/api/kernels", headers=wrong).status_code == 403


def test_jupyter_contents_roundtrip(stack: Stack) -> None:
    model = {"type": "file", "format": "text", "content": "hello through the proxy\n"}
    put = stack.client.put("/s/testprefix/api/contents/hello%20world.txt", json=model)
    assert put.status_code in (200, 201), put.text
    got = stack.client.get("/s/testprefix/api/contents/hello%20world.txt", params={"content": "1"})
    assert got.status_code == 200 and got.json()["content"] == model["content"]
    assert got.json()["name"] == "hello world.txt"


def _execute(sock: Any, code: str) -> str:
    msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request",
              "version": "5.3", "date": "2024-01-01T00:00:00Z"}
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False,
               "stop_on_error": True}
    sock.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "content": content,
                          "channel": "shell", "buffers": []}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = json.loads(sock.recv(timeout=30))
        if reply["msg_type"] == "execute_result" and reply["parent_header"].get("msg_id") == msg_id:
            return str(reply["content"]["data"]["text/plain"])
    raise AssertionError("no execute_result")


def test_jupyter_kernel_websocket(stack: Stack) -> None:
    kernel = stack.client.post("/s/testprefix/api/kernels", json={"name": "python3"})
    assert kernel.status_code == 201, kernel.text
    path = f"/s/testprefix/api/kernels/{kernel.json()['id']}/channels"
    try:
        # Origin equal to the Host the browser used: Jupyter accepts it because the proxy keeps Host.
        with connect(f"ws://{stack.url}{path}", origin=Origin(f"http://{stack.host}"), open_timeout=10,
                     additional_headers=stack.auth()) as sock:
            assert _execute(sock, "1+1") == "2"
        # JupyterLab asks for the v1 kernel protocol; the IDE's choice reaches the browser.
        with connect(f"ws://{stack.url}{path}", subprotocols=[Subprotocol("v1.kernel.websocket.jupyter.org")],
                     additional_headers=stack.auth()) as sock:
            assert sock.subprotocol == "v1.kernel.websocket.jupyter.org"
        # Jupyter skips its Origin check for token-authenticated requests (all proxied ones): the proxy checks.
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://{stack.url}{path}", origin=Origin("http://evil.example"), additional_headers=stack.auth())
        assert refused.value.response.status_code == 403
    finally:
        stack.client.delete(f"/s/testprefix/api/kernels/{kernel.json()['id']}")


# -- aiohttp upstream, prefix stripped -----------------------------------------------------------------------


def test_paths_and_request_headers(stack: Stack) -> None:
    headers = {**stack.auth(), "Cookie": f"other=1; {SIGN_IN_COOKIE}=signin; third=3",
               "Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5", "TE": "trailers",
               "Proxy-Authorization": "Basic eA==", "X-Custom": "v"}
    got = stack.client.get("/s/echo/echo/a%2Fb%20c", params={"x": "1", "y": "2 3"}, headers=headers).json()
    assert got["raw_path"] == "/echo/a%2Fb%20c?x=1&y=2+3" and got["path"] == "/echo/a/b c"
    sent = got["headers"]
    names = {name.lower() for name, _ in sent}
    assert not names & {"authorization", "proxy-authorization", "keep-alive", "te", "x-hop", "transfer-encoding"}
    assert _header_values(sent, "cookie") == ["other=1; third=3"]
    assert _header_values(sent, "x-custom") == ["v"]
    assert _header_values(sent, "host") == [stack.host]
    assert _header_values(sent, "x-forwarded-for") == ["127.0.0.1"]
    assert _header_values(sent, "x-forwarded-proto") == ["http"]
    assert _header_values(sent, "x-forwarded-host") == [stack.host]
    assert _header_values(sent, "x-forwarded-prefix") == ["/s/echo"]
    assert stack.owner_token not in json.dumps(got) and "signin" not in json.dumps(got)
    # A Jupyter route: the caller's Authorization is replaced by the session's own token, and only that is sent.
    jupyter = stack.client.get("/s/echoj/x", headers={**headers, "Authorization": f"Bearer {stack.owner_token}"})
    sent = jupyter.json()["headers"]
    assert _header_values(sent, "authorization") == [f"token {stack.jupyter_secret}"]
    assert stack.owner_token not in jupyter.text


def test_every_method_and_response_headers(stack: Stack) -> None:
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        resp = stack.client.request(method, "/s/echo/m", content=b"body" if method != "GET" else None)
        assert resp.status_code == 200 and resp.json()["method"] == method and resp.json()["path"] == "/m"
        assert resp.json()["body_len"] == (4 if method != "GET" else 0)
    head = stack.client.head("/s/echo/m")
    assert head.status_code == 200 and head.content == b""
    resp = stack.client.get("/s/echo/m")
    assert resp.headers["x-upstream"] == "1"
    for gone in ("keep-alive", "proxy-authenticate", "trailer", "x-hop-out"):
        assert gone not in resp.headers
    assert len(resp.headers.get_list("date")) == 1 and len(resp.headers.get_list("server")) == 1


def test_cross_origin_writes_refused(stack: Stack) -> None:
    evil = {"Origin": "http://evil.example"}
    refused = stack.client.post("/s/testprefix/api/kernels", json={"name": "python3"}, headers=evil)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == 403
    assert stack.client.get("/s/echo/page", headers=evil).status_code == 200  # a link from elsewhere still opens
    mine = {"Origin": f"http://{stack.host}"}
    assert stack.client.post("/s/echo/form", content=b"x", headers=mine).json()["body_len"] == 1


def test_redirects_and_cookies_rewritten(stack: Stack) -> None:
    expected = {"redir": "/s/echo/landing", "redir-abs": "/s/echo/landing?q=1", "redir-rel": "landing",
                "redir-other": "https://example.org/x"}
    for path, location in expected.items():
        resp = stack.client.get(f"/s/echo/{path}")
        assert resp.status_code == 302 and resp.headers["location"] == location
    cookies = stack.client.get("/s/echo/cookies").headers.get_list("set-cookie")
    assert cookies == ["a=1; Path=/s/echo/", "b=2; Path=/s/echo/", "c=3; Path=/s/echo/sub; HttpOnly"]


def test_large_bodies_stream_both_ways(stack: Stack) -> None:
    stack.client.get("/s/echo/big", params={"chunks": 4})  # warm up before measuring the proxy's peak memory
    peak_before = _peak_rss(stack.proxy_pid)
    cases: list[dict[str, str | int]] = [{"chunks": BIG_CHUNKS}, {"chunks": BIG_CHUNKS, "length": "1"}]
    for params in cases:
        digest, size = hashlib.sha256(), 0
        with stack.client.stream("GET", "/s/echo/big", params=params) as resp:
            assert resp.status_code == 200
            assert ("content-length" in resp.headers) == ("length" in params)
            for chunk in resp.iter_raw():
                digest.update(chunk)
                size += len(chunk)
        assert size == BIG_CHUNKS * CHUNK and digest.hexdigest() == _big_sha(BIG_CHUNKS)

    def chunks() -> Iterator[bytes]:
        for i in range(BIG_CHUNKS):
            yield random.Random(i).randbytes(CHUNK)

    streamed = stack.client.put("/s/echo/upload", content=chunks()).json()
    assert streamed["length"] == BIG_CHUNKS * CHUNK and streamed["sha256"] == _big_sha(BIG_CHUNKS)
    assert streamed["transfer_encoding"] == "chunked"
    whole = stack.client.put("/s/echo/upload", content=b"".join(chunks())).json()
    assert whole["sha256"] == streamed["sha256"] and whole["content_length"] == str(BIG_CHUNKS * CHUNK)
    growth = _peak_rss(stack.proxy_pid) - peak_before
    assert growth < 8 * MiB, f"proxy peak memory grew {growth / MiB:.1f} MiB for 20 MiB bodies"


def test_browser_leaving_stops_the_upstream_stream(stack: Stack) -> None:
    with httpx.Client(base_url=f"http://{stack.url}", timeout=30, headers=stack.auth()) as own, own.stream(
            "GET", "/s/echo/forever") as resp:
        for index, _ in enumerate(resp.iter_raw()):
            if index == 20:
                break
    deadline = time.monotonic() + 60
    while stack.client.get("/s/echo/state").json().get("forever") != "stopped":
        assert time.monotonic() < deadline, "the IDE kept streaming to a browser that had left"
        time.sleep(0.02)


def test_pool_reuses_and_forgets_sessions(stack: Stack) -> None:
    async def run() -> None:
        pool = UpstreamPool()
        echo = Upstream.unix(str(stack.echo_sock), os.geteuid())
        first = pool.session(echo)
        assert pool.session(Upstream.unix(str(stack.echo_sock), os.geteuid())) is first  # one client per socket
        async with first.get(pool.url("/m?x=1")) as resp:
            assert (await resp.json())["raw_path"] == "/m?x=1"
        await pool.forget(echo)
        assert first.closed and pool.session(echo) is not first
        await pool.close()

    asyncio.run(run())


def test_concurrent_slow_requests_do_not_queue(stack: Stack) -> None:
    """60 requests that each wait at the IDE until all 60 are there: they pass only if the proxy forwards them
    all at once (a proxy that queued them would leave the barrier short and every request would time out)."""
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=f"http://{stack.url}", timeout=120, headers=stack.auth()) as client:
            group = uuid.uuid4().hex
            return await asyncio.gather(*(client.get("/s/echo/barrier", params={"n": "60", "group": group})
                                          for _ in range(60)))

    assert [r.text for r in asyncio.run(run())] == ["all here"] * 60


def test_websocket_echo_subprotocol_and_close_codes(stack: Stack) -> None:
    url = f"ws://{stack.url}/s/echo/ws"
    with connect(url, subprotocols=[Subprotocol("foo"), Subprotocol("bar")], additional_headers=stack.auth()) as sock:
        assert sock.subprotocol == "bar"
        sock.send("hello")
        assert sock.recv(timeout=5) == "hello"
        payload = bytes(range(256)) * 1000
        sock.send(payload)
        assert sock.recv(timeout=5) == payload
        sock.send("close:4001")  # the IDE closes with its own code
        with pytest.raises(ConnectionClosed) as closed:
            sock.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    with connect(url, additional_headers=stack.auth()) as sock:
        sock.send("ping")
        assert sock.recv(timeout=5) == "ping"
        sock.close(code=4002)  # the browser's code reaches the IDE
    deadline = time.monotonic() + 60
    while stack.client.get("/s/echo/state").json().get("last_close") != 4002:
        assert time.monotonic() < deadline, "close code 4002 never reached the upstream"
        time.sleep(0.02)


def test_websocket_handshake_headers(stack: Stack) -> None:
    headers = {**stack.auth(), "Cookie": f"{SIGN_IN_COOKIE}=signin; keep=1"}
    with connect(f"ws://{stack.url}/s/echo/ws-headers", additional_headers=headers,
                 origin=Origin(f"http://{stack.host}")) as sock:
        sent = json.loads(sock.recv(timeout=5))
    assert not _header_values(sent, "authorization")
    assert _header_values(sent, "cookie") == ["keep=1"]
    assert _header_values(sent, "origin") == [f"http://{stack.host}"]
    assert _header_values(sent, "host") == [stack.host]


def test_missing_upstream_is_a_clean_502(stack: Stack) -> None:
    resp = stack.client.post("/s/missing/anything", content=b"x")
    assert resp.status_code == 502
    body = resp.json()
    assert body["error"]["code"] == 502 and body["error"]["message"] and "Traceback" not in resp.text
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://{stack.url}/s/missing/ws", open_timeout=10, additional_headers=stack.auth())
    assert refused.value.response.status_code == 502


def test_upstream_dying_mid_stream_breaks_the_response(stack: Stack) -> None:
    with pytest.raises(httpx.RemoteProtocolError), stack.client.stream("GET", "/s/echo/die") as resp:
        assert resp.status_code == 200
        for _ in resp.iter_raw():
            pass
    assert stack.client.get("/s/echo/after").status_code == 200  # the proxy itself carries on


def test_small_answers_whole_large_ones_streamed(stack: Stack) -> None:
    whole = stack.client.get("/s/echo/big", params={"chunks": 1, "length": "1"})  # exactly the 64 KiB limit
    assert whole.status_code == 200 and whole.headers["content-length"] == str(CHUNK)
    assert hashlib.sha256(whole.content).hexdigest() == _big_sha(1)
    # An answer read whole that breaks off has sent nothing yet: a clean 502 instead of a broken response.
    broken = stack.client.get("/s/echo/short", params={"length": 65536, "send": 1000})
    assert broken.status_code == 502 and broken.json()["error"]["code"] == 502
    # One byte more is streamed: the browser's connection drops, as for a chunked answer.
    with pytest.raises(httpx.RemoteProtocolError), stack.client.stream(
            "GET", "/s/echo/short", params={"length": 65537, "send": 1000}) as resp:
        assert resp.status_code == 200
        for _ in resp.iter_raw():
            pass


def test_head_keeps_the_length_and_sends_no_body(stack: Stack) -> None:
    for chunks in (1, 4):  # read whole, and above the limit
        head = stack.client.head("/s/echo/big", params={"chunks": chunks, "length": "1"})
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(chunks * CHUNK)
    assert stack.client.get("/s/echo/after-head").status_code == 200  # the connection is still in step


def test_session_routes_refusals_and_redirects(stack: Stack) -> None:
    accounts = Accounts(Store(stack.database_url))
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    revoked = accounts.generate_token("user", name, OWNER)
    accounts.revoke_token(name)
    # A non-owner is told what a URL no session has gets: existence is not revealed.
    expected = {"Bearer bad": 401, f"Bearer {revoked}": 401, f"Bearer {stack.other_token}": 404}
    for authorization, status in expected.items():
        refused = stack.client.get("/s/echo/x", headers={"Authorization": authorization})
        assert refused.status_code == status and refused.json()["error"]["code"] == status
    nobody = stack.client.get("/s/nosuch/x")
    other = stack.client.get("/s/echo/x", headers=stack.auth(stack.other_token))
    assert nobody.status_code == 404 and other.json()["error"]["message"] == "no session at /s/echo/"
    assert stack.client.get("/s/nosuch/x", headers={"Authorization": ""}).status_code == 401
    assert stack.client.get("/s/stopped/x").json() == {
        "error": {"code": 503, "message": "the session is suspended"}}
    page_request = {"Authorization": "Bearer bad", "Accept": "text/html"}
    page = stack.client.get("/s/echo/x", params={"a": "1"}, headers=page_request)
    assert page.status_code == 302 and page.headers["location"] == "/auth/sign-in?next=/s/echo/x%3Fa%3D1"
    slash = stack.client.get("/s/echo", params={"q": "1"})
    assert slash.status_code == 301 and slash.headers["location"] == "/s/echo/?q=1"
    assert stack.client.request("TRACE", "/s/echo/m").status_code == 405
    boom = stack.client.get("/s/echo/x", headers={"Authorization": "Bearer boom"})
    assert boom.status_code == 500 and boom.json()["error"]["code"] == 500 and "store" not in boom.text
    for elsewhere in ("/s/", "/s//x", "/nothing"):  # not a session path: the app behind answers
        assert stack.client.get(elsewhere).status_code == 404
    with pytest.raises(InvalidStatus) as refused_ws:  # refused before the handshake completes
        connect(f"ws://{stack.url}/s/echo/ws", additional_headers=stack.auth(stack.other_token))
    assert refused_ws.value.response.status_code == 403


def test_known_routes_are_answered_without_the_store(stack: Stack) -> None:
    """Counted by the real engine's statement events in the proxy's process: a caller and a route already
    checked are answered from memory, without one SQL statement; a new caller or route asks the store."""
    def statements(action: Any) -> int:
        before = stack.client.get("/statements").json()
        action()
        return int(stack.client.get("/statements").json()) - int(before)

    for _ in range(2):  # the owner's token and the route are known after this
        assert stack.client.get("/s/echo/m").status_code == 200
    assert statements(lambda: [stack.client.get("/s/echo/m") for _ in range(5)]) == 0
    fresh = Accounts(Store(stack.database_url)).generate_token("user", f"fresh-{uuid.uuid4().hex[:6]}", OWNER)
    assert statements(lambda: stack.client.get("/s/echo/m", headers=stack.auth(fresh))) > 0  # a caller not seen yet
    assert statements(lambda: stack.client.get("/s/echo/m", headers=stack.auth(fresh))) == 0
    assert statements(lambda: stack.client.get("/s/cold/m")) > 0  # the caller known, the route not
    assert statements(lambda: stack.client.get("/s/cold/m")) == 0


def test_open_websocket_closes_when_access_ends(stack: Stack) -> None:
    accounts = Accounts(Store(stack.database_url))
    name = f"revocable-{uuid.uuid4().hex[:6]}"
    token = accounts.generate_token("user", name, OWNER)
    with connect(f"ws://{stack.url}/s/echo/ws", additional_headers=stack.auth(token)) as sock:
        sock.send("before")
        assert sock.recv(timeout=30) == "before"
        accounts.revoke_token(name)  # by another process, as the CLI does
        with pytest.raises(ConnectionClosed) as closed:
            sock.recv(timeout=60)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401

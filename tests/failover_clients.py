"""The browser-like clients of tests/test_failover.py, all through the load balancer, all on one event loop:

- ``Follower``: follows a job's ``get_job_output`` and reconnects when the stream breaks. The API has no
  offset: a new call streams the output from its start, so the client skips, per stream, what it already has
  (the output is UTF-8 text; this counts characters, as it received them), and stops once a stream ended
  cleanly and the job's status is final (a server that shuts down also ends streams cleanly, early).
- ``Prober``: asks ``get_session`` every 50 ms without a balancer cookie (round robin), and keeps every
  failure with its time.
- ``Kernel``: a Jupyter kernel's WebSocket through the session proxy.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from tests.lb_helpers import COOKIE

FINAL = ("Finished", "Failed", "Killed", "Canceled")
TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def client(token: str, base: str, pin: str | None = None) -> aiohttp.ClientSession:
    """A client with the token; ``pin``: HAProxy's cookie for ``base`` set to that replica (the browser had been
    sent there), and kept up to date as a browser does. Without a pin its cookies are not kept, so every
    request is balanced afresh."""
    headers = {"Authorization": f"Bearer {token}"}
    if pin is None:
        return aiohttp.ClientSession(headers=headers, cookie_jar=aiohttp.DummyCookieJar())
    jar = aiohttp.CookieJar(unsafe=True)  # unsafe: keep cookies of an IP address (127.0.0.1), as browsers do
    jar.update_cookies({COOKIE: pin}, URL(base))
    return aiohttp.ClientSession(headers=headers, cookie_jar=jar)


def pinned_to(http: aiohttp.ClientSession, base: str) -> str | None:
    """The replica HAProxy's cookie names now."""
    cookie = http.cookie_jar.filter_cookies(URL(base)).get(COOKIE)
    return cookie.value if cookie else None


async def rpc(http: aiohttp.ClientSession, base: str, method: str, **kwparams: Any) -> Any:
    async with http.post(f"{base}/api/{method}", json={"method": method, "kwparams": kwparams},
                         timeout=aiohttp.ClientTimeout(total=30)) as resp:
        text = await resp.text()
        if resp.status != 200 or not text.startswith("{") or '"error"' in text[:10]:
            # HAProxy's own answers (502 when the replica died inside the call, 503 with none up) are HTML
            raise RuntimeError(f"{method}: HTTP {resp.status}: {text[:200]}")
        return json.loads(text)["result"]


@dataclass
class Follower:
    http: aiohttp.ClientSession
    base: str
    job_id: str
    text: dict[str, str] = field(default_factory=lambda: {"stdout": "", "stderr": ""})
    connections: int = 0  # streams opened that answered 200
    breaks: list[str] = field(default_factory=list)  # why each stream but the last was reopened
    job: dict[str, Any] = field(default_factory=dict)  # the job as last read, once final

    def lines(self) -> list[str]:
        return self.text["stdout"].splitlines()

    async def run(self, deadline_s: float = 90) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            try:
                clean = await self._stream()
            except TRANSPORT as exc:
                self.breaks.append(f"{type(exc).__name__}: {exc}")
                clean = False
            if clean:
                self.job = await self._job()
                if self.job.get("status") in FINAL:
                    return
                self.breaks.append(f"ended cleanly, the job {self.job.get('status', 'not read')}: asked again")
            await asyncio.sleep(0.1)
        raise AssertionError(f"the follower never saw the job end: {self.job}, breaks {self.breaks}")

    async def _stream(self) -> bool:
        """One get_job_output call: what it sends beyond what we have is appended. True: it ended cleanly."""
        skip = {kind: len(text) for kind, text in self.text.items()}
        body = {"method": "get_job_output", "kwparams": {"job_id": self.job_id}}
        async with self.http.post(f"{self.base}/api/get_job_output", json=body,
                                  timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
            if resp.status != 200:
                self.breaks.append(f"HTTP {resp.status}")
                return False
            self.connections += 1
            async for raw in resp.content:
                if not raw.endswith(b"\n"):  # the stream was cut inside a line: that line is asked again
                    self.breaks.append(f"cut inside a line ({len(raw)} bytes)")
                    return False
                item = json.loads(raw)
                assert "error" not in item, item
                kind, chunk = item["outputType"], item["output"]
                take = chunk[skip[kind]:]
                skip[kind] = max(0, skip[kind] - len(chunk))
                self.text[kind] += take
        return True

    async def _job(self) -> dict[str, Any]:
        try:
            jobs = (await rpc(self.http, self.base, "get_session", include_all_jobs=True))["jobs"]
        except (*TRANSPORT, RuntimeError):
            return {}
        return dict(next(job for job in jobs if job["id"] == self.job_id))


@dataclass
class Prober:
    http: aiohttp.ClientSession
    base: str
    answered: list[float] = field(default_factory=list)  # monotonic times of the good answers
    failures: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, what failed)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stopped.is_set():
            try:
                await rpc(self.http, self.base, "get_session")
                self.answered.append(time.monotonic())
            except (*TRANSPORT, RuntimeError) as exc:
                self.failures.append((time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
            await asyncio.sleep(0.05)


class Kernel:
    """A kernel of the session, and WebSockets to its channels."""

    def __init__(self, http: aiohttp.ClientSession, session_base: str, kernel_id: str) -> None:
        self.http, self.base, self.id = http, session_base, kernel_id

    @classmethod
    async def start(cls, http: aiohttp.ClientSession, session_base: str) -> Kernel:
        async with http.post(f"{session_base}api/kernels", json={"name": "python3"}) as resp:
            assert resp.status == 201, await resp.text()
            return cls(http, session_base, (await resp.json())["id"])

    async def connect(self) -> aiohttp.ClientWebSocketResponse:
        url = self.base.replace("http://", "ws://") + f"api/kernels/{self.id}/channels"
        return await self.http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5))

    @staticmethod
    async def execute(ws: aiohttp.ClientWebSocketResponse, code: str, timeout: float = 60) -> str:
        msg_id = uuid.uuid4().hex
        await ws.send_json({
            "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}})
        async with asyncio.timeout(timeout):
            async for message in ws:
                data = json.loads(message.data)
                if data.get("parent_header", {}).get("msg_id") == msg_id and data["msg_type"] == "execute_result":
                    return str(data["content"]["data"]["text/plain"])
        raise AssertionError(f"the WebSocket closed before the result: {ws.exception()}")

    @staticmethod
    async def ended(ws: aiohttp.ClientWebSocketResponse, timeout: float = 30) -> str:
        """How the WebSocket ended (it must, within ``timeout``): the type of its last message."""
        async with asyncio.timeout(timeout):
            while True:
                message = await ws.receive()
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return message.type.name

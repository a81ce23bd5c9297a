"""Helpers for session tests: a server set up for sessions, waiting on states, kernels over WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Server

FINAL = ("suspended", "failed", "killed", "finished", "canceled")


def session_config(runtime_dir: Path, extra: str = "", start_timeout_s: float = 60) -> str:
    return (f'[sessions]\nruntime_dir = "{runtime_dir}"\nstart_timeout_s = {start_timeout_s}\nstop_grace_s = 3\n'
            + extra)


@contextlib.contextmanager
def session_server(data_dir: Path, extra: str = "", start_timeout_s: float = 60) -> Iterator[Server]:
    """A started server configured for sessions, stopped and cleaned up after."""
    # The runtime dir must be outside pytest's 0700 temp dirs: the session's user must reach it.
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    server = Server(data_dir, config_text=session_config(runtime, extra, start_timeout_s)).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(runtime, ignore_errors=True)



def session(server: Server, token: str, session_id: str, user: str | None = None) -> dict[str, Any]:
    sessions = server.rpc("get_session", token, session_id=session_id, user=user)["sessions"]
    assert len(sessions) == 1, sessions
    return dict(sessions[0])


def wait_state(server: Server, token: str, session_id: str, states: tuple[str, ...], timeout: float = 90,
               user: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        current = session(server, token, session_id, user)
        if not seen or seen[-1] != current["activity_state"]:
            seen.append(current["activity_state"])
        if current["activity_state"] in states:
            current["seen_states"] = seen
            return current
        if current["activity_state"] in FINAL:
            raise AssertionError(f"session {session_id} ended {current['activity_state']}: "
                                 f"{current['status_detail']} (states {seen})")
        time.sleep(0.1)
    raise AssertionError(f"session {session_id} never reached {states}; states {seen}")


def launch(server: Server, token: str, workbench: str, **kwparams: Any) -> dict[str, Any]:
    return dict(server.rpc("launch_session", token, workbench=workbench, **kwparams))


async def _kernel_round_trip(base: str, token: str, code: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as client:
        async with client.post(f"{base}api/kernels", json={"name": "python3"}) as resp:
            assert resp.status == 201, await resp.text()
            kernel = await resp.json()
        ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
        async with client.ws_connect(ws_url) as ws:
            msg_id = uuid.uuid4().hex
            await ws.send_json({
                "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type":
                           "execute_request", "version": "5.3", "date": ""},
                "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                            "allow_stdin": False, "stop_on_error": True},
            })
            async for message in ws:
                data = json.loads(message.data)
                if data.get("parent_header", {}).get("msg_id") == msg_id and data["msg_type"] == "execute_result":
                    return str(data["content"]["data"]["text/plain"])
        raise AssertionError("no execute_result")


def kernel_round_trip(base: str, token: str, code: str = "1+1", timeout: float = 60) -> str:
    """Start a kernel through the proxy and run ``code`` over its WebSocket; the text/plain result."""
    return asyncio.run(asyncio.wait_for(_kernel_round_trip(base, token, code), timeout))

"""IDE sessions for real: JupyterLab, Notebook and code-server, run as a POSIX user, used through /s/."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from tests.conftest import Server, sign_in_form
from tests.sessions_helpers import kernel_round_trip, launch, session_server, wait_state

pytestmark = pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(),
                                reason="IDEs not installed: run scripts/install-ides.sh (make test does)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with session_server(tmp_path_factory.mktemp("sessions") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def owner(srv: Server, posix_user: pwd.struct_passwd) -> str:
    return srv.token(posix_user.pw_name)


def processes_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines()[1:] if text in line and " Z" not in line and "ps -eo" not in line]


def test_jupyterlab_through_the_proxy(srv: Server, owner: str, posix_user: pwd.struct_passwd) -> None:
    started = launch(srv, owner, "JupyterLab", name="lab")
    assert started["url"] == f"/s/{started['url'][3:8]}21f2ed72{started['id']}/" and started["project_id"] == "21f2ed72"
    running = wait_state(srv, owner, started["id"], ("running",))
    assert running["seen_states"][-1] == "running" and "starting" in running["seen_states"]
    assert running["running"] is True and running["workbench"] == "JupyterLab" and running["label"] == "lab"
    assert running["working_dir"] == posix_user.pw_dir
    base = srv.url + started["url"]
    status = httpx.get(base + "api/status", headers={"Authorization": f"Bearer {owner}"})
    assert status.status_code == 200 and "started" in status.json()
    assert kernel_round_trip(base, owner) == "2"
    jobs = srv.rpc("get_session", owner, session_id=started["id"], include_jobs=True)["jobs"]
    assert [j["status"] for j in jobs] == ["Running"] and jobs[0]["user"] == posix_user.pw_name
    token_env = [item for item in jobs[0]["environment"] if item["name"] == "JUPYTER_TOKEN"]
    assert token_env == [{"name": "JUPYTER_TOKEN", "value": "********"}]  # the secret is the proxy's alone
    # The IDE runs as the session's user.
    assert pwd.getpwuid(os.stat(f"/proc/{jobs[0]['pid']}").st_uid).pw_name == posix_user.pw_name

    state_dir = Path(posix_user.pw_dir) / ".local/share/openworkbench/sessions" / started["id"]
    assert state_dir.is_dir()
    srv.rpc("stop_session", owner, session_ids=started["id"])
    done = wait_state(srv, owner, started["id"], ("finished", "killed"))
    assert done["activity_state"] == "finished" and done["running"] is False
    assert processes_mentioning(started["id"]) == []
    assert not state_dir.exists()  # a stopped (not suspended) session keeps nothing


def test_notebook_and_fields_filter(srv: Server, owner: str, posix_user: pwd.struct_passwd) -> None:
    project = Path(posix_user.pw_dir) / "project"
    project.mkdir(exist_ok=True)
    os.chown(project, posix_user.pw_uid, posix_user.pw_gid)
    started = launch(srv, owner, "Jupyter Notebook", working_directory="project")  # relative: to the home
    assert wait_state(srv, owner, started["id"], ("running",))["working_dir"] == str(project)
    base = srv.url + started["url"]
    assert kernel_round_trip(base, owner, "6*7") == "42"
    assert httpx.get(base + "tree", headers={"Authorization": f"Bearer {owner}"}).status_code == 200
    only = srv.rpc("get_session", owner, session_id=started["id"], fields=["id", "activity_state"])["sessions"]
    assert only == [{"id": started["id"], "activity_state": "running"}]
    srv.rpc("stop_session", owner, session_ids=started["id"], force_quit=True)
    assert wait_state(srv, owner, started["id"], ("killed",))["activity_state"] == "killed"
    assert processes_mentioning(started["id"]) == []


CONTROL = 2  # VS Code's ProtocolMessageType.Control (src/vs/base/parts/ipc/common/ipc.net.ts)


def vscode_message(kind: int, body: dict[str, object]) -> bytes:
    """A message of VS Code's PersistentProtocol: type, id, ack, length (13 bytes, big-endian), then the data."""
    data = json.dumps(body).encode()
    return struct.pack(">BIII", kind, 0, 0, len(data)) + data


def test_code_server_page_and_websocket(srv: Server, owner: str) -> None:
    started = launch(srv, owner, "VS Code")
    wait_state(srv, owner, started["id"], ("running",))
    base = srv.url + started["url"]
    page = httpx.get(base, headers={"Authorization": f"Bearer {owner}"}, follow_redirects=True)
    assert page.status_code == 200 and "vscode" in page.text.lower()
    ws_url = base.replace("http://", "ws://") + "?reconnectionToken=t1&reconnection=false&skipWebSocketFrames=false"

    async def authenticate() -> dict[str, object]:
        """The first exchange of VS Code's remote protocol over the proxied socket: our `auth` control
        message, answered by code-server's `sign` (its server code, not the proxy, writes that answer)."""
        headers = {"Authorization": f"Bearer {owner}"}
        async with aiohttp.ClientSession(headers=headers) as client, client.ws_connect(ws_url) as ws:
            await ws.send_bytes(vscode_message(CONTROL, {"type": "auth", "auth": "00000000000000000000",
                                                         "data": "openworkbench-test"}))
            while True:
                frame = await ws.receive(timeout=60)
                assert frame.type == aiohttp.WSMsgType.BINARY, frame
                if frame.data[0] == CONTROL:
                    return dict(json.loads(frame.data[13:]))

    answer = asyncio.run(authenticate())
    assert answer["type"] == "sign", answer
    srv.rpc("stop_session", owner, session_ids=started["id"])
    wait_state(srv, owner, started["id"], ("finished", "killed"))
    assert processes_mentioning(started["id"]) == []


def test_only_the_owner_reaches_a_session(srv: Server, owner: str, posix_user: pwd.struct_passwd) -> None:
    started = launch(srv, owner, "JupyterLab")
    running = wait_state(srv, owner, started["id"], ("running",))
    url = srv.url + started["url"] + "api/status"
    assert httpx.get(url).status_code == 401
    browser = httpx.get(url, headers={"Accept": "text/html"})
    assert browser.status_code == 302 and browser.headers["location"].startswith("/auth/sign-in?next=")
    # Anyone else gets what a URL no session has gets: a stranger cannot even learn that it exists.
    other = srv.token("someone-else")
    nowhere = srv.url + "/s/0000021f2ed7200000000/api/status"
    for token in (other, srv.token("an-admin", "super-admin")):
        refused = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        unknown = httpx.get(nowhere, headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == unknown.status_code == 404
        assert refused.json()["error"]["message"].replace(started["url"], "X") == \
            unknown.json()["error"]["message"].replace("/s/0000021f2ed7200000000/", "X")

    # A browser signs in with the token and then passes by cookie alone.
    client = httpx.Client(base_url=srv.url)
    signed = sign_in_form(client, owner, started["url"])
    assert signed.status_code == 303 and signed.headers["location"] == started["url"]
    assert client.get(started["url"] + "api/status").status_code == 200
    assert sign_in_form(client, "wrong").status_code == 401

    # No other local user can reach the IDE's socket directly.
    socket_path = f"{srv_runtime(srv)}/{posix_user.pw_uid}/{started['id']}.sock"
    assert Path(socket_path).exists()
    intruder = subprocess.run(
        ["/usr/bin/python3", "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({socket_path!r})"],
        user="nobody", capture_output=True, text=True,
    )
    assert intruder.returncode != 0 and "Permission denied" in intruder.stderr
    assert running["running"]
    srv.rpc("stop_session", owner, session_ids=started["id"], force_quit=True)
    wait_state(srv, owner, started["id"], ("killed",))


def srv_runtime(srv: Server) -> str:
    line = next(line for line in srv.config_text.splitlines() if line.startswith("runtime_dir"))
    return line.split("=", 1)[1].strip().strip('"')


def test_suspend_and_resume_keep_saved_work_and_the_url(srv: Server, owner: str) -> None:
    started = launch(srv, owner, "JupyterLab")
    wait_state(srv, owner, started["id"], ("running",))
    base = srv.url + started["url"]
    auth = {"Authorization": f"Bearer {owner}"}
    notebook = {"type": "notebook", "format": "json", "content": {
        "cells": [{"cell_type": "code", "source": "x = 41 + 1", "metadata": {}, "outputs": [],
                   "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}
    name = f"kept-{started['id']}.ipynb"
    assert httpx.put(base + f"api/contents/{name}", json=notebook, headers=auth).status_code in (200, 201)
    pid = srv.rpc("get_session", owner, session_id=started["id"], include_jobs=True)["jobs"][0]["pid"]

    srv.rpc("stop_session", owner, session_ids=started["id"], suspend_session=True)
    suspended = wait_state(srv, owner, started["id"], ("suspended",))
    assert "suspending" in suspended["seen_states"] or suspended["seen_states"] == ["suspended"]
    assert suspended["suspend_size"] > 0 and suspended["running"] is False
    assert not Path(f"/proc/{pid}").exists()
    assert httpx.get(base + "api/status", headers=auth).status_code == 503

    resumed = srv.rpc("resume_session", owner, session_id=started["id"])
    assert resumed == {"id": started["id"], "url": started["url"], "project_id": started["project_id"]}
    again = wait_state(srv, owner, started["id"], ("running",))
    assert "resuming" in again["seen_states"]
    model = httpx.get(base + f"api/contents/{name}", headers=auth).json()
    assert model["content"]["cells"][0]["source"] == "x = 41 + 1"
    srv.rpc("stop_session", owner, session_ids=started["id"])
    wait_state(srv, owner, started["id"], ("finished", "killed"))


def test_hooks_environment_and_failures(srv: Server, owner: str, posix_user: pwd.struct_passwd,
                                        tmp_path: Path) -> None:
    home = Path(posix_user.pw_dir)
    hook = home / "start-hook.sh"
    hook.write_text('#!/bin/sh\necho "hook ran as $(id -un) with $GREETING"\n')
    hook.chmod(0o755)
    os.chown(hook, posix_user.pw_uid, posix_user.pw_gid)
    failing = home / "bad-hook.sh"
    failing.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    failing.chmod(0o755)
    started = launch(srv, owner, "JupyterLab", start_hooks=[{"exe": str(hook)}], stop_hooks={"exe": str(hook)},
                     environment=[{"name": "GREETING", "value": "hello"}])
    wait_state(srv, owner, started["id"], ("running",))
    srv.rpc("stop_session", owner, session_ids=started["id"])
    wait_state(srv, owner, started["id"], ("finished",))
    jobs = srv.rpc("get_session", owner, session_id=started["id"], include_jobs=True)["jobs"]
    hooks = [j for j in jobs if j["tags"] != ["session"]]
    assert len(hooks) == 2 and all(j["exitCode"] == 0 for j in hooks)
    out = srv.client.post(f"{srv.url}/api/get_job_output", headers={"Authorization": f"Bearer {owner}"},
                          json={"method": "get_job_output", "kwparams": {"job_id": hooks[0]["id"]}}).text
    assert f"hook ran as {posix_user.pw_name} with hello" in out

    bad = launch(srv, owner, "JupyterLab", start_hooks=[{"exe": str(failing)}])
    failed = wait_state(srv, owner, bad["id"], ("failed",))
    assert "start hook" in failed["status_detail"] and "exit code 3" in failed["status_detail"]

    refused = srv.post("launch_session", owner, workbench="RStudio").json()
    assert refused["error"]["code"] == 3 and "RStudio is not available" in refused["error"]["message"]
    unknown = srv.post("launch_session", owner, workbench="Emacs").json()
    assert unknown["error"]["code"] == 1
    too_big = srv.post("launch_session", owner, workbench="JupyterLab",
                       launch_parameters={"name": "x", "cluster": "Local", "placement_constraints": [],
                                          "resource_limits": [{"type": "cpuCount", "value": "999"}],
                                          "queues": []}).json()
    assert too_big["error"]["code"] == 1 and "exceeds the maximum" in too_big["error"]["message"]
    assert srv.post("stop_session", owner, session_ids="nope").json()["error"]["code"] == 2


def test_restart_readopts_running_sessions(tmp_path: Path, posix_user: pwd.struct_passwd) -> None:
    with session_server(tmp_path / "data") as server:
        token = server.token(posix_user.pw_name)
        keep = launch(server, token, "JupyterLab")
        lose = launch(server, token, "JupyterLab")
        done = launch(server, token, "JupyterLab")
        for item in (keep, lose, done):
            wait_state(server, token, item["id"], ("running",))

        def ide_pid(item: dict[str, Any]) -> int:
            return int(server.rpc("get_session", token, session_id=item["id"], include_jobs=True)["jobs"][0]["pid"])

        lost_pid, done_pid = ide_pid(lose), ide_pid(done)
        server.stop(signal.SIGKILL)
        os.kill(lost_pid, signal.SIGKILL)  # its IDE dies while no server runs
        os.kill(done_pid, signal.SIGTERM)  # this one shuts down cleanly (Jupyter exits 0), as File > Shut Down
        time.sleep(1)
        server.start()
        assert httpx.get(server.url + keep["url"] + "api/status",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
        failed = wait_state(server, token, lose["id"], ("failed",), timeout=30)
        assert failed["status_detail"].startswith("the IDE process ended while the server was down: Killed")
        # An IDE that exited 0 by itself ended; it did not fail (wait_state raises on any other end).
        wait_state(server, token, done["id"], ("finished",), timeout=30)
        server.rpc("stop_session", token, session_ids=keep["id"])
        wait_state(server, token, keep["id"], ("finished", "killed"))


def test_revoking_a_token_closes_its_open_websockets(srv: Server, owner: str, posix_user: pwd.struct_passwd) -> None:
    started = launch(srv, owner, "JupyterLab")
    wait_state(srv, owner, started["id"], ("running",))
    name = f"ws-{started['id']}"
    doomed = srv.accounts().generate_token("user", name, posix_user.pw_name)
    base = srv.url + started["url"]

    async def revoke_while_open() -> str:
        headers = {"Authorization": f"Bearer {doomed}"}
        async with aiohttp.ClientSession(headers=headers) as client:
            async with client.post(f"{base}api/kernels", json={"name": "python3"}) as resp:
                kernel = (await resp.json())["id"]
            ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
            async with client.ws_connect(ws_url) as ws:
                srv.accounts().revoke_token(name)
                message = await asyncio.wait_for(ws.receive(), timeout=60)
                while message.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    message = await asyncio.wait_for(ws.receive(), timeout=60)
                return str(ws.close_code)

    assert asyncio.run(revoke_while_open()) == "4401"
    srv.rpc("stop_session", owner, session_ids=started["id"], force_quit=True)
    wait_state(srv, owner, started["id"], ("killed",))


CALL_API_FROM_THE_KERNEL = """
import json, os, urllib.request
request = urllib.request.Request(
    os.environ["RS_SERVER_ADDRESS"] + "/api/get_session", data=b'{"method": "get_session", "kwparams": {}}',
    headers={"X-RS-Session-Server-RPC-Cookie": os.environ["RS_SESSION_RPC_COOKIE"]})
[item["id"] for item in json.load(urllib.request.urlopen(request))["result"]["sessions"]], \\
    os.environ["RS_SESSION_RPC_COOKIE"]
"""


def test_code_in_a_session_calls_the_api_with_its_rpc_cookie(srv: Server, owner: str,
                                                             posix_user: pwd.struct_passwd) -> None:
    started = launch(srv, owner, "JupyterLab")
    wait_state(srv, owner, started["id"], ("running",))
    ids, cookie = eval(kernel_round_trip(srv.url + started["url"], owner, CALL_API_FROM_THE_KERNEL))
    assert started["id"] in ids
    job = srv.rpc("get_session", owner, session_id=started["id"], include_jobs=True)["jobs"][0]
    shown = {item["name"]: item["value"] for item in job["environment"]}
    assert shown["RS_SESSION_RPC_COOKIE"] == "********" and shown["RS_SERVER_ADDRESS"] == srv.url

    def call(method: str, value: str) -> httpx.Response:
        return httpx.post(f"{srv.url}/api/{method}", json={}, headers={"X-RS-Session-Server-RPC-Cookie": value})

    assert call("get_session", cookie).status_code == 200
    assert call("get_users", cookie).json()["error"]["code"] == 403  # the session's user, with a user's power
    assert call("get_session", cookie[:-4] + "0000").status_code == 401  # forged
    assert call("get_session", "nosuch.cookie").status_code == 401
    srv.rpc("stop_session", owner, session_ids=started["id"])
    wait_state(srv, owner, started["id"], ("finished",))
    assert "ended" in call("get_session", cookie).json()["error"]["message"]

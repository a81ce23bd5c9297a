"""The client side against a real server: ``openworkbench.client`` (typed errors, streamed output) and the
``workbench`` CLI client run as a subprocess (sessions with a real JupyterLab as a real POSIX user, jobs,
--json parsed, exit codes, one line per error and never a traceback)."""

from __future__ import annotations

import http.server
import json
import pwd
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openworkbench import errors
from openworkbench.client import Client
from tests.conftest import WORKBENCH, Server, clean_env, free_port
from tests.sessions_helpers import session_server, wait_state

JUPYTER_LAB = Path("/opt/openworkbench/jupyter/bin/jupyter-lab")
needs_ides = pytest.mark.skipif(not JUPYTER_LAB.exists(), reason="IDEs not installed: run scripts/install-ides.sh")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with session_server(tmp_path_factory.mktemp("clients") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def token(srv: Server, posix_user: pwd.struct_passwd) -> str:
    """A user token of a real POSIX user: jobs and sessions run as them."""
    return srv.token(posix_user.pw_name)


def cli(server: str | None, key: str | None, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = clean_env()
    env.update({name: value for name, value in (("WORKBENCH_SERVER", server), ("WORKBENCH_API_KEY", key)) if value})
    proc = subprocess.run([WORKBENCH, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def as_json(proc: subprocess.CompletedProcess[str]) -> object:
    return json.loads(ok(proc))


def one_error(proc: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """A clean failure: the documented status, nothing on stdout, one line on stderr naming ``words``."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("workbench: error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# -- the Python client -----------------------------------------------------------------------------


def test_client_raises_the_class_of_each_error(srv: Server, token: str) -> None:
    with Client(srv.url, "not-a-token") as bad, pytest.raises(errors.Unauthenticated) as caught:
        bad.version()
    assert caught.value.code == 401 and caught.value.http_status == 401 and "Invalid or revoked" in caught.value.message
    with Client(srv.url, token) as client:
        assert client.whoami()["kind"] == "user"
        with pytest.raises(errors.PermissionDenied) as denied:
            client.get_users()
        assert denied.value.code == 403
        with pytest.raises(errors.NotFound) as missing:
            client.stop_job("nope")
        assert (missing.value.code, missing.value.http_status) == (2, 200) and "nope" in missing.value.message
        with pytest.raises(errors.BadRequest, match=r"kwparams\.job\.colour"):
            client.launch_job({"name": "x", "command": "true", "colour": "red"})
        with pytest.raises(errors.InvalidParameter, match="unknown cluster 'HPC'"):
            client.launch_job({"name": "x", "command": "true", "cluster": "HPC"})
        with pytest.raises(errors.UnknownMethod):
            client.call("no_such_method")
    with Client(f"http://127.0.0.1:{free_port()}", token) as nobody, pytest.raises(errors.ServerUnreachable):
        nobody.version()
    with pytest.raises(errors.ConfigError, match="WORKBENCH_SERVER"):
        Client(None, token)


def test_get_job_output_streams_while_the_job_runs(srv: Server, token: str) -> None:
    with Client(srv.url, token) as client:
        job = client.launch_job({"name": "stream", "command": "echo first; echo oops >&2; sleep 3; echo last"})
        chunks = client.get_job_output(job["id"])
        first = next(chunks)
        # The first chunk is here while the job still runs: it was streamed, not collected at the end.
        assert client.job(job["id"])["status"] in ("Pending", "Running")
        rest = list(chunks)
        text = {kind: "".join(c["output"] for c in [first, *rest] if c["outputType"] == kind)
                for kind in ("stdout", "stderr")}
        assert text == {"stdout": "first\nlast\n", "stderr": "oops\n"}
        assert all(c["jobId"] == job["id"] for c in [first, *rest])
        assert client.job(job["id"])["status"] == "Finished"

        # Without follow: what it has written so far, and back while the job still runs.
        slow = client.launch_job({"name": "slow", "command": "echo early; sleep 30; echo late"})
        time.sleep(1)
        so_far = "".join(c["output"] for c in client.get_job_output(slow["id"], follow=False, quiet=1.0))
        assert so_far == "early\n" and client.job(slow["id"])["status"] == "Running"
        client.stop_job(slow["id"], force_quit=True)

        with pytest.raises(errors.NotFound):
            list(client.get_job_output("nope"))


# -- the CLI: jobs, compute envs, identity -----------------------------------------------------------


def test_cli_jobs(srv: Server, token: str, posix_user: pwd.struct_passwd) -> None:
    job = as_json(cli(srv.url, token, "jobs", "launch", "--json", "--name", "cli job", "--", "/bin/sh", "-c",
                      "echo out; echo err >&2"))
    assert isinstance(job, dict) and job["name"] == "cli job" and job["user"] == posix_user.pw_name
    srv.wait_job(token, job["id"])
    output = cli(srv.url, token, "jobs", "output", job["id"])
    assert (ok(output), output.stderr) == ("out\n", "err\n")
    lines = [json.loads(line) for line in ok(cli(srv.url, token, "jobs", "output", "--json", job["id"])).splitlines()]
    assert {(c["outputType"], c["output"]) for c in lines} == {("stdout", "out\n"), ("stderr", "err\n")}

    listed = as_json(cli(srv.url, token, "jobs", "list", "--json"))
    assert isinstance(listed, list) and job["id"] in [j["id"] for j in listed]
    assert job["id"] in ok(cli(srv.url, token, "jobs", "list"))
    shown = as_json(cli(srv.url, token, "jobs", "show", "--json", job["id"]))
    assert isinstance(shown, dict) and (shown["status"], shown["exitCode"]) == ("Finished", 0)
    table = ok(cli(srv.url, token, "jobs", "show", job["id"]))
    assert "Finished" in table and "cli job" in table

    # --wait: the exit status says whether the job succeeded.
    failed = cli(srv.url, token, "jobs", "launch", "--wait", "--json", "--command", "exit 3")
    assert failed.returncode == 5 and json.loads(failed.stdout)["exitCode"] == 3
    assert "exit code 3" in failed.stderr

    # --follow prints until the job has ended, as it is written.
    follow = cli(srv.url, token, "jobs", "output", "--follow", as_json(cli(
        srv.url, token, "jobs", "launch", "--json", "--command", "for i in 1 2 3; do echo $i; sleep 1; done"))["id"])
    assert ok(follow) == "1\n2\n3\n"

    sleeper = as_json(cli(srv.url, token, "jobs", "launch", "--json", "--", "/bin/sleep", "60"))["id"]
    srv.wait_job(token, sleeper, ("Running",))
    assert "asked to kill" in ok(cli(srv.url, token, "jobs", "stop", "--force", sleeper))
    assert srv.wait_job(token, sleeper)["status"] == "Killed"
    one_error(cli(srv.url, token, "jobs", "stop", sleeper), 1, "has already ended")
    one_error(cli(srv.url, token, "jobs", "show", "nope"), 1, "no job 'nope'")


def test_cli_compute_envs_whoami_version(srv: Server, token: str, posix_user: pwd.struct_passwd) -> None:
    envs = as_json(cli(srv.url, token, "compute-envs", "--json"))
    assert isinstance(envs, dict) and [c["name"] for c in envs["clusters"]] == ["Local"]
    table = ok(cli(srv.url, token, "compute-envs"))
    assert "Local" in table and "JupyterLab" in table
    me = as_json(cli(srv.url, token, "whoami", "--json"))
    assert me == {"username": posix_user.pw_name, "kind": "user", "server": srv.url}
    assert ok(cli(srv.url, token, "whoami")).startswith(f"{posix_user.pw_name} (user token)")
    version = as_json(cli(srv.url, token, "version", "--json"))
    assert isinstance(version, dict) and version["server"]["version"] == version["client"] == "0.1.0"
    assert ok(cli(None, None, "version")) == "workbench 0.1.0\n"  # no server: this program's alone


# -- the CLI: sessions with a real JupyterLab ---------------------------------------------------------


@needs_ides
def test_cli_sessions(srv: Server, token: str) -> None:
    launched = cli(srv.url, token, "sessions", "launch", "jupyterlab", "--name", "from cli", "--wait", "--json")
    session = as_json(launched)
    assert isinstance(session, dict) and session["activity_state"] == "running"
    sid, address = session["id"], session["address"]
    assert address == srv.url + session["url"]
    # Off a terminal the spinner becomes one line per state, on stderr.
    assert f"session {sid}: running" in launched.stderr and f"session {sid}: starting" in launched.stderr
    assert ok(cli(srv.url, token, "sessions", "open", sid)) == address + "\n"
    assert httpx.get(address + "api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    listed = as_json(cli(srv.url, token, "sessions", "list", "--json"))
    assert isinstance(listed, list) and {s["id"]: s["activity_state"] for s in listed}[sid] == "running"
    assert sid in ok(cli(srv.url, token, "sessions", "list"))

    assert ok(cli(srv.url, token, "sessions", "suspend", sid, "--wait")) == f"session {sid}: suspended\n"
    resumed = as_json(cli(srv.url, token, "sessions", "resume", sid, "--wait", "--json"))
    assert isinstance(resumed, dict) and resumed["activity_state"] == "running"
    assert as_json(cli(srv.url, token, "sessions", "stop", sid, "--wait", "--json")) == {sid: "finished"}
    one_error(cli(srv.url, token, "sessions", "stop", sid), 1, "has already ended")
    ended = cli(srv.url, token, "sessions", "open", sid)
    assert ok(ended) == address + "\n" and "cannot be opened" in ended.stderr

    # Without --wait: the address at once; the session starts on its own.
    quick = cli(srv.url, token, "sessions", "launch", "JupyterLab")
    new_id = ok(quick).split()[2]
    assert ok(quick).startswith(f"launched session {new_id} (JupyterLab): {srv.url}/s/")
    wait_state(srv, token, new_id, ("running",))
    ok(cli(srv.url, token, "sessions", "stop", "--force", new_id))
    wait_state(srv, token, new_id, ("killed",))


# -- the CLI: failures --------------------------------------------------------------------------------


class _NotTheApi(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b"<html><body>Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_cli_errors_are_one_line_with_documented_exit_codes(srv: Server, token: str) -> None:
    one_error(cli(f"http://127.0.0.1:{free_port()}", token, "sessions", "list"), 3, "cannot reach")
    one_error(cli(srv.url, "bad-token", "sessions", "list"), 4, "Invalid or revoked API token")
    one_error(cli(srv.url, token, "sessions", "list", "--user", "root"), 4, "Permission denied")
    one_error(cli(srv.url, token, "sessions", "stop", "deadbeef"), 1, "no session 'deadbeef'")
    one_error(cli(srv.url, token, "sessions", "resume", "deadbeef"), 1, "no session 'deadbeef'")
    one_error(cli(srv.url, token, "sessions", "open", "deadbeef"), 1, "no session 'deadbeef'")
    one_error(cli(srv.url, token, "sessions", "launch", "Emacs"), 1, "unknown workbench 'Emacs'")
    one_error(cli(None, token, "whoami"), 2, "WORKBENCH_SERVER")
    one_error(cli(srv.url, None, "whoami"), 2, "WORKBENCH_API_KEY")
    one_error(cli("ftp://example", token, "whoami"), 2, "http://")
    usage = cli(srv.url, token, "jobs", "launch")
    assert usage.returncode == 2 and "EXE" in usage.stderr and usage.stdout == ""
    assert cli(srv.url, token, "sessions", "list", "--no-such-flag").returncode == 2

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotTheApi)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        one_error(cli(f"http://127.0.0.1:{proxy.server_port}", token, "whoami"), 3, "HTTP 502", "Bad Gateway")
    finally:
        proxy.shutdown()

"""A JupyterLab session on a real Slurm cluster, used through the proxy."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.sessions_helpers import kernel_round_trip, launch, session_server, wait_state

SLURM_CONF = os.environ.get("WORKBENCH_TEST_SLURM_CONF", "")
pytestmark = [
    pytest.mark.skipif(not SLURM_CONF, reason="no test Slurm cluster: run the suite with `make test`"),
    pytest.mark.skipif(not Path("/opt/openworkbench/jupyter/bin/jupyter-lab").exists(), reason="IDEs not installed"),
]


def on_slurm(partition: str = "main", cpus: str | None = None) -> dict[str, object]:
    limits = [{"type": "cpuCount", "value": cpus}] if cpus else []
    return {"name": "on slurm", "cluster": "Slurm", "placement_constraints": [], "resource_limits": limits,
            "queues": [partition]}


@pytest.fixture(scope="module")
def slurm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    shared = Path("/tmp") / f"owb-shared-{secrets.token_hex(4)}"
    shared.mkdir(mode=0o755)
    # One start slot: a session waiting in Slurm's queue must not hold it (the queued test below).
    extra = ('max_concurrent_starts = 1\n'
             f'[clusters.Local]\ntype = "Local"\n[clusters.Slurm]\ntype = "Slurm"\nslurm_conf = "{SLURM_CONF}"\n'
             f'output_dir = "{shared}"\npoll_interval_s = 0.5\n')
    with session_server(tmp_path_factory.mktemp("slurm-sessions") / "data", extra) as server:
        yield server
    shutil.rmtree(shared, ignore_errors=True)


def test_jupyterlab_on_slurm_through_the_proxy(slurm_server: Server, posix_user: pwd.struct_passwd) -> None:
    token = slurm_server.token(posix_user.pw_name)
    started = launch(slurm_server, token, "JupyterLab", launch_parameters=on_slurm())
    running = wait_state(slurm_server, token, started["id"], ("running",), timeout=120)
    assert running["launch_parameters"]["cluster"] == "Slurm"
    [job] = slurm_server.rpc("get_session", token, session_id=started["id"], include_jobs=True)["jobs"]
    assert job["cluster"] == "Slurm" and job["status"] == "Running" and job["user"] == posix_user.pw_name
    base = slurm_server.url + started["url"]
    status = httpx.get(base + "api/status", headers={"Authorization": f"Bearer {token}"})
    assert status.status_code == 200
    assert kernel_round_trip(base, token) == "2"
    # The IDE checks its own secret: straight to its port without the proxy, it refuses.
    endpoint = open_endpoint(slurm_server, started["id"])
    direct = httpx.get(f"http://{endpoint}{started['url']}api/contents")
    assert direct.status_code == 403

    slurm_server.rpc("stop_session", token, session_ids=started["id"], suspend_session=True)
    assert wait_state(slurm_server, token, started["id"], ("suspended",), timeout=60)["suspend_size"] > 0
    slurm_server.rpc("resume_session", token, session_id=started["id"])
    wait_state(slurm_server, token, started["id"], ("running",), timeout=120)
    assert kernel_round_trip(base, token, "3*3") == "9"
    slurm_server.rpc("stop_session", token, session_ids=started["id"])
    wait_state(slurm_server, token, started["id"], ("finished", "killed"), timeout=60)


def open_endpoint(server: Server, session_id: str) -> str:
    config = server.config_file.read_text()
    shared = next(line for line in config.splitlines() if line.startswith("output_dir")).split('"')[1]
    host, port = (Path(shared) / "sessions" / session_id / "endpoint").read_text().split()
    return f"{host}:{port}"


def test_a_queued_session_waits_with_slurms_reason_and_can_be_canceled(
    slurm_server: Server, posix_user: pwd.struct_passwd
) -> None:
    token = slurm_server.token(posix_user.pw_name)
    env = {**os.environ, "SLURM_CONF": SLURM_CONF}
    # Take every CPU, so the session's job has to wait in the queue.
    blocker = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=2", "--uid", posix_user.pw_name,
                              "--chdir=/tmp", "--output=/dev/null", "--wrap", "sleep 120"],
                             env=env, capture_output=True, text=True, check=True).stdout.strip()
    try:
        started = launch(slurm_server, token, "JupyterLab", launch_parameters=on_slurm(cpus="2"))
        detail = wait_state(slurm_server, token, started["id"], ("pending",), timeout=30)["status_detail"]
        end = time.monotonic() + 15
        while not detail and time.monotonic() < end:  # the reason arrives with the next squeue
            time.sleep(0.2)
            detail = wait_state(slurm_server, token, started["id"], ("pending",))["status_detail"]
        assert detail in ("Resources", "Priority")  # Slurm's own reason, and no start timeout while queued
        # The one start slot is not held by a start that waits in Slurm: a Local session starts meanwhile (its
        # working directory is missing: it fails at once, having had its turn; queued, it would stay launching).
        local = launch(slurm_server, token, "JupyterLab", name="local", working_directory="/nonexistent-dir")
        failed = wait_state(slurm_server, token, local["id"], ("failed",), timeout=30)
        assert "nonexistent-dir" in failed["status_detail"], failed
        assert wait_state(slurm_server, token, started["id"], ("pending",))["status_detail"] in ("Resources",
                                                                                            "Priority")
        slurm_server.rpc("stop_session", token, session_ids=started["id"])
        assert wait_state(slurm_server, token, started["id"], ("canceled",), timeout=60)["activity_state"] == "canceled"
    finally:
        subprocess.run(["scancel", blocker], env=env, check=False)

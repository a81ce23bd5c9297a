"""Job events, before and after (docs/performance.md, "Job events"): store statements and server CPU during one
JupyterLab start (a 2 s start hook first), statements while a session runs, and a follower's delay from its
job's end to the end of its stream.

    sudo .venv/bin/python -m bench.job_events [USER]          # this checkout (a new POSIX user without USER)
    PYTHONPATH=/path/to/old/src sudo -E .venv/bin/python -m bench.job_events  # another one's code
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import tests.conftest as conftest
from tests.sessions_helpers import launch, session_server, wait_state

WRAPPER = """
import os, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
out = open(os.environ["OWB_BENCH_STATEMENTS"], "a", buffering=1)

@event.listens_for(Engine, "before_cursor_execute")
def count(conn, cursor, statement, *rest):
    out.write(("job-read" if "FROM jobs JOIN users" in statement and "WHERE jobs.id = " in statement else "other")
              + "\\n")

from openworkbench.cli.main import main
sys.argv[0] = "workbench"
main()
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(user: str) -> None:
    work = Path(tempfile.mkdtemp(prefix="owb-bench-events-"))
    log = work / "statements"
    log.touch()
    wrapper = work / "workbench"
    wrapper.write_text(f"#!{sys.executable}\n{WRAPPER}")
    wrapper.chmod(0o755)
    conftest.WORKBENCH = str(wrapper)
    os.environ["OWB_BENCH_STATEMENTS"] = str(log)
    home = Path(os.path.expanduser(f"~{user}"))
    hook = home / "bench-two-second-hook.sh"
    hook.write_text("#!/bin/sh\nsleep 2\n")
    hook.chmod(0o755)

    def counts() -> tuple[int, int]:
        lines = log.read_text().splitlines()
        return lines.count("job-read"), len(lines)

    with session_server(work / "data") as server:
        assert server.proc is not None
        token = server.token(user)
        reads0, all0 = counts()
        cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        started = launch(server, token, "JupyterLab", start_hooks=[{"exe": str(hook)}])
        wait_state(server, token, started["id"], ("running",))
        reads1, all1 = counts()
        cpu1, t1 = cpu_seconds(server.proc.pid), time.monotonic()
        print(f"start: {t1 - t0:.1f} s, job reads {reads1 - reads0}, statements {all1 - all0}, "
              f"server CPU {cpu1 - cpu0:.2f} s")
        time.sleep(10)
        reads2, all2 = counts()
        print(f"10 s of one running session: job reads {reads2 - reads1}, statements {all2 - all1}, "
              f"server CPU {cpu_seconds(server.proc.pid) - cpu1:.2f} s")
        delays = []
        for _ in range(5):
            stamp = home / "bench-ended-at"
            job = server.rpc("launch_job", token, job={"name": "bench", "command":
                                                         f"sleep 0.5; date +%s.%N > {stamp}"})["job"]
            with server.client.stream("POST", f"{server.url}/api/get_job_output",
                                      headers={"Authorization": f"Bearer {token}"},
                                      json={"method": "get_job_output", "kwparams": {"job_id": job["id"]}}) as resp:
                for _line in resp.iter_lines():
                    pass
            delays.append(time.time() - float(stamp.read_text()))
        print("follower, job end -> stream end (ms):", " ".join(f"{d * 1000:.0f}" for d in sorted(delays)))
        server.rpc("stop_session", token, session_ids=started["id"], force_quit=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with conftest.temporary_posix_user("owbb") as account:
            main(account.pw_name)

"""Slurm, on the throwaway single-node cluster of scripts/with-slurm.sh (it sets WORKBENCH_TEST_SLURM_CONF).

1. Submit: ``launch_job`` on the Slurm cluster -> job id, against raw ``sbatch --parsable`` of the same
   command as the same user (``setpriv --reuid USER ... -- sbatch``, root's cheapest way), interleaved.
2. Scheduler calls per poll with 1 / 100 / 1,000 jobs queued: the backend polled as the server's monitor
   polls it (in-process, the backend's own command counters), against one bare ``squeue`` of those jobs.

Usage: scripts/with-slurm.sh .venv/bin/python -m bench.slurm USER OUT.json
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROUNDS, Server, summary
from openworkbench.clusters.base import JobRef
from openworkbench.clusters.slurm import SlurmCluster
from openworkbench.config import ClusterSettings
from openworkbench.models import JobSpec
from openworkbench.services.jobs import posix_account

SUBMITS_PER_ROUND = 10
QUEUE_SIZES = (1, 100, 1000)


def raw_sbatch(user: str, conf: str, out_dir: Path) -> float:
    # setpriv is the cheapest way for root to run a command as the user (runuser adds a PAM session, ~5 ms).
    account = pwd.getpwnam(user)
    argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--",
            "sbatch", "--parsable", "--job-name", "raw", "-o", str(out_dir / "raw-%j.out"), "--wrap", "true"]
    began = time.monotonic()
    subprocess.run(argv, env={"PATH": os.environ["PATH"], "SLURM_CONF": conf}, check=True, capture_output=True,
                   cwd="/")
    return time.monotonic() - began


def submit(user: str, conf: str, out_dir: Path, workdir: Path) -> dict[str, Any]:
    config = (f'[clusters.Local]\ntype = "Local"\n[clusters.Slurm]\ntype = "Slurm"\nslurm_conf = "{conf}"\n'
              f'output_dir = "{out_dir}"\n')
    server = Server(workdir / "data", config_text=config).start()
    try:
        token = server.token(user)

        def ours() -> float:
            began = time.monotonic()
            server.rpc("launch_job", token, job={"name": "bench", "exe": "/bin/true", "cluster": "Slurm"})
            return time.monotonic() - began

        ours(), raw_sbatch(user, conf, out_dir)  # warm-up
        per_round: dict[str, list[float]] = {"ours": [], "raw_sbatch": []}
        for _ in range(ROUNDS):
            for name, call in (("ours", ours), ("raw_sbatch", lambda: raw_sbatch(user, conf, out_dir))):
                times = sorted(call() for _ in range(SUBMITS_PER_ROUND))
                per_round[name].append(times[len(times) // 2] * 1000)
    finally:
        server.stop()
    result = {f"{name}_ms": summary(values) for name, values in per_round.items()}
    result["ratio"] = round(result["ours_ms"]["median"] / result["raw_sbatch_ms"]["median"], 3)
    return result


def calls_per_poll(user: str, conf: str, out_dir: Path) -> dict[str, Any]:
    # A short interval: every poll() below asks Slurm (the server's monitor asks once per poll_interval_s).
    cluster = SlurmCluster("Slurm", ClusterSettings(type="Slurm", slurm_conf=conf, output_dir=str(out_dir),
                                                    poll_interval_s=0.001))
    account, spec = posix_account(user), JobSpec(name="queued", exe="/bin/sleep", args=["600"])
    refs: list[JobRef] = []
    out: dict[str, Any] = {}
    env = {"PATH": os.environ["PATH"], "SLURM_CONF": conf}
    for size in QUEUE_SIZES:
        while len(refs) < size:
            job_id = f"q{len(refs):05d}"
            state = cluster.submit(job_id, spec, account)
            refs.append(JobRef(job_id, state.status, spec, account, state.cluster_state or {}))
        cluster.poll(refs)  # first poll: states move from Pending as Slurm reports them
        refs = [JobRef(r.id, "Pending", r.spec, r.account, r.cluster_state) for r in refs]
        before, polls, durations = dict(cluster.commands.counts), 5, []
        for _ in range(polls):
            time.sleep(0.002)
            began = time.monotonic()
            cluster.poll(refs)
            durations.append(time.monotonic() - began)
        calls = {name: (count - before.get(name, 0)) / polls for name, count in cluster.commands.counts.items()
                 if count != before.get(name, 0)}
        began = time.monotonic()
        subprocess.run(["squeue", "-h", "-u", user], env=env, check=True, capture_output=True)
        out[str(size)] = {"ours_calls_per_poll": calls, "ours_poll_ms": summary([d * 1000 for d in durations]),
                          "bare_one_squeue_ms": round((time.monotonic() - began) * 1000, 2)}
    subprocess.run(["scancel", "-u", user], env=env, check=False)
    return out


def main() -> None:
    user, out_file = sys.argv[1], Path(sys.argv[2])
    conf = os.environ["WORKBENCH_TEST_SLURM_CONF"]
    out_dir = Path(tempfile.mkdtemp(prefix="owb-slurm-out-", dir="/tmp"))
    out_dir.chmod(0o711)  # the jobs' user must reach its own files below
    workdir = Path(tempfile.mkdtemp(prefix="owb-bench-slurm-"))
    try:
        result = {"submit": submit(user, conf, out_dir, workdir), "calls_per_poll": calls_per_poll(user, conf, out_dir)}
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
    out_file.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

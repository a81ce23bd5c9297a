"""The Slurm cluster: jobs go through sbatch, are followed with one squeue per poll, stop with scancel.

Everything needed to find a job again is in its ``cluster_state`` (``slurmJobId``, ``dir``), which
the server stores: a restarted server polls the same Slurm jobs and never submits them again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from openworkbench.clusters.base import BAD_ROW_ERRORS, FINAL_STATUSES, Account, Cluster, JobRef, JobState
from openworkbench.clusters.slurm import files
from openworkbench.clusters.slurm.commands import SlurmCommands, slurm_message
from openworkbench.clusters.slurm.info import ClusterInfo, check_spec, describe_slurm
from openworkbench.clusters.slurm.parse import (
    SACCT_FIELDS,
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    SlurmJob,
    parse_nodes,
    parse_partitions,
    parse_sacct,
    parse_scontrol_job,
    parse_squeue,
)
from openworkbench.clusters.slurm.script import (
    FORCE_SIGNAL,
    JobPaths,
    env_file,
    job_paths,
    render_script,
    sbatch_argv,
    slurm_request,
)
from openworkbench.clusters.slurm.states import ACTIVE_STATES, from_exit_file, map_state
from openworkbench.config import ClusterSettings
from openworkbench.errors import ConfigError, FileSystemError, LaunchFailed, NotAvailable, WorkbenchError
from openworkbench.models import JobSpec

log = logging.getLogger(__name__)
INFO_TTL_S = 30.0  # partitions and nodes change rarely; describe() and validate() share this cache


class SlurmCluster(Cluster):
    type = "Slurm"
    queues_jobs = True

    def __init__(self, name: str, settings: ClusterSettings) -> None:
        super().__init__(name, settings)
        key = f"config key 'clusters.{name}"
        if not os.path.isabs(settings.output_dir):
            raise ConfigError(f"{key}.output_dir': must be an absolute path, got '{settings.output_dir}'")
        if settings.slurm_conf and not os.path.isfile(settings.slurm_conf):
            # Slurm's clients would retry a missing slurm.conf for 60 s on every call.
            raise ConfigError(f"{key}.slurm_conf': no file {settings.slurm_conf}")
        self.output_dir = settings.output_dir.rstrip("/") or "/"
        self.commands = SlurmCommands(settings)
        self._lock = threading.Lock()
        self._info: tuple[float, ClusterInfo] | None = None
        self._polled = float("-inf")
        self._reported: dict[str, tuple[str, str]] = {}  # job id -> (status, message) last returned
        self._sacct: bool | None = None  # None: not tried yet

    # -- what the cluster offers ---------------------------------------------------------------
    def info(self) -> ClusterInfo:
        with self._lock:
            cached = self._info
        if cached is not None and time.monotonic() - cached[0] < INFO_TTL_S:
            return cached[1]
        partitions = parse_partitions(self.commands.check("scontrol", ["show", "partition", "-o"]))
        nodes = parse_nodes(self.commands.check("sinfo", ["-h", "-N", "-o", SINFO_FORMAT]))
        info = ClusterInfo(tuple(partitions), tuple(nodes))
        with self._lock:
            self._info = (time.monotonic(), info)
        return info

    def describe(self) -> dict[str, Any]:
        try:
            info = self.info()
        except WorkbenchError as exc:
            log.warning("cluster %s: cannot read Slurm's partitions and nodes: %s", self.name, exc.message)
            info = ClusterInfo((), ())
        return describe_slurm(self.name, self.settings, info)

    def validate(self, spec: JobSpec) -> None:
        check_spec(self.name, self.settings, self.info(), spec)

    # -- launching -----------------------------------------------------------------------------
    def submit(self, job_id: str, spec: JobSpec, account: Account) -> JobState:
        paths = job_paths(self.output_dir, job_id)
        owner = files.Owner.of(account)
        try:
            files.make_job_dir(self.output_dir, paths.dir, owner)
            files.write_private(paths.script, render_script(job_id, spec, account, paths,
                                                              self.settings.max_file_size_mb).encode(), owner)
            files.write_private(paths.env, env_file(spec, account), owner)
            if spec.stdin:
                files.write_private(paths.stdin, spec.stdin.encode(), owner)
            for path in (paths.stdout, paths.stderr):
                files.write_private(path, b"", owner)
        except OSError as exc:
            raise LaunchFailed(f"cannot prepare the job's directory {paths.dir}: {exc}") from None
        except FileSystemError as exc:
            raise LaunchFailed(f"cannot prepare the job's directory {paths.dir}: {exc.message}") from None
        argv = sbatch_argv(job_id, spec, account, paths, slurm_request(spec, self.settings))
        try:
            out = self.commands.check("sbatch", argv, LaunchFailed, user=account, prefix="Slurm refused the job: ")
        except NotAvailable as exc:
            raise LaunchFailed(exc.message) from None
        finally:
            files.remove(paths.env, self.output_dir)  # Slurm keeps its own copy; the file may hold secrets
        slurm_id = out.strip().split(";")[0]  # --parsable: "id" or "id;cluster"
        files.write_private(paths.slurm_id, slurm_id.encode(), files.Owner(None, None))
        return JobState("Pending", host="", stdout_file=paths.stdout, stderr_file=paths.stderr,
                        cluster_state={"slurmJobId": slurm_id, "dir": paths.dir})

    # -- following -----------------------------------------------------------------------------
    def poll(self, jobs: list[JobRef]) -> dict[str, JobState]:
        with self._lock:
            now = time.monotonic()
            if now - self._polled < self.settings.poll_interval_s:
                return {}  # the monitor asks every 100 ms; the controller is asked once per interval
            self._polled = now
        updates: dict[str, JobState] = {}
        by_slurm_id: dict[str, JobRef] = {}
        for ref in jobs:
            slurm_id = ref.cluster_state.get("slurmJobId")
            if slurm_id:
                by_slurm_id[str(slurm_id)] = ref
                continue
            try:
                state = self._recover(ref)
            except BAD_ROW_ERRORS as exc:
                state = self._bad_row(ref, exc)
            if state is not None:
                updates[ref.id] = state
        queue = self._squeue(list(by_slurm_id)) if by_slurm_id else {}
        for slurm_id, ref in by_slurm_id.items():
            try:
                state = self._state_of(ref, slurm_id, queue.get(slurm_id))
            except WorkbenchError as exc:  # a passing failure for this job: ask again next time
                log.warning("cluster %s: job %s (Slurm %s): %s", self.name, ref.id, slurm_id, exc.message)
                continue
            except BAD_ROW_ERRORS as exc:
                state = self._bad_row(ref, exc)
            if state is not None and self._changed(ref, state):
                if state.status in FINAL_STATUSES:
                    out = job_paths(self.output_dir, ref.id)
                    files.seal_outputs(self.output_dir, (out.stdout, out.stderr), ref.account)
                updates[ref.id] = state
        return updates

    def _bad_row(self, ref: JobRef, exc: Exception) -> JobState:
        """This job's data chokes us (a NaN limit of an older version): it alone ends Failed."""
        log.exception("cluster %s: job %s cannot be followed", self.name, ref.id)
        return JobState("Failed", f"the job cannot be followed: {exc}")

    def _squeue(self, slurm_ids: list[str]) -> dict[str, SlurmJob]:
        args = ["-h", "--states=all", f"--jobs={','.join(slurm_ids)}", "-O", SQUEUE_FORMAT]
        result = self.commands.run("squeue", args)
        if result.returncode != 0:
            if "Invalid job id" in result.stderr:
                return {}  # squeue says so only when it knows none of them
            raise NotAvailable(f"squeue failed: {slurm_message(result.stderr)}")
        return parse_squeue(result.stdout)

    def _state_of(self, ref: JobRef, slurm_id: str, job: SlurmJob | None) -> JobState | None:
        job_dir = self._job_dir(ref)
        started = bool(ref.cluster_state.get("started"))
        if job is None:
            job = self._left_queue(slurm_id)
        # The wrapper's record matters only once Slurm says the job is over.
        record = files.read_exit(job_dir) if job is None or job.state not in ACTIVE_STATES else None
        if job is None:
            if record is not None:
                return from_exit_file(record)
            return JobState("Failed", f"Slurm no longer knows job {slurm_id} and it left no exit status: the "
                                      "job's fate is unknown (finished jobs leave Slurm after MinJobAge)")
        state = map_state(job, record, started)
        if state is not None and state.status == "Running" and not started:
            state.cluster_state = {**ref.cluster_state, "started": True}
        return state

    def _left_queue(self, slurm_id: str) -> SlurmJob | None:
        """A job squeue does not list: ask scontrol, then accounting when the cluster has it."""
        result = self.commands.run("scontrol", ["show", "job", "-o", slurm_id])
        if result.returncode == 0 and (job := parse_scontrol_job(result.stdout)) is not None:
            return job
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise NotAvailable(f"scontrol failed: {slurm_message(result.stderr)}")
        if self._sacct is False:
            return None
        found = self.commands.run("sacct", ["-n", "-P", "-X", "-j", slurm_id, "-o", SACCT_FIELDS])
        if found.returncode != 0:
            if "disabled" in found.stderr:  # "Slurm accounting storage is disabled": never ask again
                self._sacct = False
            return None
        self._sacct = True
        return parse_sacct(found.stdout).get(slurm_id)

    def _changed(self, ref: JobRef, state: JobState) -> bool:
        now = (state.status, state.status_message)
        with self._lock:
            before = self._reported.get(ref.id)
            if state.status in FINAL_STATUSES:
                self._reported.pop(ref.id, None)
                return True
            self._reported[ref.id] = now
        return state.status != ref.status or before != now or state.cluster_state is not None

    def _recover(self, ref: JobRef) -> JobState | None:
        """A job stored as launched without a Slurm id: the server died during submit. Find it or submit it."""
        paths = job_paths(self.output_dir, ref.id)
        slurm_id = self._find_lost(ref)
        if slurm_id:
            return JobState("Pending", stdout_file=paths.stdout, stderr_file=paths.stderr,
                            cluster_state={"slurmJobId": slurm_id, "dir": paths.dir})
        if (record := files.read_exit(paths.dir)) is not None:
            return from_exit_file(record)
        if ref.account is None:
            return JobState("Failed", "the job never reached Slurm and its owner has no POSIX account")
        try:
            return self.submit(ref.id, ref.spec, ref.account)
        except WorkbenchError as exc:
            return JobState("Failed", exc.message)

    def _find_lost(self, ref: JobRef) -> str:
        """The Slurm id of a job whose submit was cut short: from its directory, else by our comment."""
        known = files.read_text(job_paths(self.output_dir, ref.id).slurm_id)
        if known or ref.account is None:
            return known
        out = self.commands.check("squeue", ["-h", "--states=all", "-u", ref.account.username,
                                             "-O", "JobID:|,Comment:|"])
        for line in out.splitlines():
            slurm_id, _, comment = line.partition("|")
            if comment.rstrip("|").strip() == f"openworkbench:{ref.id}":
                return slurm_id.strip()
        return ""

    # -- stopping ------------------------------------------------------------------------------
    def stop(self, job: JobRef, force: bool) -> JobState | None:
        slurm_id = job.cluster_state.get("slurmJobId") or self._find_lost(job)
        if not slurm_id:
            return JobState("Canceled", "Canceled before it reached Slurm")
        if force and job.status == "Running":
            # The wrapper SIGKILLs the program's process group; Slurm's own KILL would send TERM first. The mark
            # first: Slurm drops the signal if the batch script has not started yet, and the wrapper reads it then.
            self._mark_forced(job)
            signalled = self.commands.run("scancel", ["--batch", f"--signal={FORCE_SIGNAL}", str(slurm_id)])
            if signalled.returncode == 0:
                return None
        # Pending: Slurm drops it (Canceled). Running: SIGTERM to the program, SIGKILL after KillWait.
        self.commands.check("scancel", [str(slurm_id)])
        return None

    def _job_dir(self, ref: JobRef) -> str:
        """Where the job's files are: the directory it was submitted with (the config may have changed since)."""
        return str(ref.cluster_state.get("dir") or job_paths(self.output_dir, ref.id).dir)

    def _mark_forced(self, job: JobRef) -> None:
        try:  # the server's own file in the server's own directory: nothing of the user's is followed
            files.write_private(JobPaths(self._job_dir(job)).force_quit, b"", files.Owner(None, None))
        except OSError as exc:  # the signal still goes; it alone stops a script that has started
            log.warning("job %s: the force_quit mark could not be made: %s", job.id, exc)

    def close(self) -> None:
        """Nothing to release: Slurm keeps the jobs, the store keeps their ids."""

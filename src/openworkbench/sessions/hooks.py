"""A session's helper jobs: its start and stop hooks, and waiting for a job (a hook, the IDE) to end."""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.config import Settings
from openworkbench.errors import JobWaitTimeout, WaitInterrupted, WorkbenchError
from openworkbench.ides.client import quietly
from openworkbench.models import JobSpec
from openworkbench.services.job_events import JobChange
from openworkbench.services.job_json import outcome
from openworkbench.services.jobs import JobService
from openworkbench.sessions.stop_signals import StopSignals
from openworkbench.store.schema import Session

log = logging.getLogger(__name__)


class SessionFailed(Exception):
    """The session cannot go on; the message becomes its status_detail (control flow inside the runner)."""


class SessionJobs:
    """Runs and waits for a session's jobs by their events; a stop request cuts an interruptible wait short."""

    def __init__(self, settings: Settings, jobs: JobService, signals: StopSignals) -> None:
        self.settings = settings
        self.jobs = jobs
        self.signals = signals

    async def run_hooks(self, row: Session, principal: Principal, kind: str) -> None:
        for exe in row.request.get(kind, []):
            spec = JobSpec.model_validate({
                "name": f"{kind[:-1].replace('_', ' ')}: {exe}", "exe": exe, "cluster": row.cluster,
                "working_directory": row.working_dir, "environment": row.request.get("environment", []),
                "tags": [kind[:-1]],
            })
            job = await self._run_hook(principal, spec, row.id)
            if kind == "start_hooks" and (job["status"] != "Finished" or job["exitCode"] != 0):
                raise SessionFailed(f"start hook {exe} failed: {outcome(job)}")
            if job["status"] != "Finished" or job["exitCode"] != 0:
                log.warning("session %s: stop hook %s failed: %s", row.id, exe, outcome(job))
            if kind == "start_hooks":
                self.signals.check(row.id)

    async def _run_hook(self, principal: Principal, spec: JobSpec, session_id: str) -> dict[str, Any]:
        """Run one hook job to its end; one that outlives ``hook_timeout_s`` is killed and counts as failed."""
        limit = self.settings.sessions.hook_timeout_s
        try:
            job = await run_in_threadpool(self.jobs.launch, principal, spec, session_id)
            job = await self.wait(principal, job["id"], limit, interruptible=True)
            if job["status"] not in FINAL_STATUSES:
                await quietly(run_in_threadpool(self.jobs.stop, principal, job["id"], True), None)
                await self.wait(principal, job["id"], 10)
                return {"status": "Failed", "exitCode": None,
                        "statusMessage": f"it did not finish within {limit:g} s and was killed"}
            return job
        except WorkbenchError as exc:
            return {"status": "Failed", "statusMessage": exc.message, "exitCode": None}

    async def kill(self, principal: Principal, job_id: str) -> None:
        await quietly(run_in_threadpool(self.jobs.stop, principal, job_id, True), None)
        await self.wait(principal, job_id, 10)  # "failed" is said once the IDE is gone

    async def wait(self, principal: Principal, job_id: str, limit: float | None = None,
                   interruptible: bool = False) -> dict[str, Any]:
        """The job once it ended or ``limit`` s passed; ``interruptible``: a stop request cuts the wait short.
        Waits on the job's events: one store read, then nothing until the job changes."""
        with self.jobs.events.follow(job_id) as followed:
            job = await followed.start()
            stop = self.signals.signal(job.session_id) if interruptible and job.session_id else None
            try:
                job = await followed.until(FINAL_STATUSES, limit, stop)
            except JobWaitTimeout as exc:
                job = exc.last if isinstance(exc.last, JobChange) else job
            except WaitInterrupted:
                self.signals.check(job.session_id or "")
            finally:
                self.signals.drop(job.session_id or "")
            return job.summary()

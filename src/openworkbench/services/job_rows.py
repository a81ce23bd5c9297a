"""A job's row: made for a launch, read back as its backend's ``JobRef``, updated from a cluster's report.

Pure functions of rows plus the statements built once for them; ``services/jobs.py`` runs them in transactions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select

from openworkbench import metrics
from openworkbench.clusters.base import FINAL_STATUSES, Account, JobRef, JobState
from openworkbench.errors import LaunchFailed
from openworkbench.models import JobSpec
from openworkbench.services.job_accounts import posix_account
from openworkbench.services.job_events import JobChange
from openworkbench.store.schema import Job, User, utcnow


def ref_of(job: Job, owner: str) -> JobRef:
    """A stored job as its backend sees it (its spec validated again: a row no longer valid raises)."""
    spec = JobSpec.model_validate(job.spec)
    try:
        account: Account | None = posix_account(owner)
    except LaunchFailed:
        account = None
    return JobRef(job.id, job.status, spec, account, dict(job.cluster_state or {}))


def new_job(job_id: str, user_id: int, cluster: str, spec: JobSpec, session_id: str | None,
             replica: str | None) -> Job:
    now = utcnow()
    return Job(
        id=job_id,
        user_id=user_id,
        session_id=session_id,
        cluster=cluster,
        name=spec.name[:255],  # the column's size; an IDE's or a hook's job name is built from longer parts
        spec=spec.model_dump(mode="json"),
        status="Pending",
        status_message="",
        host="",
        stdout_file="",
        stderr_file="",
        cluster_state={},
        submission_time=now,
        last_update_time=now,
        replica=replica,
    )


JOB_COLUMNS = tuple(Job.__table__.columns.keys())
# What update_row may change.
UPDATED_COLUMNS = ("status", "status_message", "exit_code", "pid", "host", "stdout_file", "stderr_file",
                   "cluster_state", "last_update_time", "end_time", "running_time")
# Built once: SQLAlchemy then finds their compiled form in its cache without building a statement per call.
_JOBS, _USERS = cast(Table, Job.__table__), cast(Table, User.__table__)
OWNER = select(_USERS.c.id, _USERS.c.disabled).where(_USERS.c.username == bindparam("owner"))
INSERT_JOB = _JOBS.insert()
UPDATE_JOB = (_JOBS.update().where(_JOBS.c.id == bindparam("b_id"))
              .values({name: bindparam(f"b_{name}") for name in UPDATED_COLUMNS}))


def values(job: Job, columns: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(job, name) for name in columns}


def update_params(job: Job) -> dict[str, Any]:
    """UPDATE_JOB's parameters: the row's updatable columns as they are in ``job``."""
    return {"b_id": job.id, **{f"b_{name}": getattr(job, name) for name in UPDATED_COLUMNS}}


def change(job: Job, owner: str) -> JobChange:
    return JobChange(job.id, owner, job.cluster, job.session_id, job.status, job.status_message, job.exit_code,
                     job.host, job.last_update_time)


def update_row(job: Job, state: JobState, seen_at: datetime | None = None) -> bool:
    """Write what the cluster reported into the row; False when the row is final and stays as it was."""
    if job.status in FINAL_STATUSES:
        return False  # a final status is final: late reports never change it
    if job.status == "Pending" and state.status == "Running":
        metrics.job_started(job.cluster, job.submission_time)
    job.status = state.status
    job.status_message = state.status_message
    if state.status == "Canceled" and job.stop_requested:
        job.status_message = job.status_message or "Canceled before it started"
    for attr in ("exit_code", "pid", "host", "stdout_file", "stderr_file", "cluster_state"):
        value = getattr(state, attr)
        if value is not None:
            setattr(job, attr, value)
    job.last_update_time = utcnow()
    if job.status == "Running" and job.running_time is None:
        job.running_time = seen_at or job.last_update_time
    if job.status in FINAL_STATUSES:
        job.end_time = seen_at or job.last_update_time
    return True

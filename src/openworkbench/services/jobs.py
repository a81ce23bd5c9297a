"""Jobs: launch on a cluster, follow their state, stop them, stream their output.

A job is committed to the store (``Pending``) before its cluster is asked to start it, so a
request recorded as launched is never lost: after a crash the monitor finds it again, and
the Local backend starts it if its supervisor never ran.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.clusters import profiles
from openworkbench.clusters.base import (
    FINAL_STATUSES,
    Cluster,
    JobRef,
    JobState,
)
from openworkbench.errors import (
    InvalidParameter,
    InvalidState,
    LaunchFailed,
    NotFound,
    StoreUnavailable,
    WorkbenchError,
)
from openworkbench.models import JobSpec
from openworkbench.services import job_rows, output
from openworkbench.services.accounts import Accounts
from openworkbench.services.job_accounts import group_name, with_group
from openworkbench.services.job_accounts import posix_account as posix_account  # its old home: importers
from openworkbench.services.job_backlog import NEVER_STARTED, Backlog, Seen
from openworkbench.services.job_events import JobChange, JobEvents
from openworkbench.services.job_json import job_json
from openworkbench.services.job_relay import notify
from openworkbench.services.run_as import RunAsPolicy
from openworkbench.store import Store
from openworkbench.store.schema import Job, User

log = logging.getLogger(__name__)
APPLY_BATCH = 500  # job rows per transaction of a poll; well below any database's limit of bound parameters


class JobService:
    def __init__(self, store: Store, accounts: Accounts, clusters: dict[str, Cluster], default_cluster: str,
                 run_as: RunAsPolicy | None = None, output_budget: int = output.DEFAULT_BUDGET,
                 replica_id: str | None = None) -> None:
        self.store = store
        self.run_as = run_as or RunAsPolicy()
        self.output_budget = output_budget  # bytes one get_job_output call reads at most
        self.accounts = accounts
        self.clusters = clusters
        self.default_cluster = default_cluster
        self._active: dict[str, JobRef] = {}
        self._clusters_of: dict[str, str] = {}
        self._lock = threading.Lock()
        self.events = JobEvents(self.change_of)
        self.backlog = Backlog()  # states seen while the database was away, written when it is back
        self.replica_id = replica_id  # recorded on the jobs it launches (services/job_monitor.py)
        # Does this replica follow the jobs of a cluster (lead its monitor)? Set by the monitor's leadership.
        self.monitors: Callable[[str], bool] = lambda cluster: True

    # -- launching ---------------------------------------------------------------------------
    def launch(self, principal: Principal, spec: JobSpec, session_id: str | None = None) -> dict[str, Any]:
        owner = spec.user or principal.username
        require(principal, Action.ACT_AS, owner)
        self.run_as.check(owner)
        cluster, spec = self.checked(spec)
        account = with_group(posix_account(owner), spec.group)
        job_id = secrets.token_hex(8)
        spec = spec.model_copy(update={"user": owner, "cluster": cluster.name, "group": group_name(account.gid)})
        job = job_rows.new_job(job_id, 0, cluster.name, spec, session_id, self.replica_id)
        try:
            self._record(job, owner)
        except StoreUnavailable:  # nothing started; a row whose commit's answer was lost ends Failed later
            self.backlog.hold_now(job_id, NEVER_STARTED)
            raise
        self.store.wrote([job])  # Core writes: the job views learn of them from us
        self.events.publish([job_rows.change(job, owner)])
        try:
            state = cluster.submit(job_id, spec, account)
        except Exception as exc:  # whatever went wrong, the recorded job ends Failed, never stays Pending
            failure = exc if isinstance(exc, WorkbenchError) else LaunchFailed(f"the cluster could not start the "
                                                                               f"job: {type(exc).__name__}: {exc}")
            if not isinstance(exc, WorkbenchError):
                log.exception("job %s: submit to cluster %s failed", job_id, cluster.name)
            self._apply_or_hold(job_id, JobState(status="Failed", status_message=failure.message))
            raise failure from None
        # Until the job is followed, below, nothing but this request writes its row: the row in hand is the
        # stored one. So the update needs no read first, and the reply needs no read-back.
        job_rows.update_row(job, state)
        try:
            with self.store.transaction() as conn:
                conn.execute(job_rows.UPDATE_JOB, job_rows.update_params(job))
                self._notify(conn, [job_id])
        except StoreUnavailable:  # the job runs and its Pending row is stored: the monitor writes the rest later
            self.backlog.hold_now(job_id, state)
        self.store.wrote([job])
        with self._lock:  # followed and published together: the monitor's changes of it come after this one
            if job.status not in FINAL_STATUSES and self.monitors(cluster.name):  # else its monitor finds it
                self._active[job_id] = JobRef(job_id, job.status, spec, account, state.cluster_state or {})
                self._clusters_of[job_id] = cluster.name
            self.events.publish([job_rows.change(job, owner)])
        return job_json(job, owner)

    def checked(self, spec: JobSpec) -> tuple[Cluster, JobSpec]:
        """The job's cluster, and the spec with its resource profile applied, once the cluster accepts it."""
        cluster = self._cluster(spec.cluster or self.default_cluster)
        spec = profiles.resolve(cluster.name, cluster.settings, spec)
        cluster.validate(spec)
        return cluster, spec

    def _record(self, job: Job, owner: str) -> None:
        """Store the new job (``Pending``) with its owner's id, found in the same transaction.

        Prepared Core statements: on this path the ORM's unit of work cost more than the SQL."""
        with self.store.transaction() as conn:
            user = conn.execute(job_rows.OWNER, {"owner": owner}).first()
            if user is not None and user.disabled:
                raise InvalidParameter(f"user '{owner}' is disabled")
            if user is not None:
                job.user_id = user.id
                conn.execute(job_rows.INSERT_JOB, job_rows.values(job, job_rows.JOB_COLUMNS))
                self._notify(conn, [job.id])
                return
        job.user_id = self.owner_id(owner)  # a POSIX user new to Workbench: registered first
        with self.store.transaction() as conn:
            conn.execute(job_rows.INSERT_JOB, job_rows.values(job, job_rows.JOB_COLUMNS))
            self._notify(conn, [job.id])

    def _cluster(self, name: str) -> Cluster:
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(self.clusters)
            raise InvalidParameter(f"unknown cluster '{name}'; this server has: {known}") from None

    def owner_id(self, owner: str) -> int:
        with self.store.session() as db:
            user = db.scalar(select(User).where(User.username == owner))
            if user is not None and user.disabled:
                raise InvalidParameter(f"user '{owner}' is disabled")
            if user is not None:
                return user.id
        # A POSIX user new to Workbench (launched for by a super-admin) is registered, as a sign-in would.
        return self.accounts.ensure_user(owner)

    # -- reading -----------------------------------------------------------------------------
    def get(self, principal: Principal, job_id: str) -> dict[str, Any]:
        with self.store.session() as db:
            row = db.execute(select(Job, User.username).join(User).where(Job.id == job_id)).first()
            if row is None:
                raise NotFound(f"no job '{job_id}'")
            job, owner = row
            require(principal, Action.READ, owner)
            return job_json(job, owner)

    def changes_of(self, job_ids: list[str]) -> list[JobChange]:
        """The stored state of these jobs as changes (what the relay publishes of other replicas' commits)."""
        with self.store.session() as db:
            return [job_rows.change(*row) for row in db.execute(select(Job, User.username).join(User)
                                                        .where(Job.id.in_(job_ids)))]

    def _notify(self, conn: Any, job_ids: list[str]) -> None:
        if job_ids:
            notify(self.store, conn, self.replica_id or "", job_ids)

    def change_of(self, job_id: str) -> JobChange:
        """The job's stored state as a change (what the events' waiters read after subscribing)."""
        with self.store.session() as db:
            row = db.execute(select(Job, User.username).join(User).where(Job.id == job_id)).first()
            if row is None:
                raise NotFound(f"no job '{job_id}'")
            return job_rows.change(*row)

    def list_for(self, principal: Principal, username: str, session_ids: list[str] | None) -> list[dict[str, Any]]:
        """Jobs of ``username``: all of them, or those of the given sessions."""
        require(principal, Action.READ, username)
        query = select(Job, User.username).join(User).where(User.username == username)
        if session_ids is not None:
            query = query.where(Job.session_id.in_(session_ids))
        with self.store.session() as db:
            rows = db.execute(query.order_by(Job.submission_time)).all()
            return [job_json(job, owner) for job, owner in rows]

    async def output(self, principal: Principal, job_id: str, user: str | None,
                     if_ended: Callable[[str], None] | None = None) -> AsyncGenerator[bytes, None]:
        """The job's output as NDJSON lines, live until it ends; ``if_ended(job_id)`` is asked first (in a
        worker thread) when it already has: it may refuse (its files were removed)."""
        followed = self.events.follow(job_id)  # subscribed before the read: an end between is not missed
        try:
            job = await run_in_threadpool(self.get, principal, job_id)  # a store read: not on the event loop
            if user and user != job["user"]:
                raise NotFound(f"no job '{job_id}' of user '{user}'")
            state = await followed.start(JobChange.of_json(job))
            if if_ended is not None and state.final:
                await run_in_threadpool(if_ended, job_id)
        except BaseException:
            followed.close()
            raise
        files = [("stdout", job["stdoutFile"]), ("stderr", job["stderrFile"])]
        return output.follow(job_id, files, followed, self.output_budget)

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, principal: Principal, job_id: str, force: bool) -> None:
        """Ask the job's cluster to stop it, on any replica: the job as stored says where it runs."""
        job = self.get(principal, job_id)
        require(principal, Action.WRITE, job["user"])
        if job["status"] in FINAL_STATUSES:
            raise InvalidState(f"job '{job_id}' has already ended ({job['status']})")
        with self.store.session() as db:
            row = db.get(Job, job_id)
            if row is None:
                raise InvalidState(f"job '{job_id}' has already ended")
            row.stop_requested = "kill" if force else "stop"
            ref = self._active.get(job_id) or job_rows.ref_of(row, job["user"])
        cluster = self.clusters.get(row.cluster)
        if cluster is None:
            raise InvalidState(f"job '{job_id}' runs on cluster '{row.cluster}', which this server does not have")
        state = cluster.stop(ref, force)
        if state is not None:
            self._apply(job_id, state)

    # -- following state (services/job_monitor.py decides which jobs) ---------------------------------------
    def follows(self, job_id: str) -> bool:
        return job_id in self._active

    def adopt_one(self, job: Job, owner: str) -> None:
        """Follow a stored unfinished job (the monitor found it: launched before a restart, or elsewhere)."""
        ref = job_rows.ref_of(job, owner)
        with self._lock:
            self._active[job.id] = ref
            self._clusters_of[job.id] = job.cluster

    def release(self, cluster: str) -> int:
        """Stop following the jobs of ``cluster``: another replica monitors it now."""
        with self._lock:
            ids = [job_id for job_id, name in self._clusters_of.items() if name == cluster]
            for job_id in ids:
                self._active.pop(job_id, None)
                self._clusters_of.pop(job_id, None)
        return len(ids)

    def flush_backlog(self) -> None:
        """Write states held while the store was away (a replica that does not poll has its launches')."""
        if len(self.backlog):
            self._store_seen(self.backlog.take({}))

    def apply_all(self, updates: dict[str, JobState]) -> None:
        self._apply_all(updates)

    def poll_once(self, only: str | None = None, hold: bool = False) -> int:
        """Ask each cluster (or only the one named) about its active jobs, one call per cluster, and store what
        changed (``hold``: only keep it in the backlog, for a later write). Jobs of a cluster no longer configured
        fail in a poll of all clusters."""
        changed: dict[str, JobState] = {}
        by_cluster: dict[str, list[JobRef]] = {}
        with self._lock:
            for job_id, ref in self._active.items():
                if only is None or self._clusters_of[job_id] == only:
                    by_cluster.setdefault(self._clusters_of[job_id], []).append(ref)
        for name, refs in by_cluster.items():
            cluster = self.clusters.get(name)
            if cluster is None:
                updates = {ref.id: JobState("Failed", f"cluster '{name}' is no longer configured") for ref in refs}
            else:
                try:
                    updates = cluster.poll(refs)
                except Exception:  # the cluster's failure, not one job's (those are caught per job): next time
                    log.exception("polling cluster %s failed", name)
                    continue
            changed.update(updates)
        if hold:
            self.backlog.hold(self.backlog.take(changed))
        else:
            self._store_seen(self.backlog.take(changed))
        return len(changed)

    def _store_seen(self, seen: dict[str, Seen]) -> None:
        """Write states a poll saw (and those held from polls that could not write); hold them again while the
        database is away: the store logs the outage, and the next poll tries again."""
        if not seen:
            return
        try:
            self._apply_all({job_id: item.state for job_id, item in seen.items()},
                            {job_id: item.at for job_id, item in seen.items()})
        except StoreUnavailable:
            self.backlog.hold(seen)  # batches written before the failure are written again: final stays final

    def _apply_or_hold(self, job_id: str, state: JobState) -> None:
        try:
            self._apply(job_id, state)
        except StoreUnavailable:
            self.backlog.hold_now(job_id, state)

    def _apply(self, job_id: str, state: JobState, owner: str | None = None) -> dict[str, Any] | None:
        """Store what the cluster reported; with ``owner``, also return the job as the API shows it."""
        with self.store.session() as db:
            row = db.execute(select(Job, User.username).join(User).where(Job.id == job_id)).first()
            if row is None:
                return None
            job, username = row
            changes = [job_rows.change(job, username)] if job_rows.update_row(job, state) else []
            status = job.status
            rendered = job_json(job, owner) if owner is not None else None
        self._follow({job_id: (status, state)}, changes)
        return rendered

    def _apply_all(self, updates: dict[str, JobState], seen_at: dict[str, datetime] | None = None) -> None:
        """Store a poll's changes in one transaction per batch: a poll may find hundreds of jobs ended.
        ``seen_at``: when each state was seen, if not now (held while the database was away)."""
        ids = list(updates)
        for start in range(0, len(ids), APPLY_BATCH):
            batch = ids[start : start + APPLY_BATCH]
            stored: dict[str, tuple[str, JobState]] = {}
            changes: list[JobChange] = []
            with self.store.session() as db:
                for job, owner in db.execute(select(Job, User.username).join(User).where(Job.id.in_(batch))):
                    if job_rows.update_row(job, updates[job.id], seen_at.get(job.id) if seen_at else None):
                        changes.append(job_rows.change(job, owner))
                    stored[job.id] = (job.status, updates[job.id])
            # After the commit, never inside it: a follower that subscribes after this publish must find the
            # end in its read of the store (subscribe, then read: services/job_events.py).
            self._follow(stored, changes)

    def _follow(self, stored: dict[str, tuple[str, JobState]], changes: list[JobChange]) -> None:
        """Bring the followed jobs up to date with their stored status: final ones are no longer followed. The
        committed changes are published here, under the lock: a change that lost a race to a job's end (a
        poll's Running stored before, published after, a stop's Killed) is dropped, so ends come last."""
        with self._lock:
            self.events.publish([change for change in changes if change.final or change.job_id in self._active])
            for job_id, (status, state) in stored.items():
                ref = self._active.get(job_id)
                if status in FINAL_STATUSES:
                    self._active.pop(job_id, None)
                    self._clusters_of.pop(job_id, None)  # else one entry per job ever launched (the soak's find)
                elif ref is not None:
                    cluster_state = state.cluster_state if state.cluster_state is not None else ref.cluster_state
                    self._active[job_id] = JobRef(job_id, status, ref.spec, ref.account, cluster_state)

"""The job monitor: one thread per cluster polls its jobs, on the replica that leads ``monitor:<cluster>``.

Jobs are launched on any replica; the leader follows every unfinished job of its cluster. It finds them in the
store (``discover``): all of them when it takes the role over, and, every ``DISCOVER_EVERY`` s after, the ones it
does not follow yet (launched by another replica since). A ``Pending`` row with no cluster state is a launch its
replica is still carrying out (the row is committed before the cluster is asked): it is left alone while that
replica lives, and followed once it is gone, which is what a restart does with it today (the Local backend
starts a job its launcher never got to; tests/test_crash.py). A replica that does not lead a cluster launches and
stops its jobs but does not poll them; it still writes states its own launches could not store (the backlog).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy import select

from openworkbench.clusters.base import ACTIVE_STATUSES, JobState
from openworkbench.errors import StoreUnavailable
from openworkbench.services.leadership import Leadership, Liveness
from openworkbench.store.schema import Job, User

if TYPE_CHECKING:
    from openworkbench.services.container import Services
    from openworkbench.services.job_events import JobChange
    from openworkbench.services.jobs import JobService

log = logging.getLogger(__name__)
# s between two looks for jobs launched by other replicas (PostgreSQL only). A safety net: the relay asks for a
# look as soon as another replica's job change arrives (``remote_changes``), so a job launched there is followed
# within a poll interval of its launch, not of the next look.
DISCOVER_EVERY = 5.0


def monitor_role(cluster: str) -> str:
    return f"monitor:{cluster}"


def discover(jobs: JobService, liveness: Liveness, cluster: str | None) -> int:
    """Follow the unfinished jobs of ``cluster`` (None: of every cluster) not followed yet, but a launch still
    under way on a live replica. A row that cannot be loaded (its stored request no longer valid) ends Failed."""
    query = select(Job.id).where(Job.status.in_(ACTIVE_STATUSES))
    if cluster is not None:
        query = query.where(Job.cluster == cluster)
    with jobs.store.session() as db:
        ids = [job_id for job_id in db.scalars(query) if not jobs.follows(job_id)]
    if not ids:
        return 0
    failed: dict[str, JobState] = {}
    adopted = 0
    with jobs.store.session() as db:
        rows = db.execute(select(Job, User.username).join(User).where(Job.id.in_(ids))).all()
    alive: dict[str, bool] = {}
    for job, owner in rows:
        if job.status == "Pending" and not job.cluster_state and job.replica:
            if job.replica not in alive:
                alive[job.replica] = liveness.alive(job.replica)
            if alive[job.replica]:
                continue  # its launch is under way there: the launch follows it, or the next look here does
        try:
            jobs.adopt_one(job, owner)
            adopted += 1
        except Exception as exc:
            log.exception("job %s cannot be followed", job.id)
            failed[job.id] = JobState("Failed", f"the job could not be followed after a server restart: "
                                                f"{type(exc).__name__}: {exc}")
    jobs.apply_all(failed)
    return adopted


class Monitor:
    """Threads that poll the clusters for job state at the configured interval, one per cluster: a scheduler
    that hangs (a 30 s squeue timeout) must not hold up the others' updates. Each polls only while this
    replica leads its cluster's role, confirmed before every round."""

    def __init__(self, services: Services) -> None:
        assert services.leadership is not None and services.liveness is not None  # build_services makes both
        self.jobs = services.jobs
        self.leadership: Leadership = services.leadership
        self.liveness: Liveness = services.liveness
        self.interval = services.settings.local.poll_interval_ms / 1000
        self._stop = threading.Event()
        self._leading: set[str] = set()  # clusters whose jobs this monitor follows now
        self._look: set[str] = set()  # clusters of which another replica changed a job this monitor does not follow
        self._threads = [threading.Thread(target=self._run, args=(name,), name=f"job-monitor-{name}", daemon=True)
                         for name in services.clusters]

    def start(self) -> None:
        self.leadership.start()
        if self.leadership.single:  # every job of the store, those of clusters no longer configured too
            adopted = discover(self.jobs, self.liveness, None)
            self._leading.update(self.jobs.clusters)
            self.jobs.poll_once()  # fresh job states before sessions are re-adopted
            if adopted:
                log.info("following %d job(s) started before this server", adopted)
        for thread in self._threads:
            thread.start()

    def _run(self, cluster: str) -> None:
        last_look = 0.0
        while not self._stop.wait(self.interval):
            try:
                if not self.leadership.confirm(monitor_role(cluster)):
                    if cluster in self._leading and not self.leadership.elsewhere(monitor_role(cluster)):
                        # Lost with its connection, and nobody else leads: PostgreSQL may be away for everyone.
                        # What the jobs do is still watched, but only held (no write): it is written with when it
                        # was seen once this replica leads again, as a lone server does through an outage.
                        self.jobs.poll_once(cluster, hold=True)
                        continue
                    self._give_up(cluster)
                    self.jobs.flush_backlog()
                    continue
                looking = not self.leadership.single and (time.monotonic() - last_look >= DISCOVER_EVERY
                                                          or cluster in self._look)
                self._look.discard(cluster)
                if cluster not in self._leading or looking:
                    adopted = discover(self.jobs, self.liveness, cluster)
                    if cluster not in self._leading:
                        log.info("monitoring cluster %s: following %d unfinished job(s)", cluster, adopted)
                        self._leading.add(cluster)
                    last_look = time.monotonic()
                self.jobs.poll_once(cluster)
            except StoreUnavailable:  # logged once by the store; the next round tries again
                pass
            except Exception:  # one bad poll must not end monitoring
                log.exception("job monitor poll of cluster %s failed", cluster)

    def remote_changes(self, changes: list[JobChange]) -> None:
        """From the relay's thread: another replica changed these jobs; one this monitor leads and does not follow
        yet (a launch there) is looked for at its next round."""
        self._look.update(change.cluster for change in changes
                          if change.cluster in self._leading and not self.jobs.follows(change.job_id))

    def _give_up(self, cluster: str) -> None:
        if cluster in self._leading:
            self._leading.discard(cluster)
            dropped = self.jobs.release(cluster)
            log.info("no longer monitoring cluster %s (%d job(s) left to its new monitor)", cluster, dropped)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

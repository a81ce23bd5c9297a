"""What the soak (tests/test_load_soak.py) showed growing with every job or session, bounded by count as well as
by age: each bound tested directly, small and fast, on a real SQLite store (docs/reliability.md, "Soak memory")."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.models import JobSpec
from openworkbench.services.accounts import Accounts
from openworkbench.services.container import Services
from openworkbench.services.job_views import JobViews
from openworkbench.store import Store
from openworkbench.store.schema import Job, utcnow
from tests.in_process import running_services
from tests.test_job_history import seed_job, seed_session

JOBS, KEPT = 30, 10  # jobs made, and the bound under test (the real ones: 50,000 and 10,000)


def a_store(tmp_path: Path) -> tuple[Store, int]:
    store = Store(f"sqlite:///{tmp_path / 'workbench.db'}")
    store.migrate()
    return store, Accounts(store).ensure_user("alice")


def end(store: Store, job_id: str) -> None:
    """The job ends: an ORM commit, as the job service's, so the commit hook is told of it."""
    with store.session() as db:
        job = db.get_one(Job, job_id)
        job.status, job.end_time = "Finished", utcnow()
        db.commit()


def test_departed_jobs_are_kept_up_to_a_count_and_older_ones_come_from_the_store(tmp_path: Path) -> None:
    store, alice = a_store(tmp_path)
    with store.session() as db:
        ids = [seed_job(db, alice, "alice", None, status="Running") for _ in range(JOBS)]
        db.commit()
    views = JobViews(store, expiry_hours=0, departed_max=KEPT)  # expiry 0: a job leaves the list as it ends
    store.watch_commits(views.written)
    before = time.time()
    assert len(views.answer("alice", None, None, time.time()).raw) > 2  # the 30 running jobs, loaded
    marks = []
    for job_id in ids:  # each ends, and leaves the list, one after the other
        end(store, job_id)
        views.answer("alice", None, None, time.time())
        time.sleep(0.002)  # distinct end times
        marks.append(time.time())
    assert views.answer("alice", None, None, time.time()).raw == b"[]"
    # The bound: an hour of departures would be all 30; memory keeps the newest 10.
    assert views.held()["departed"] == KEPT
    # Nothing is lost for a poller: one from before them all is answered from the store, with every id.
    assert sorted(views.answer("alice", None, before, time.time()).left) == sorted(ids)
    # One from after the 25th ended is answered from memory: the last five, and only those.
    assert views.answer("alice", None, marks[JOBS - 6], time.time()).left == ids[JOBS - 5:]
    store.dispose()


def test_jobs_written_while_nobody_reads_the_list_are_noted_up_to_a_count(tmp_path: Path) -> None:
    store, alice = a_store(tmp_path)
    views = JobViews(store, expiry_hours=1, stale_max=KEPT)
    store.watch_commits(views.written)
    first = seed(store, alice, 1)
    assert [job["id"] for job in json.loads(views.answer("alice", None, None, time.time()).raw)] == first
    # The soak's case: jobs launched and ended, and no get_session asks for jobs; each commit notes its job.
    made = seed(store, alice, JOBS)
    for job_id in made[:JOBS // 2]:
        end(store, job_id)
    assert views.held()["stale"] <= KEPT  # not 30: past the bound, the next read reloads them all instead
    listed = {job["id"]: job["status"] for job in json.loads(views.answer("alice", None, None, time.time()).raw)}
    assert listed == {job_id: "Finished" if job_id in made[:JOBS // 2] else "Running" for job_id in first + made}
    assert views.held() == {"listed": JOBS + 1, "departed": 0, "stale": 0}
    store.dispose()


def seed(store: Store, user_id: int, count: int) -> list[str]:
    """Running jobs, each added in a commit of its own (the commit hook is told of each)."""
    made = []
    for _ in range(count):
        with store.session() as db:
            made.append(seed_job(db, user_id, "alice", None, status="Running"))
            db.commit()
        time.sleep(0.002)  # distinct submission times: the list is oldest first
    return made


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """A server's real services and job monitor, in this process, where what they hold can be counted."""
    with running_services(tmp_path / "data") as built:
        yield built


def test_ended_jobs_and_finished_session_tasks_are_not_kept(services: Services) -> None:
    root = Principal(services.jobs.owner_id("root"), "root", "user")
    spec = JobSpec.model_validate({"name": "bounds", "command": "true"})

    async def scenario() -> None:
        ids = [str(services.jobs.launch(root, spec)["id"]) for _ in range(JOBS // 3)]
        for job_id in ids:
            assert (await services.jobs.events.wait(job_id, FINAL_STATUSES, timeout=120)).status == "Finished"
        # A session's start or stop runs as a task of the runner; once it is over, the runner lets it go.
        for n in range(JOBS // 3):
            services.runner.spawn(f"session{n}", asyncio.sleep(0))
        deadline = time.monotonic() + 60
        while services.runner.tasks or services.jobs._clusters_of:  # the job service follows ended jobs no more
            assert time.monotonic() < deadline, (services.runner.tasks, services.jobs._clusters_of)
            await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_sessions_that_left_the_list_long_ago_leave_memory(services: Services) -> None:
    store, user_id = services.store, services.jobs.owner_id("root")
    now = utcnow()
    with store.session() as db:  # ended 3 h ago: left the list (expiry 1 h) 2 h ago, past REMOVED_HORIZON
        old = [seed_session(db, user_id, "root", "finished", now - timedelta(hours=3)) for _ in range(JOBS)]
        recent = seed_session(db, user_id, "root", "killed", now - timedelta(minutes=10))
        db.commit()
    root = Principal(user_id, "root", "user")
    assert [view.data["id"] for view in services.sessions.read(root, None, old[0])] == [old[0]]  # by id: found
    listed = services.sessions.read(root, None, None)
    assert [view.data["id"] for view in listed] == [recent]  # the list loads none of the old ones
    assert services.sessions.views.held() == 1  # and the one read by id left memory with them
    # A poller from 3 h ago still learns that they left: from the store.
    since = (now - timedelta(hours=3, minutes=1)).timestamp()
    assert sorted(services.sessions.left_in_store("root", since, time.time())) == sorted(old)

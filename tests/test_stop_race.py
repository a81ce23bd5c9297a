"""A stop on one replica racing the start of the same session on another (issue 15).

The other replica's start is played in this process by its one step that matters here: it records its IDE job
(``launching`` -> ``pending``) after this replica's stop read the session and before the stop moved it. The
store, the job (a real process) and the stop are real; only the moment of the other replica's commit is chosen,
which a real pair of replicas meets only now and then (tests/test_replicas.py met it once in five full runs).
Before the fix the stop used the session as it had read it, found no job, and left the IDE running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.errors import WorkbenchError
from openworkbench.models import JobSpec
from openworkbench.services.container import Services
from openworkbench.sessions.requests import LaunchRequest
from openworkbench.sessions.states import SessionState
from tests.in_process import running_services


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with running_services(tmp_path / "data") as built:
        yield built


def test_a_stop_ends_the_ide_job_another_replica_recorded_after_the_stop_read_the_session(
        services: Services) -> None:
    root = Principal(services.jobs.owner_id("root"), "root", "user")
    session_id = services.sessions._create(root, LaunchRequest(workbench="JupyterLab", name="raced"))
    spec = JobSpec.model_validate({"name": "the other replica's IDE", "command": "exec sleep 600", "tags": ["session"]})
    job_id = str(services.jobs.launch(root, spec, session_id)["id"])
    runner, read = services.runner, services.runner.load

    async def load_then_the_other_replica_commits(wanted: str) -> Any:
        loaded = await read(wanted)
        assert loaded[0].state == SessionState.LAUNCHING and loaded[0].job_id is None
        await run_in_threadpool(runner.transition_sync, wanted, SessionState.PENDING, f"job {job_id} launched",
                                SessionState.LAUNCHING, job_id=job_id)
        return loaded

    async def scenario() -> None:
        runner.load = load_then_the_other_replica_commits  # type: ignore[method-assign]
        try:
            await runner.stop(session_id, force=False, suspend=False)
        finally:
            runner.load = read  # type: ignore[method-assign]
        await services.jobs.events.wait(job_id, FINAL_STATUSES, timeout=30)  # not left running: else JobWaitTimeout
        # Canceled when the stop came before the job ran (a loaded machine): its IDE never started.
        assert (await read(session_id))[0].state in (SessionState.FINISHED, SessionState.CANCELED)

    try:
        asyncio.run(scenario())  # without the fix: JobWaitTimeout, the job still Running
    finally:
        with contextlib.suppress(WorkbenchError):  # a failed run must not leave its sleep behind
            services.jobs.stop(root, job_id, True)

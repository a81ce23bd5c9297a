"""A starting session's wait for its IDE: the IDE's job followed by its events until the IDE answers.

While its job is ``Pending`` the session says why (a scheduler's reason) and, on a cluster that queues jobs,
gives its start slot to the next start. Once the job runs: where the IDE listens (its endpoint file, checked),
then its readiness probe, within ``sessions.start_timeout_s``. Anything but the IDE at its socket, or an
endpoint that cannot be trusted, fails the start at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.errors import UpstreamRefused, WaitInterrupted
from openworkbench.ides import Ide, LaunchContext
from openworkbench.ides.client import answers
from openworkbench.services.job_json import outcome
from openworkbench.sessions import files
from openworkbench.sessions.endpoint import checked_endpoint
from openworkbench.sessions.hooks import SessionFailed
from openworkbench.sessions.states import SessionState
from openworkbench.store.schema import Session, utcnow

if TYPE_CHECKING:
    from openworkbench.sessions.runner import SessionRunner

log = logging.getLogger(__name__)
POLL = 0.1  # s between readiness probes: nothing tells us when the IDE is ready


@contextlib.contextmanager
def _finally(action: Callable[[str], None], session_id: str) -> Iterator[None]:
    try:
        yield
    finally:
        action(session_id)


async def until_ready(runner: SessionRunner, row: Session, ide: Ide, ctx: LaunchContext, principal: Principal,
                      job_id: str, resuming: bool) -> None:
    """Follow the IDE's job by its events (read once, then in memory) until the IDE answers its probes."""
    started: float | None = None
    timeout = runner.settings.sessions.start_timeout_s
    with runner.jobs.events.follow(job_id) as followed, _finally(runner.signals.drop, row.id):
        job = await followed.start()
        while True:
            runner.signals.check(row.id)
            job = await followed.refresh()
            if job.final:
                raise SessionFailed(f"the IDE process ended before it was ready: {outcome(job.summary())}")
            if job.status == "Pending":
                _pass_on_if_queued(runner, row)  # its slot goes to the next start while a scheduler holds it
                if job.status_message != row.status_detail:
                    # A long queue is normal on HPC: no timeout while pending, but say why it waits.
                    row = await runner.update(row.id, status_detail=job.status_message)
            if job.status != "Running":  # no probe before it runs: the next change, or a stop, wakes us
                with contextlib.suppress(WaitInterrupted):
                    await followed.change(interrupt=runner.signals.signal(row.id))
                continue
            if ctx.network and not ctx.endpoint:
                ctx = await _read_endpoint(runner, row, ctx, principal, job.summary())
            if started is None:
                started = time.monotonic()
                if not resuming and row.state != SessionState.STARTING:  # an adopted start may be past it
                    # From pending only: a stop that moved it meanwhile (another replica's) is a lost race.
                    await runner.transition(row.id, SessionState.STARTING, f"job {job_id} is running",
                                            expect=SessionState.PENDING)
            if await _answers(runner, ide, ctx, principal, job_id):
                await runner.transition(row.id, SessionState.RUNNING, "the IDE answers", status_detail="",
                                        last_used=utcnow(),
                                        expect=SessionState.RESUMING if resuming else SessionState.STARTING)
                return
            if time.monotonic() - started > timeout:
                await runner.hooks.kill(principal, job_id)
                raise SessionFailed(f"start timeout: the IDE did not answer within {timeout:g} s")
            await asyncio.sleep(POLL)  # the IDE's own readiness: probed, nothing tells us


def _pass_on_if_queued(runner: SessionRunner, row: Session) -> None:
    cluster = runner.jobs.clusters.get(row.cluster)
    if cluster is not None and cluster.queues_jobs:
        runner.start_queue.pass_on(row.id)


async def _answers(runner: SessionRunner, ide: Ide, ctx: LaunchContext, principal: Principal, job_id: str) -> bool:
    """Is the IDE ready? What sits at its socket not being the IDE ends the start at once."""
    try:
        return await answers(ide, ctx)
    except UpstreamRefused as exc:
        log.warning("session %s: readiness probe refused: %s", ctx.session_id, exc.log_text())
        await runner.hooks.kill(principal, job_id)
        raise SessionFailed(exc.message) from None


async def _read_endpoint(runner: SessionRunner, row: Session, ctx: LaunchContext, principal: Principal,
                         job: dict[str, Any]) -> LaunchContext:
    """Where the job says its IDE listens, once it has said so; a report that cannot be trusted (not a
    regular file of the user's, a host that is not the job's node) fails the session at once."""
    shared_dir = runner.settings.clusters[row.cluster].output_dir
    path = files.endpoint_path(shared_dir, row.id)
    try:
        found = await run_in_threadpool(checked_endpoint, runner.jobs.clusters.get(row.cluster), path, ctx.uid,
                                        job.get("host") or "", shared_dir)
    except UpstreamRefused as exc:
        log.warning("session %s: endpoint refused: %s", row.id, exc.message)
        await runner.hooks.kill(principal, str(job["id"]))
        raise SessionFailed(exc.message) from None
    if found is None:
        return ctx
    await runner.update(row.id, endpoint=found.endpoint)
    return dataclasses.replace(ctx, endpoint=found)

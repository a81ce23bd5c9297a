"""Following sessions after they start: dead IDEs, activity, idleness, and a restart's leftovers."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.errors import IllegalTransition, StoreError
from openworkbench.ides.client import quietly, using
from openworkbench.services.job_json import outcome
from openworkbench.sessions.runner import SessionRunner
from openworkbench.sessions.states import LIVE, ON_RESTART, Adoption, SessionState
from openworkbench.store.schema import Session, User

log = logging.getLogger(__name__)
# Failures that say nothing about a session's own row, and may pass; anything else while following one
# session (an unknown workbench, a mangled field) is that row's fault, and ends it failed.
PASSING_ERRORS = (StoreError, OSError)


class SessionWatch:
    """Runs beside the runner: notices what happens to sessions without an API call."""

    def __init__(self, runner: SessionRunner) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.store = runner.store
        self.jobs = runner.jobs

    # -- following running sessions ------------------------------------------------------
    async def run(self) -> None:
        """Forever: notice IDEs that died, record activity, and act on idleness."""
        interval = self.settings.sessions.idle_check_interval_s
        last_idle_check = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                check_idle = time.monotonic() - last_idle_check >= interval
                if check_idle:
                    last_idle_check = time.monotonic()
                await self._watch_once(check_idle)
            except Exception:
                log.exception("session watch failed")

    async def _watch_once(self, check_idle: bool) -> None:
        rows = await run_in_threadpool(self._running)
        for row, owner, principal in rows:
            if self.runner.tasks.get(row.id) and not self.runner.tasks[row.id].done():
                continue  # a start or stop is in charge of this one
            try:
                await self._watch_one(row, owner, principal, check_idle)
            except PASSING_ERRORS:  # the store or the file system failing: try again next round
                log.exception("watching session %s failed", row.id)
            except Exception as exc:  # the session's row chokes us: it must not keep the others unwatched
                await self._fail_bad_row(row.id, exc)

    async def _watch_one(self, row: Session, owner: str, principal: Principal, check_idle: bool) -> None:
        job = await run_in_threadpool(self.jobs.get, principal, row.job_id) if row.job_id else None
        if job is None or job["status"] in FINAL_STATUSES:
            ok = job is not None and job["status"] == "Finished" and job["exitCode"] == 0
            why = f"the IDE process ended: {outcome(job)}" if job else "the session has no IDE job"
            ended = SessionState.FINISHED if ok else SessionState.FAILED
            await self.runner.transition(row.id, ended, why, status_detail="" if ok else why)
            ide = self.runner.ide(row.workbench)
            await self.runner.clean_up(row, ide, self.runner.context(row, owner))
            return
        await self.runner.renew_cookie(row, owner)
        used = self.runner.last_used.pop(row.id, None)
        if used is not None:
            await self.runner.update(row.id, last_used=used)
        if check_idle:
            await self._check_idle(row, owner, used or row.last_used)

    def _running(self) -> list[tuple[Session, str, Principal]]:
        query = select(Session, User).join(User).where(Session.state == SessionState.RUNNING.value)
        with self.store.session() as db:
            return [(row, user.username, Principal(user.id, user.username, "user")) for row, user in db.execute(query)]

    async def _check_idle(self, row: Session, owner: str, last_used: datetime) -> None:
        ide, ctx = self.runner.ide(row.workbench), self.runner.context(row, owner)
        activity = await quietly(using(ide, ctx, ide.activity), None)
        executing = bool(activity and activity.executing)
        if executing != row.executing:
            await self.runner.update(row.id, executing=executing)
        minutes = self.settings.ides[row.workbench].idle_timeout_minutes
        if not minutes or executing:
            return  # a busy kernel with no browser attached is not idle
        latest = max([last_used] + ([activity.last_activity] if activity and activity.last_activity else []))
        if datetime.now(UTC) - latest < timedelta(minutes=minutes):
            return
        suspend = self.settings.ides[row.workbench].suspend_on_idle and ide.supports_suspend
        log.info("session %s idle since %s: %s", row.id, latest, "suspending" if suspend else "stopping")
        self.runner.request_stop(row.id, force=False, suspend=suspend)

    # -- after a restart -------------------------------------------------------------------
    async def adopt(self) -> None:
        """Pick up sessions left in flight by the previous server process."""
        rows = await run_in_threadpool(self._live)
        for row, owner, principal in rows:
            try:
                await self._adopt_one(row, owner, principal)
            except PASSING_ERRORS:  # the watch follows it later, as any running session
                log.exception("session %s could not be adopted now", row.id)
            except Exception as exc:  # one bad row must not stop the start-up or the other sessions
                await self._fail_bad_row(row.id, exc)

    async def _adopt_one(self, row: Session, owner: str, principal: Principal) -> None:
        """What ``states.ON_RESTART`` says for the session's state, through the same transitions."""
        self.runner.remember(row, owner)
        state = SessionState(row.state)
        adoption = ON_RESTART[state]
        if adoption is Adoption.FOLLOW_START and not row.job_id:
            adoption = Adoption.FAIL  # cannot happen (the job id is written with "pending"), but must not hang
        if adoption is Adoption.FAIL:
            why = "the server restarted while it launched"
            await self.runner.transition(row.id, SessionState.FAILED, why, status_detail=why)
        elif adoption is Adoption.FOLLOW_START:
            self.runner.spawn(row.id, self._resume_wait(row.id))
        elif adoption is Adoption.FINISH_STOP:
            self.runner.request_stop(row.id, force=False, suspend=state is SessionState.SUSPENDING)
        elif adoption is Adoption.CHECK_JOB:
            job = await run_in_threadpool(self.jobs.get, principal, row.job_id) if row.job_id else None
            if job is not None and job["status"] in FINAL_STATUSES:
                why = f"the IDE process ended while the server was down: {outcome(job)}"
                await self.runner.transition(row.id, SessionState.FAILED, why, status_detail=why)
                await self.runner.clean_up(row, self.runner.ide(row.workbench), self.runner.context(row, owner))

    async def _fail_bad_row(self, session_id: str, exc: Exception) -> None:
        """End a session the server chokes on ``failed``, through the transitions alone: the runner's
        ``transition`` would choke too (it routes the row)."""
        log.exception("session %s cannot be followed", session_id)
        why = f"the session could not be followed: {type(exc).__name__}: {exc}"
        try:
            await run_in_threadpool(lambda: self.runner.states.transition(session_id, SessionState.FAILED, why,
                                                                          status_detail=why[:2000]))
        except IllegalTransition:
            pass  # ended meanwhile; logged by the transition
        except Exception:
            log.exception("session %s: recording its failure failed too", session_id)

    def _live(self) -> list[tuple[Session, str, Principal]]:
        query = select(Session, User).join(User).where(Session.state.in_([state.value for state in LIVE]))
        with self.store.session() as db:
            return [(row, user.username, Principal(user.id, user.username, "user")) for row, user in db.execute(query)]

    async def _resume_wait(self, session_id: str) -> None:
        row, owner, principal = await self.runner.load(session_id)
        assert row.job_id is not None
        ide = self.runner.ide(row.workbench)
        ctx = self.runner.context(row, owner)
        await self.runner.until_ready(row, ide, ctx, principal, row.job_id, row.state == SessionState.RESUMING)

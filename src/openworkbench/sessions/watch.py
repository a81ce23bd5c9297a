"""Following sessions after they start: dead IDEs, activity, idleness, and a restart's leftovers."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES
from openworkbench.errors import EventsLost, IllegalTransition, StoreError, StoreUnavailable, WorkbenchError
from openworkbench.ides.client import quietly, using
from openworkbench.services.job_events import JobChange
from openworkbench.services.job_json import outcome
from openworkbench.services.leadership import Leadership, Liveness
from openworkbench.services.start_queue import was_queued
from openworkbench.sessions import readiness
from openworkbench.sessions.runner import SessionRunner
from openworkbench.sessions.states import LIVE, Adoption, SessionState, adoption_of
from openworkbench.store.schema import Session, User

log = logging.getLogger(__name__)
# s between two looks for sessions a dead replica was starting or stopping: one store query each (a look every
# 0.5 s doubled an idle server's queries); a take-over so comes within this plus the leadership's check interval.
TAKE_OVER_EVERY_S = 2.0
SESSIONS_ROLE = "sessions"  # the leadership role of the session watch (services/leadership.py)


def _session_job_end(change: JobChange) -> bool:
    return change.final and change.session_id is not None


# Failures that say nothing about a session's own row, and may pass; anything else while following one
# session (an unknown workbench, a mangled field) is that row's fault, and ends it failed.
PASSING_ERRORS = (StoreError, OSError)


class SessionWatch:
    """Runs beside the runner: notices what happens to sessions without an API call."""

    def __init__(self, runner: SessionRunner, leadership: Leadership | None = None,
                 liveness: Liveness | None = None) -> None:
        self.runner = runner
        # Replicas (services/leadership.py): the leader of "sessions" alone watches and takes over.
        self.leadership = leadership
        self.liveness = liveness
        self._ends: asyncio.Task[None] | None = None  # following IDE jobs' ends: while leading
        self.settings = runner.settings
        self.store = runner.store
        self.jobs = runner.jobs
        self._recheck: set[str] = set()  # sessions whose IDE job ended while a start or stop was in charge
        self._recheck_all = False  # reading every session's job failed (the store away): the next round does it

    # -- following running sessions ------------------------------------------------------
    async def run(self) -> None:
        """Forever: notice IDEs that died (by their job's events), record activity, and act on idleness; with
        replicas, only while leading "sessions" (the others write the activity their proxies saw)."""
        interval = self.settings.sessions.idle_check_interval_s
        last_idle_check = last_take_over = 0.0
        try:
            while True:
                await asyncio.sleep(0.5)
                try:
                    if not await self._leading():
                        await self._write_last_used()
                        continue
                    check_idle = time.monotonic() - last_idle_check >= interval
                    if check_idle:
                        last_idle_check = time.monotonic()
                    if time.monotonic() - last_take_over >= TAKE_OVER_EVERY_S:
                        last_take_over = time.monotonic()
                        await self._take_over()
                    await self._watch_once(check_idle)
                except StoreUnavailable:  # the store logs the outage once; the next round tries again
                    pass
                except Exception:
                    log.exception("session watch failed")
        finally:
            if self._ends is not None:
                self._ends.cancel()

    async def _leading(self) -> bool:
        """Lead "sessions" now? (Confirmed on the lock's connection.) Follows IDE jobs' ends while so."""
        leading = self.leadership is None or await run_in_threadpool(self.leadership.confirm, SESSIONS_ROLE)
        if leading and self._ends is None:
            self._ends = asyncio.get_running_loop().create_task(self._follow_ends())
        elif not leading and self._ends is not None:
            self._ends.cancel()
            self._ends = None
        return leading

    async def _write_last_used(self) -> None:
        """A replica that does not watch still proxies: the last use it saw goes to the store for the leader."""
        used, self.runner.last_used = self.runner.last_used, {}
        for session_id, when in used.items():
            try:
                await self.runner.update(session_id, last_used=when)
            except StoreUnavailable:
                self.runner.last_used.setdefault(session_id, when)
                raise
            except Exception:  # the session is gone, say
                log.debug("session %s: last use not written", session_id, exc_info=True)

    async def _take_over(self) -> None:
        """Starts and stops another replica was carrying out when it died, carried on here (as a restart does:
        ``ON_RESTART``); a running session needs nothing: this watch follows it already."""
        if self.liveness is None or self.liveness.store.is_sqlite:
            return  # one server: its own restart adopted what was in flight
        rows = [item for item in await run_in_threadpool(self._live)
                if item[0].state != SessionState.RUNNING and not self._in_charge(item[0].id)
                and item[0].replica != self.liveness.replica_id]
        if rows:
            await self.adopt(rows)

    async def _orphans(self, rows: list[tuple[Session, str, Principal]]) -> list[tuple[Session, str, Principal]]:
        """The sessions whose recorded replica is gone; marked as this replica's before they are taken over."""
        if self.liveness is None:
            return rows
        alive: dict[str | None, bool] = {}
        orphans = []
        for row, owner, principal in rows:
            if row.replica not in alive:
                alive[row.replica] = await run_in_threadpool(self.liveness.alive, row.replica)
            if not alive[row.replica] or row.replica == self.liveness.replica_id:
                if row.replica and row.replica != self.liveness.replica_id:
                    log.info("session %s: replica %s is gone; taking over its %s", row.id, row.replica, row.state)
                    # Marked as ours (no other leader takes it again); ``row`` keeps the dead one's id for the reason.
                    await self.runner.update(row.id, replica=self.liveness.replica_id)
                orphans.append((row, owner, principal))
        return orphans

    async def _watch_once(self, check_idle: bool) -> None:
        rows = await run_in_threadpool(self._running)
        running = {row.id for row, _, _ in rows}
        if self._recheck_all:
            self._recheck |= running
            self._recheck_all = False
        for row, owner, principal in rows:
            if self._in_charge(row.id):
                continue  # a start or stop is in charge of this one
            try:
                if row.id in self._recheck and await self._check_job(row, owner, principal):
                    continue
                await self._watch_one(row, owner, principal, check_idle)
            except StoreUnavailable:
                raise  # the others would fail too: this round ends, quietly
            except PASSING_ERRORS:  # the store or the file system failing: try again next round
                log.exception("watching session %s failed", row.id)
            except Exception as exc:  # the session's row chokes us: it must not keep the others unwatched
                await self._fail_bad_row(row.id, exc)
        # An end seen while a start or stop was in charge is looked at once it is done (above, if it left the
        # session running); one that left it anything else needs nothing more.
        self._recheck = {sid for sid in self._recheck if self._in_charge(sid) or sid in running}

    async def _watch_one(self, row: Session, owner: str, principal: Principal, check_idle: bool) -> None:
        """What a running session needs now and then; that its IDE ended, the job's events say (``_job_ended``)."""
        await self.runner.renew_cookie(row, owner)
        used = self.runner.last_used.pop(row.id, None)
        if used is not None:
            await self.runner.update(row.id, last_used=used)
        if check_idle:
            await self._check_idle(row, owner, used or row.last_used)

    # -- IDE jobs that end -----------------------------------------------------------------
    async def _follow_ends(self) -> None:
        """Sessions whose IDE job ended, from the job events. Subscribed first, then every running session's
        job is read once (and again after lost events), so no end before or between is missed."""
        with self.jobs.events.subscribe(match=_session_job_end) as sub:
            await self._check_all()
            while True:
                try:
                    change = await sub.next()
                except EventsLost:
                    log.warning("session watch: job events lost; reading every running session's job")
                    await self._check_all()
                    continue
                try:
                    await self._job_ended(change)
                except Exception:  # the store failing, say: the watch's next round reads its job
                    log.exception("session watch: following the end of job %s failed", change.job_id)
                    self._recheck.add(change.session_id or "")

    async def _check_all(self) -> None:
        try:
            rows = await run_in_threadpool(self._running)
        except Exception:  # the store away, say: the watch's next round that can read rechecks every one
            log.warning("session watch: cannot list the running sessions now; rechecking each later")
            self._recheck_all = True
            return
        for row, owner, principal in rows:
            if self._in_charge(row.id):
                self._recheck.add(row.id)
                continue
            try:
                await self._check_job(row, owner, principal)
            except Exception:
                log.exception("session watch: reading the job of session %s failed", row.id)
                self._recheck.add(row.id)

    async def _job_ended(self, change: JobChange) -> None:
        row, owner, _ = await self.runner.load(change.session_id or "")
        if row.job_id != change.job_id:
            return  # a hook's job, or the last run's
        if self._in_charge(row.id):
            self._recheck.add(row.id)  # a start about to say "running", say: looked at once it is done
        elif row.state == SessionState.RUNNING:
            await self._ended(row, owner, change.summary())

    async def _check_job(self, row: Session, owner: str, principal: Principal) -> bool:
        """Read a running session's job once; end the session if it ended. Whether it did."""
        self._recheck.discard(row.id)
        job = await run_in_threadpool(self.jobs.get, principal, row.job_id) if row.job_id else None
        if job is not None and job["status"] not in FINAL_STATUSES:
            return False
        await self._ended(row, owner, job)
        return True

    async def _ended(self, row: Session, owner: str, job: dict[str, Any] | None, when: str = "") -> None:
        """The IDE's job ended (``when``: "while the server was down", found by a restart): ``finished`` for an
        IDE that exited 0 by itself (File > Shut Down), ``failed`` with its outcome otherwise."""
        ok = job is not None and job["status"] == "Finished" and job["exitCode"] == 0
        why = f"the IDE process ended{when}: {outcome(job)}" if job else "the session has no IDE job"
        ended = SessionState.FINISHED if ok else SessionState.FAILED
        try:  # the row was read before: a stop_session may have ended it since (SIGTERM, exit 143). Its end stands.
            await self.runner.transition(row.id, ended, why, expect=SessionState.RUNNING,
                                         status_detail="" if ok else why)
        except IllegalTransition:  # moved on meanwhile (SessionMoved): whoever moved it cleans up
            return
        ide = self.runner.ide(row.workbench)
        await self.runner.clean_up(row, ide, self.runner.context(row, owner))

    def _in_charge(self, session_id: str) -> bool:
        task = self.runner.tasks.get(session_id)
        return task is not None and not task.done()

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
    async def adopt(self, rows: list[tuple[Session, str, Principal]] | None = None) -> None:
        """Pick up sessions left in flight by the previous server process (or by a replica that died): those
        whose recorded replica is gone, when this replica leads "sessions"."""
        if self.leadership is not None and not self.leadership.leads(SESSIONS_ROLE):
            return
        rows = await self._orphans(rows if rows is not None else await run_in_threadpool(self._live))
        for row, owner, principal in rows:
            try:
                await self._adopt_one(row, owner, principal)
            except PASSING_ERRORS:  # the watch follows it later, as any running session
                log.exception("session %s could not be adopted now", row.id)
            except Exception as exc:  # one bad row must not stop the start-up or the other sessions
                await self._fail_bad_row(row.id, exc)

    async def _adopt_one(self, row: Session, owner: str, principal: Principal) -> None:
        """What ``states.adoption_of`` (``ON_RESTART``, refined by the row and its job) says for the session's
        state, through the same transitions."""
        await run_in_threadpool(self.runner.remember, row, owner)  # a store write: not on the event loop
        state = SessionState(row.state)
        job = None
        if row.job_id and state in (SessionState.RUNNING, SessionState.RESUMING):
            job = await run_in_threadpool(self.jobs.get, principal, row.job_id)
        queued = was_queued(row.status_detail)
        adoption = adoption_of(state, has_job=bool(row.job_id), queued=queued,
                               job_of_earlier_run=job is not None and _of_an_earlier_run(job, row))
        if adoption is Adoption.FAIL:
            why = "the server restarted while it launched" if self._restart(row) else \
                f"the server replica that launched it ({row.replica}) stopped while it launched"
            await self.runner.transition(row.id, SessionState.FAILED, why, status_detail=why)
            await run_in_threadpool(self._stop_jobs_of, row.id, owner, principal)
        elif adoption is Adoption.START_AGAIN:
            # Queued, it never began; a resume killed before its new IDE job was recorded (in a start hook, say)
            # names the last run's job, and the session is still the suspended one. Either starts again.
            if not queued:
                await run_in_threadpool(self._stop_jobs_of, row.id, owner, principal)
            self.runner.spawn(row.id, self.runner.start(row.id, resuming=state is SessionState.RESUMING))
        elif adoption is Adoption.FOLLOW_START:
            self.runner.spawn(row.id, self._resume_wait(row.id))
        elif adoption is Adoption.FINISH_STOP:
            self.runner.request_stop(row.id, force=False, suspend=state is SessionState.SUSPENDING)
        elif adoption is Adoption.CHECK_JOB and job is not None and job["status"] in FINAL_STATUSES:
            await self._ended(row, owner, job, " while the server was down")

    def _restart(self, row: Session) -> bool:
        """Was the session's last replica an earlier process of this server (SQLite, or no replica recorded)?"""
        return self.liveness is None or self.liveness.store.is_sqlite or row.replica in (None, self.liveness.replica_id)

    def _stop_jobs_of(self, session_id: str, owner: str, principal: Principal) -> None:
        """A session failed in its launch leaves no job of that launch running: a start hook, or its IDE when the
        server died after launching it but before recording it on the session."""
        for job in self.jobs.list_for(principal, owner, [session_id]):
            if job["status"] not in FINAL_STATUSES:
                try:
                    self.jobs.stop(principal, job["id"], force=True)
                except WorkbenchError as exc:  # it ended meanwhile
                    log.info("session %s: job %s not stopped: %s", session_id, job["id"], exc.message)

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
        query = query.order_by(Session.last_state_updated)  # queued ones re-join the queue in their order
        with self.store.session() as db:
            return [(row, user.username, Principal(user.id, user.username, "user")) for row, user in db.execute(query)]

    async def _resume_wait(self, session_id: str) -> None:
        row, owner, principal = await self.runner.load(session_id)
        assert row.job_id is not None
        ide = self.runner.ide(row.workbench)
        ctx = self.runner.context(row, owner)
        async with self.runner.start_queue.turn(session_id, adopted=True):  # its IDE runs already: no waiting
            await readiness.until_ready(self.runner, row, ide, ctx, principal, row.job_id,
                                        row.state == SessionState.RESUMING)


def _of_an_earlier_run(job: dict[str, Any], row: Session) -> bool:
    """Whether a resuming session's job ended before the resume began: submitted before it, and ended."""
    submitted = datetime.fromisoformat(str(job["submissionTime"]).replace("Z", "+00:00"))
    return job["status"] in FINAL_STATUSES and submitted < row.last_state_updated

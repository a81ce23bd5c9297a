"""Driving sessions through their lives, in the event loop.

``start`` runs the start hooks, launches the IDE as a job, and follows it to ``running``;
``stop`` saves (when suspending), asks the IDE to quit, then escalates SIGTERM -> SIGKILL, and
runs the stop hooks. ``watch`` follows running sessions: a dead IDE, idleness, activity.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session as DbSession
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Principal
from openworkbench.clusters.base import FINAL_STATUSES, Account
from openworkbench.config import Settings
from openworkbench.errors import (
    IllegalTransition,
    InternalError,
    NotAvailable,
    StoreUnavailable,
    WorkbenchError,
)
from openworkbench.ides import Ide, LaunchContext, ide_for
from openworkbench.ides.client import quietly, using
from openworkbench.models import JobSpec
from openworkbench.proxy import NOWHERE, ProxyTarget, Route, RouteTable, Upstream, UpstreamPool
from openworkbench.proxy.ports import PortAllocator
from openworkbench.services.jobs import JobService, posix_account
from openworkbench.services.start_queue import StartQueue
from openworkbench.sessions import files, readiness
from openworkbench.sessions.cookies import COOKIE_VARIABLE, SessionCookies
from openworkbench.sessions.endpoint import peer_uid
from openworkbench.sessions.hooks import SessionFailed, SessionJobs
from openworkbench.sessions.states import ENDED, LIVE, SessionState
from openworkbench.sessions.stop_signals import StopRequested, StopSignals
from openworkbench.sessions.transitions import Transitions
from openworkbench.store import Store
from openworkbench.store.availability import once_available
from openworkbench.store.epochs import open_epochs
from openworkbench.store.schema import Session, User, utcnow

log = logging.getLogger(__name__)


class SessionRunner:
    def __init__(self, settings: Settings, store: Store, jobs: JobService, pool: UpstreamPool,
                 routes: RouteTable | None = None) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.pool = pool
        self._ides: dict[str, Ide] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Every process on the store sees the routes this one writes (proxy/routes.py).
        self.routes = routes or RouteTable(store, open_epochs(settings.database_url).counter(1))
        self.ports = PortAllocator(store, *settings.sessions.port_range, [state.value for state in LIVE])
        self.last_used: dict[str, datetime] = {}
        self.signals = StopSignals()  # set by request_stop: a start's steps and event waits give way
        self.hooks = SessionJobs(settings, jobs, self.signals)
        self.cookies = SessionCookies(settings)
        self.start_queue = StartQueue(settings.sessions.max_concurrent_starts, store)
        self.states = Transitions(store)
        self.replica_id: str | None = None  # recorded on the sessions this process moves (services/leadership.py)

    def ide(self, workbench: str) -> Ide:
        if workbench not in self._ides:
            self._ides[workbench] = ide_for(workbench, self.settings)
        return self._ides[workbench]

    # -- tasks -------------------------------------------------------------------------------
    def spawn(self, session_id: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (a start) for the session in the background."""
        task = self.tasks[session_id] = asyncio.get_running_loop().create_task(self._guard(session_id, work))
        task.add_done_callback(functools.partial(self._done, session_id))

    def _done(self, session_id: str, task: asyncio.Task[None]) -> None:
        """A finished start or stop leaves ``tasks`` (else one done task per session ever, the soak found)."""
        if self.tasks.get(session_id) is task:
            del self.tasks[session_id]

    def request_stop(self, session_id: str, force: bool, suspend: bool) -> None:
        """Stop after whatever runs for the session now has given way (a start checks often)."""
        if self.start_queue.withdraw(session_id):  # it only waited to start: out of the queue now
            self.spawn(session_id, self.start_queue.end_withdrawn(self, session_id, force, suspend))
            return
        self.signals.request(session_id)
        previous = self.tasks.get(session_id)
        self.spawn(session_id, self._stop_after(previous, session_id, force, suspend))

    async def _stop_after(self, previous: asyncio.Task[None] | None, session_id: str, force: bool,
                          suspend: bool) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        self.signals.given_way(session_id)
        await self.stop(session_id, force, suspend)

    async def _guard(self, session_id: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (asyncio.CancelledError, StopRequested):
            return
        except IllegalTransition as exc:  # another replica moved it meanwhile (a stop_session there): it goes on
            log.info("session %s: %s; this replica's work on it ends", session_id, exc.message)
            return
        except (SessionFailed, StoreUnavailable) as exc:  # the failure is recorded once the store can take it
            why = str(exc) if isinstance(exc, SessionFailed) else f"the start was cut short: {exc.message}"
            row = await once_available(lambda: self._fail(session_id, why))
            if row is None:  # a stop (or another failure) ended it meanwhile, and cleaned up
                return
            _, owner, _ = await once_available(lambda: self.load(session_id))
            await self.clean_up(row, self.ide(row.workbench), self.context(row, owner))
        except Exception as exc:  # a bug must not leave a session in a transitional state forever
            log.exception("session %s", session_id)
            await self._fail(session_id, f"internal error: {exc}")

    async def _fail(self, session_id: str, why: str) -> Session | None:
        """Failed, with ``why`` as its status_detail; None when it had ended already (logged by transition), or
        when a stop on another replica is ending it: that stop cleans up, and its end is what the user asked for."""
        try:
            row, _, _ = await self.load(session_id)
            if row.state in (SessionState.SHUTTING_DOWN, SessionState.SUSPENDING):
                log.info("session %s: %s, not failed (%s): its stop ends it", session_id, row.state, why)
                return None
            # From the state just read only: a stop that moves it meanwhile wins (SessionMoved).
            return await self.transition(session_id, SessionState.FAILED, why, expect=SessionState(row.state),
                                         status_detail=why)
        except IllegalTransition:
            return None

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.start_queue.close()

    # -- state -------------------------------------------------------------------------------
    async def transition(self, session_id: str, to: SessionState, reason: str, *, expect: SessionState | None = None,
                         **fields: Any) -> Session:
        """Move the session to ``to`` (sessions/transitions.py checks and records it) and route it so, in one
        transaction; ``expect``: only from that state (else ``SessionMoved``, nothing written)."""
        return await run_in_threadpool(lambda: self.transition_sync(session_id, to, reason, expect, **fields))

    def transition_sync(self, session_id: str, to: SessionState, reason: str, expect: SessionState | None = None,
                        **fields: Any) -> Session:
        if self.replica_id:  # this process carries the session on from here (a dead one's is taken over)
            fields.setdefault("replica", self.replica_id)
        return self.states.transition(session_id, to, reason, expect=expect, then=self.remember, **fields)[0]

    async def update(self, session_id: str, **fields: Any) -> Session:
        return await run_in_threadpool(self.update_sync, session_id, fields)

    def update_sync(self, session_id: str, fields: dict[str, Any]) -> Session:
        """Fields other than the state (written by ``transition`` alone)."""
        if "state" in fields:
            raise InternalError("a session's state is written by transition(), never by update()")
        with self.store.session() as db:
            row = db.get(Session, session_id)
            assert row is not None
            for key, value in fields.items():
                setattr(row, key, value)
            owner = db.scalar(select(User.username).where(User.id == row.user_id)) or ""
            self.remember(row, owner, db)
            return row

    def networked(self, row: Session) -> bool:
        """A session on a cluster other than Local runs on a node: TCP and a reported endpoint."""
        conf = self.settings.clusters.get(row.cluster)
        return conf is not None and conf.type != "Local"

    def remember(self, row: Session, owner: str, db: DbSession | None = None) -> None:
        """Write the session's route to the store (in ``db``'s transaction if given): every process routes by it."""
        ide = self.ide(row.workbench)
        ctx = self.context(row, owner)
        target = ProxyTarget(self.upstream(ide, ctx), row.url, ide.strip_prefix, ide.upstream_headers(ctx), row.id)
        self.routes.add(Route(row.id, owner, row.state, target), db)

    @staticmethod
    def upstream(ide: Ide, ctx: LaunchContext) -> Upstream:
        # Not known yet (a node has not reported): nothing is routed before "running" anyway.
        return ide.upstream(ctx) or NOWHERE

    def touch(self, session_id: str) -> None:
        self.last_used[session_id] = utcnow()

    def context(self, row: Session, owner: str) -> LaunchContext:
        home = row.state_dir.split("/.local/share/openworkbench/")[0]
        # An IDE that cannot listen on a socket (RStudio) gets the loopback port allocated for its run.
        port = None if self.ide(row.workbench).uses_socket else row.port
        endpoint = Upstream.node(row.endpoint) if row.endpoint else None
        return LaunchContext(
            session_id=row.id, prefix=row.url, socket_path=row.socket_path, secret=row.secret,
            state_dir=row.state_dir, working_dir=row.working_dir, open_file=row.request.get("open_file"), home=home,
            user=owner, port=port, network=self.networked(row), endpoint=endpoint, uid=peer_uid(owner),
        )

    async def with_port(self, row: Session) -> Session:
        """An IDE that listens on a loopback port gets one of sessions.port_range for this run (in the store)."""
        if not self.ide(row.workbench).uses_socket and not self.networked(row):
            try:
                row.port = await run_in_threadpool(self.ports.allocate, row.id)
            except NotAvailable as exc:
                raise SessionFailed(exc.message) from None
            row.port_host = self.ports.host
        return row

    async def load(self, session_id: str) -> tuple[Session, str, Principal]:
        def read() -> tuple[Session, str, Principal]:
            with self.store.session() as db:
                found = db.execute(select(Session, User).join(User).where(Session.id == session_id)).first()
                assert found is not None
                row, user = found
                return row, user.username, Principal(user.id, user.username, "user")

        return await run_in_threadpool(read)

    # -- start -------------------------------------------------------------------------------
    async def start(self, session_id: str, resuming: bool) -> None:
        async with self.start_queue.turn(session_id):  # a launch storm waits here, first come first served
            await self._start(session_id, resuming)

    async def _start(self, session_id: str, resuming: bool) -> None:
        row, owner, principal = await self.load(session_id)
        row = await self.with_port(row)
        await self.hooks.run_hooks(row, principal, "start_hooks")
        ide = self.ide(row.workbench)
        account = await run_in_threadpool(posix_account, owner)
        await run_in_threadpool(peer_uid, owner)  # looked up here, in a thread, not in context() on the loop
        ctx = self.context(row, owner)
        try:
            await run_in_threadpool(self._prepare_files, row, ide, ctx, account)
            cookie = await run_in_threadpool(self.cookies.write, account, ctx, row.secret)
        except WorkbenchError as exc:
            raise SessionFailed(exc.message) from None
        if (opened := ctx.open_path()) is not None:  # asked as the user: root's answer would be an oracle
            ctx = dataclasses.replace(ctx, open_is_dir=await run_in_threadpool(files.is_dir_as, account, opened))
        self.signals.check(session_id)
        argv = ide.argv(ctx) + (ide.restore_args(ctx, row.suspend_manifest) if resuming else [])
        if ctx.network:
            endpoint_file = await run_in_threadpool(self._endpoint_file, row, account)
            row = await self.update(session_id, endpoint=None)  # the last run's port is gone
            ctx = dataclasses.replace(ctx, endpoint=None)
            argv = files.network_wrapper(argv, endpoint_file)
        # The session's own code can call the API as its user (the product's names and files).
        env = {**ide.environment(ctx), **self.cookies.environment(cookie, self.cookies.runtime_dir(ctx))}
        spec = self._ide_job(row, argv, env)
        try:
            # One thread call launches and records the job: a stop arriving meanwhile will find it.
            job_id = await run_in_threadpool(self._launch_ide, principal, spec, session_id, resuming)
        except IllegalTransition:  # another replica's stop_session moved it: that stop ends it, not a failure
            raise
        except WorkbenchError as exc:
            raise SessionFailed(f"the IDE could not be launched: {exc.message}") from None
        await readiness.until_ready(self, row, ide, ctx, principal, job_id, resuming)

    def _prepare_files(self, row: Session, ide: Ide, ctx: LaunchContext, account: Account) -> None:
        runtime_dir = self.settings.sessions.runtime_dir
        if not ctx.network:
            files.prepare_runtime(runtime_dir, account)
        files.prepare_state_dir(row.state_dir, account)
        for path, text in ide.config_files(ctx).items():
            files.write_as(account, path, text)
        files.remove_socket(row.socket_path, runtime_dir)

    def _launch_ide(self, principal: Principal, spec: JobSpec, session_id: str, resuming: bool) -> str:
        job_id = str(self.jobs.launch(principal, spec, session_id)["id"])
        try:
            if resuming:  # a resume stays "resuming" until its IDE answers
                self.update_sync(session_id, {"job_id": job_id})
            else:
                # From launching only: another replica's stop_session may have moved it (a lost race, not a bug).
                self.transition_sync(session_id, SessionState.PENDING, f"job {job_id} launched",
                                     SessionState.LAUNCHING, job_id=job_id)
        except IllegalTransition:  # stopped meanwhile by another replica, which did not know of this job
            self.jobs.stop(principal, job_id, True)
            raise
        return job_id

    def _endpoint_file(self, row: Session, account: Account) -> str:
        """Where the IDE's job reports "host port": the cluster's shared directory, the user's own part."""
        shared = self.settings.clusters[row.cluster].output_dir
        return files.prepare_endpoint(shared, account, row.id)

    def _ide_job(self, row: Session, argv: list[str], env: dict[str, str]) -> JobSpec:
        launch = row.request.get("launch_parameters") or {}
        environment = [{"name": k, "value": v} for k, v in env.items()] + list(row.request.get("environment", []))
        return JobSpec.model_validate({
            "name": f"{row.workbench}: {row.name}", "exe": argv[0], "args": argv[1:], "cluster": row.cluster,
            "working_directory": row.working_dir, "environment": environment,
            "resource_limits": launch.get("resource_limits", []), "queues": launch.get("queues", []),
            "placement_constraints": launch.get("placement_constraints", []), "tags": ["session"],
            "resource_profile": launch.get("resource_profile") or None,
            "metadata": {"redact": [*self.ide(row.workbench).secret_environment, COOKIE_VARIABLE]},
        })

    async def renew_cookie(self, row: Session, owner: str) -> None:
        """A running session's ``rpc_cookie`` file gets a fresh cookie once half of the last one's life is gone."""
        if self.cookies.due(row.id):
            account = await run_in_threadpool(posix_account, owner)
            await run_in_threadpool(self.cookies.write, account, self.context(row, owner), row.secret)

    # -- stop --------------------------------------------------------------------------------
    async def stop(self, session_id: str, force: bool, suspend: bool) -> None:
        row, owner, principal = await self.load(session_id)
        if row.state in ENDED:  # a stop asked while another one (or a failure) was ending it
            return
        if row.state == SessionState.SUSPENDED:  # stopping a suspended session discards what it kept
            await run_in_threadpool(files.remove_as, await run_in_threadpool(posix_account, owner), row.state_dir)
            await self.transition(session_id, SessionState.FINISHED, "stopped while suspended", suspend_size=None)
            return
        stopping = SessionState.SUSPENDING if suspend else SessionState.SHUTTING_DOWN
        if row.state != stopping:  # already so when a restart finishes the stop (states.ON_RESTART)
            # The row as the move left it: another replica's start may have recorded its IDE job since the load,
            # and this stop must end it. (A start that records its job after the move fails to, and kills it.)
            row = await self.transition(session_id, stopping, "force stop requested" if force else "stop requested")
        ide, ctx = self.ide(row.workbench), self.context(row, owner)
        manifest: dict[str, Any] = {}
        if suspend and not force:
            manifest = await quietly(using(ide, ctx, lambda client: ide.save_state(client, ctx)), {})
        job = await self._end_job(principal, row.job_id, ide, ctx, force) if row.job_id else None
        await self.hooks.run_hooks(row, principal, "stop_hooks")
        await self.clean_up(row, ide, ctx)
        if job is not None and job["status"] == "Canceled":  # its IDE never started (still queued)
            await self.transition(session_id, SessionState.CANCELED, "its job was canceled while queued",
                                  executing=False)
        elif suspend:
            # What the session keeps: its state directory and the manifest the server holds for it.
            home = (await run_in_threadpool(posix_account, owner)).home
            size = await run_in_threadpool(files.tree_size, row.state_dir, home) + len(json.dumps(manifest))
            await self.transition(session_id, SessionState.SUSPENDED, "suspended", suspend_manifest=manifest,
                                  suspend_size=size, executing=False)
        else:
            await run_in_threadpool(files.remove_as, await run_in_threadpool(posix_account, owner), row.state_dir)
            ended = SessionState.KILLED if force else SessionState.FINISHED
            await self.transition(session_id, ended, "stopped", executing=False)

    async def clean_up(self, row: Session, ide: Ide, ctx: LaunchContext) -> None:
        """What one run of the IDE leaves: pooled connections, its socket, its runtime files."""
        await self.pool.forget(self.upstream(ide, ctx))
        await run_in_threadpool(self.ports.release, row.id)
        runtime_dir = self.settings.sessions.runtime_dir
        await run_in_threadpool(files.remove_socket, row.socket_path, runtime_dir)
        self.cookies.forget(row.id)
        for path in [*ide.transient_dirs(ctx), *([] if ctx.network else [self.cookies.runtime_dir(ctx)])]:
            await run_in_threadpool(files.remove_tree, path, runtime_dir)

    async def _end_job(self, principal: Principal, job_id: str, ide: Ide, ctx: LaunchContext,
                       force: bool) -> dict[str, Any]:
        grace = self.settings.sessions.stop_grace_s
        if force:
            await quietly(run_in_threadpool(self.jobs.stop, principal, job_id, True), None)
            return await self.hooks.wait(principal, job_id, 10)
        job = await run_in_threadpool(self.jobs.get, principal, job_id)
        if job["status"] == "Running" and await quietly(using(ide, ctx, ide.request_shutdown), False):
            job = await self.hooks.wait(principal, job_id, grace)
        for kill in (False, True):
            if job["status"] in FINAL_STATUSES:
                break
            await quietly(run_in_threadpool(self.jobs.stop, principal, job_id, kill), None)
            job = await self.hooks.wait(principal, job_id, grace if not kill else 10)
        return job

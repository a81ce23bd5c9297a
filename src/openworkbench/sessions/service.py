"""IDE sessions, as the API sees them: launch, resume, stop, list, and routing for the proxy.

A session's IDE runs as a Launcher job of its cluster (so it is listed with ``include_jobs``);
the lifecycle after the API call answers — hooks, start, readiness, stop, suspend, idle — is
driven by ``SessionRunner`` in the event loop.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import func, or_, select
from starlette.concurrency import run_in_threadpool

from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.config import Settings
from openworkbench.errors import InvalidParameter, InvalidState, NotAvailable, NotFound, QuotaExceeded
from openworkbench.ides import IDES, available
from openworkbench.models import EnvironmentVariable, JobSpec
from openworkbench.services.jobs import JobService, posix_account
from openworkbench.services.projects import NO_PROJECT, list_projects, project_path
from openworkbench.sessions import files, transitions
from openworkbench.sessions.cookies import COOKIE_VARIABLE
from openworkbench.sessions.requests import LaunchRequest, ResumeRequest, StopRequest
from openworkbench.sessions.runner import SessionRunner
from openworkbench.sessions.states import ENDED, FINAL, LIVE, SessionState
from openworkbench.sessions.views import REMOVED_HORIZON, SessionViews, View, parse_ids
from openworkbench.store import Store
from openworkbench.store.schema import Session, User

ENDED_STATES = sorted(state.value for state in ENDED)


class SessionService:
    def __init__(self, settings: Settings, store: Store, jobs: JobService, runner: SessionRunner,
                 public_url: Callable[[str], str] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.runner = runner
        # A session's ``url`` as the API shows it: its prefix, or its own origin's URL (server.session_domain).
        self.public_url = public_url or str
        self.views = SessionViews(self.public_url)
        store.watch_commits(self.views.written)
        # Held from counting a user's sessions to recording the new one, so two launches cannot both take
        # the last place under sessions.max_per_user (one server process writes sessions).
        self._quota = threading.Lock()

    # -- launch and resume -------------------------------------------------------------------
    async def launch(self, principal: Principal, params: LaunchRequest) -> dict[str, str]:
        row_id = await run_in_threadpool(self._create, principal, params)
        self.runner.spawn(row_id, self.runner.start(row_id, resuming=False))
        return await run_in_threadpool(self._address, row_id)

    def _create(self, principal: Principal, params: LaunchRequest) -> str:
        owner = params.username or principal.username
        require(principal, Action.ACT_AS, owner)
        self.jobs.run_as.check(owner)
        ide = self._available_ide(params.workbench)
        account = posix_account(owner)
        launch = dict(params.launch_parameters or {})
        cluster = launch.get("cluster") or self.settings.ides[params.workbench].default_cluster
        cluster = cluster or self.settings.default_cluster
        self._validate_launch(cluster, launch)
        if self.settings.clusters[cluster].type != "Local" and not self.runner.ide(params.workbench).supports_network:
            raise NotAvailable(
                f"{params.workbench} sessions cannot run on cluster '{cluster}': on a cluster node the IDE must "
                "check a per-session secret itself, and it cannot"
            )
        user_id = self.jobs.owner_id(owner)
        session_id = self._new_id()
        url = f"/s/{_user_code(owner)}{ide.project_id}{session_id}/"
        request = {
            "workbench": params.workbench,
            "open_file": params.open_file,
            "launch_parameters": launch,
            "start_hooks": list(params.start_hooks),
            "stop_hooks": list(params.stop_hooks),
            "environment": [dict(item) for item in params.environment],
        }
        working_dir = self._working_dir(params, account.home, owner)
        with self._quota, self.store.session() as db:
            self._check_quota(db, owner, None)
            row = transitions.create(
                db, "launch_session", id=session_id, user_id=user_id, workbench=params.workbench,
                name=params.name or launch.get("name") or f"{params.workbench} Session", project_id=ide.project_id,
                url=url, status_detail="", cluster=cluster, request=request,
                working_dir=working_dir, socket_path=files.socket_path(self.settings.sessions.runtime_dir, account,
                                                                       session_id),
                state_dir=files.state_dir(account, session_id), secret=secrets.token_urlsafe(32),
                suspend_manifest={}, executing=False, replica=self.runner.replica_id,
            )
            self.runner.remember(row, owner, db)  # routed (to "launching") by every server from now on
        return session_id

    def _working_dir(self, params: LaunchRequest, home: str, owner: str) -> str:
        """The session's directory: ``working_directory``, else the directory of project ``project_id``."""
        working_dir = params.working_directory or "~"
        if working_dir == "~" or working_dir.startswith("~/"):
            working_dir = home + working_dir[1:]
        working_dir = os.path.normpath(os.path.join(home, working_dir))  # relative: to the home
        wanted = params.project_id or ""
        if wanted in NO_PROJECT or wanted in {ide.project_id for ide in IDES.values()}:
            return working_dir
        path = project_path(self.store, owner, wanted)
        if params.working_directory and working_dir != path:
            raise InvalidParameter(f"project_id '{wanted}' is the directory {path}, but working_directory "
                                   f"is {working_dir}: give one of them")
        return path

    def projects(self, principal: Principal, user: str | None) -> list[dict[str, Any]]:
        username = user or principal.username
        require(principal, Action.READ, username)
        return list_projects(self.store, username)

    def with_session_cookie(self, session_id: str, spec: JobSpec) -> JobSpec:
        """A job launched with a session's RPC cookie gets that session's variables and a fresh cookie of it,
        so it can call the API the same way (and launch jobs that do); its own variables win."""
        with self.store.session() as db:
            row, owner = self._row(db, session_id)
        ctx = self.runner.context(row, owner)
        cookie, _ = self.runner.cookies.mint(row.id, row.secret)
        given = {item.name for item in spec.environment}
        inherited = [EnvironmentVariable(name=k, value=v)
                     for k, v in self.runner.cookies.environment(cookie, self.runner.cookies.runtime_dir(ctx)).items()
                     if k not in given]
        metadata = dict(spec.metadata)
        metadata["redact"] = [*metadata.get("redact", []), COOKIE_VARIABLE]  # shown as ******** like a session's
        return spec.model_copy(update={"environment": inherited + list(spec.environment), "metadata": metadata})

    def _check_quota(self, db: Any, owner: str, resuming: str | None) -> None:
        """Refuse a session beyond ``sessions.max_per_user`` sessions of ``owner`` that have not ended."""
        cap = self.settings.sessions.max_per_user
        if not cap:
            return
        query = (select(func.count()).select_from(Session).join(User)
                 .where(User.username == owner, Session.state.in_([state.value for state in LIVE])))
        if resuming is not None:
            query = query.where(Session.id != resuming)
        live = db.scalar(query) or 0
        if live >= cap:
            raise QuotaExceeded(f"user '{owner}' already has {live} sessions that have not ended, the most "
                                f"sessions.max_per_user allows ({cap}): stop or suspend one first")

    def _available_ide(self, workbench: str) -> Any:
        if workbench not in IDES:
            raise InvalidParameter(f"unknown workbench '{workbench}'; expected one of {', '.join(IDES)}")
        settings = self.settings.ides[workbench]
        if not available(settings, self.settings.sessions.ide_prefix):
            why = "it is disabled" if not settings.enabled else f"its executable '{settings.exe}' was not found"
            raise NotAvailable(f"{workbench} is not available on this server: {why}")
        return IDES[workbench]

    def _validate_launch(self, cluster_name: str, launch: dict[str, Any]) -> None:
        if cluster_name not in self.jobs.clusters:
            known = ", ".join(self.jobs.clusters)
            raise InvalidParameter(f"unknown cluster '{cluster_name}'; this server has: {known}")
        probe = JobSpec.model_validate({
            "name": "session", "exe": "/bin/true", "cluster": cluster_name, "queues": launch.get("queues", []),
            "resource_limits": launch.get("resource_limits", []),
            "placement_constraints": launch.get("placement_constraints", []),
            # The product runs default_image when container_image is empty: either is a container request.
            "container_image": launch.get("container_image") or launch.get("default_image") or None,
            "resource_profile": launch.get("resource_profile") or None,
        })
        self.jobs.checked(probe)

    def _new_id(self) -> str:
        with self.store.session() as db:
            while True:
                candidate = secrets.token_hex(4)
                if db.get(Session, candidate) is None:
                    return candidate

    def _address(self, session_id: str) -> dict[str, str]:
        with self.store.session() as db:
            row = db.get(Session, session_id)
            assert row is not None
            return {"id": row.id, "url": self.public_url(row.url), "project_id": row.project_id}

    async def resume(self, principal: Principal, params: ResumeRequest) -> dict[str, str]:
        owner = params.username or principal.username
        require(principal, Action.ACT_AS, owner)
        await run_in_threadpool(self.jobs.run_as.check, owner)
        launch = dict(params.launch_parameters) if params.launch_parameters else None
        await run_in_threadpool(self._mark_resuming, params.session_id, owner, launch)
        self.runner.spawn(params.session_id, self.runner.start(params.session_id, resuming=True))
        return await run_in_threadpool(self._address, params.session_id)

    def _mark_resuming(self, session_id: str, owner: str, launch: dict[str, Any] | None) -> None:
        with self._quota, self.store.session() as db:
            row, row_owner = self._row(db, session_id)
            if row_owner != owner:
                raise NotFound(f"no session '{session_id}' of user '{owner}'")
            if row.state != SessionState.SUSPENDED:
                raise InvalidState(f"session '{session_id}' is {row.state}, not suspended")
            self._check_quota(db, owner, session_id)
            if launch:
                self._validate_launch(launch.get("cluster") or row.cluster, launch)
                row.request = {**row.request, "launch_parameters": launch}
                row.cluster = launch.get("cluster") or row.cluster
            transitions.write(db, row, SessionState.RESUMING, "resume_session", status_detail="",
                              replica=self.runner.replica_id)

    # -- stop, suspend ---------------------------------------------------------------------
    async def stop(self, principal: Principal, params: StopRequest) -> dict[str, Any]:
        plans = await run_in_threadpool(self._plan_stop, principal, list(params.session_ids), params.suspend)
        for session_id in plans:
            self.runner.request_stop(session_id, force=params.force, suspend=params.suspend)
        return {}

    def _plan_stop(self, principal: Principal, ids: list[str], suspend: bool) -> list[str]:
        """Check every id first, so a bad one stops nothing."""
        if not ids:
            raise InvalidParameter("session_ids names no session")
        plans = []
        with self.store.session() as db:
            for session_id in ids:
                row, owner = self._row(db, session_id)
                require(principal, Action.WRITE, owner)
                if row.state in FINAL and not (row.state == SessionState.SUSPENDED and not suspend):
                    raise InvalidState(f"session '{session_id}' has already ended ({row.state})")
                if suspend and not self.runner.ide(row.workbench).supports_suspend:
                    raise NotAvailable(f"{row.workbench} sessions cannot be suspended")
                plans.append(session_id)
        return plans

    # -- reading -----------------------------------------------------------------------------
    @overload
    def read(self, principal: Principal, user: str | None, session_ids: str | None) -> list[View]: ...

    @overload
    def read(self, principal: Principal, user: str | None, session_ids: str | None, *,
             from_store: bool) -> list[View] | None: ...

    def read(self, principal: Principal, user: str | None, session_ids: str | None, *,
             from_store: bool = True) -> list[View] | None:
        """The user's sessions (or those of ``session_ids``), oldest first, read through the views' cache.

        ``from_store=False`` is for the event loop, which must not wait for the store: None on a miss (the
        caller then reads again in a thread).
        """
        username = user or principal.username
        require(principal, Action.READ, username)
        ids = parse_ids(session_ids)
        return self.views.read(username, ids, (lambda: self._rows(username, ids)) if from_store else None)

    def _rows(self, username: str, ids: list[str] | None) -> Sequence[tuple[Session, str]]:
        query = select(Session, User.username).join(User).where(User.username == username)
        if ids is not None:
            query = query.where(Session.id.in_(ids))
        else:  # not the sessions that left the list more than REMOVED_HORIZON ago (views.py)
            cutoff = time.time() - self.settings.sessions.expiry_hours * 3600 - REMOVED_HORIZON
            query = query.where(or_(Session.state.not_in(ENDED_STATES), Session.last_state_updated >= _moment(cutoff)))
        with self.store.session() as db:
            return db.execute(query.order_by(Session.created)).all()

    def left_in_store(self, username: str, since: float, now: float) -> list[str]:
        """Ids of the user's sessions that left the plain list in (since, now): those that ended expiry
        earlier (for a ``timestamp`` older than what memory keeps, ``REMOVED_HORIZON``)."""
        expiry = self.settings.sessions.expiry_hours * 3600
        begin, end = _moment(since - expiry), _moment(now - expiry)
        query = (select(Session.id).join(User).where(User.username == username)
                 .where(Session.state.in_(ENDED_STATES), Session.last_state_updated > begin,
                        Session.last_state_updated < end).order_by(Session.created))
        with self.store.session() as db:
            return list(db.scalars(query))

    def _row(self, db: Any, session_id: str) -> tuple[Session, str]:
        found = db.execute(select(Session, User.username).join(User).where(Session.id == session_id)).first()
        if found is None:
            raise NotFound(f"no session '{session_id}'")
        return found[0], found[1]


def _moment(seconds: float) -> datetime:
    """A time to compare with the store's, from epoch seconds; a huge expiry gives 1970, not an error."""
    return datetime.fromtimestamp(max(seconds, 0.0), UTC)


def _user_code(username: str) -> str:
    """The product's 5 hex characters that stand for the user in a session URL."""
    return hashlib.sha256(username.encode()).hexdigest()[:5]


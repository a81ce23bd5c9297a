"""One handler per RPC method. Each checks permissions through the policy and calls a service."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from openworkbench import __version__
from openworkbench.api import params as p
from openworkbench.api.get_session import get_session
from openworkbench.api.rpc import Method
from openworkbench.api.session_requests import launch_request, resume_request, stop_request
from openworkbench.auth.permissions import Action, Principal, require
from openworkbench.errors import InternalError, WorkbenchError
from openworkbench.http_errors import stream_line
from openworkbench.services.compute import compute_envs
from openworkbench.services.container import Services

FEATURES = [
    "launch_job", "get_job_output", "stop_job", "get_session", "get_compute_envs", "get_users",
    "launch_session", "resume_session", "stop_session", "session_suspend", "get_historical_session",
]


def version(services: Services, principal: Principal, params: p.NoParams) -> Any:
    major, minor, patch = __version__.split(".")
    payload = {
        "version": {
            "major": major,
            "minor": minor,
            "patch": patch,
            "build_number": "0",
            "release_name": "Open Workbench",
            "build_type": "Release",
        },
        "features": FEATURES,
    }
    # The live product answers bare, the reference inside "result": serve both at once.
    return JSONResponse({**payload, "result": payload})


def whoami(services: Services, principal: Principal, params: p.NoParams) -> Any:
    """Who the credentials stand for, and with which power (not in the product: the CLI's ``whoami``)."""
    return {"username": principal.username, "kind": principal.kind}


def get_users(services: Services, principal: Principal, params: p.NoParams) -> Any:
    require(principal, Action.LIST_USERS)
    return services.accounts.list_users()


def get_compute_envs(services: Services, principal: Principal, params: p.GetComputeEnvs) -> Any:
    require(principal, Action.READ, params.user or principal.username)
    return compute_envs(services.settings, services.clusters)


def launch_job(services: Services, principal: Principal, params: p.LaunchJob) -> Any:
    job = params.job
    if principal.session_id is not None:  # called with a session's RPC cookie: the job gets one too
        job = services.sessions.with_session_cookie(principal.session_id, job)
    return {"job": services.jobs.launch(principal, job)}


def stop_job(services: Services, principal: Principal, params: p.StopJob) -> Any:
    services.jobs.stop(principal, params.job_id, params.force_quit)
    return {}


async def get_job_output(services: Services, principal: Principal, params: p.GetJobOutput) -> Any:
    # An ended job's files may have been removed: then it says so instead.
    chunks = await services.jobs.output(principal, params.job_id, params.user, services.retention.require_output)
    return ClosingStream(_guarded(chunks), media_type="application/x-ndjson")


class ClosingStream(StreamingResponse):
    """A stream whose generator is closed however the response ends, the client gone included: its files are
    closed at once, not whenever the suspended generator is collected."""

    def __init__(self, body: AsyncGenerator[bytes, None], media_type: str) -> None:
        super().__init__(body, media_type=media_type)
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._body.aclose()


async def _guarded(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """An error in mid-stream becomes one more line, as the product does."""
    try:
        async for chunk in chunks:
            yield chunk
    except (WorkbenchError, OSError) as exc:
        err = exc if isinstance(exc, WorkbenchError) else InternalError(f"reading the job's output failed: {exc}")
        if err is not exc:
            err.__cause__ = exc
        yield stream_line(err)
    finally:
        await chunks.aclose()


def get_historical_session(services: Services, principal: Principal, params: p.GetHistoricalSession) -> Any:
    result = services.history.read(principal, params.filter_time_begin, params.filter_time_end,
                                   params.include_jobs, params.include_all_users)
    return Response(b'{"result":' + result + b"}", media_type="application/json")


async def launch_session(services: Services, principal: Principal, params: p.LaunchSession) -> Any:
    return await services.sessions.launch(principal, launch_request(params))


async def resume_session(services: Services, principal: Principal, params: p.ResumeSession) -> Any:
    return await services.sessions.resume(principal, resume_request(params))


async def stop_session(services: Services, principal: Principal, params: p.StopSession) -> Any:
    return await services.sessions.stop(principal, stop_request(params))


METHODS: dict[str, Method] = {
    "version": Method(p.NoParams, blocking=version, allow_get=True, memory_first=True),
    "get_users": Method(p.NoParams, blocking=get_users, allow_get=True),
    "whoami": Method(p.NoParams, blocking=whoami, allow_get=True),
    "get_compute_envs": Method(p.GetComputeEnvs, blocking=get_compute_envs, allow_get=True),
    "launch_job": Method(p.LaunchJob, blocking=launch_job),
    "get_job_output": Method(p.GetJobOutput, handler=get_job_output),
    "stop_job": Method(p.StopJob, blocking=stop_job),
    "get_session": Method(p.GetSession, blocking=get_session, allow_get=True, memory_first=True),
    "launch_session": Method(p.LaunchSession, handler=launch_session),
    "resume_session": Method(p.ResumeSession, handler=resume_session),
    "stop_session": Method(p.StopSession, handler=stop_session),
    "get_historical_session": Method(p.GetHistoricalSession, blocking=get_historical_session),
}

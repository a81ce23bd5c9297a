"""A Python client of the Workbench API, on httpx: one method per RPC method, typed errors.

    from openworkbench.client import Client
    with Client() as wb:                      # WORKBENCH_SERVER, WORKBENCH_API_KEY (the posit-sdk's names)
        job = wb.launch_job({"name": "hi", "command": "echo hello"})
        for chunk in wb.get_job_output(job["id"]):
            print(chunk["output"], end="")

Every failure is an exception of ``openworkbench.errors``: the server's envelope becomes the class of its
code (``NotFound``, ``Unauthenticated``, ...; ``code`` and ``message`` as sent), a server that cannot be
reached is ``ServerUnreachable``, an answer that is not the API's is ``UnexpectedResponse``.
Inside a session, with neither variable set, ``RS_SERVER_ADDRESS`` and ``RS_SESSION_RPC_COOKIE`` are used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from openworkbench import errors
from openworkbench.errors import ConfigError, ServerUnreachable, UnexpectedResponse, WorkbenchError

SERVER_ENV, API_KEY_ENV = "WORKBENCH_SERVER", "WORKBENCH_API_KEY"
RPC_COOKIE_HEADER = "X-RS-Session-Server-RPC-Cookie"
SESSION_FINAL = frozenset({"suspended", "failed", "killed", "finished", "canceled"})
JOB_FINAL = frozenset({"Finished", "Failed", "Killed", "Canceled"})

# The class of each envelope code: every error class of errors.py that a server sends (the client's own have
# code 0); a code not listed becomes a plain WorkbenchError carrying it.
ERROR_CLASSES: dict[int, type[WorkbenchError]] = {
    cls.code: cls for cls in WorkbenchError.__subclasses__() if cls.__module__ == errors.__name__ and cls.code
}


def error_from(envelope: Mapping[str, Any], http_status: int) -> WorkbenchError:
    """The exception for ``{"code", "message"}`` as the server sent it (its code and HTTP status kept)."""
    code = envelope.get("code")
    message = str(envelope.get("message") or "the server gave no message")
    if not isinstance(code, int):
        return UnexpectedResponse(f"malformed error from the server (HTTP {http_status}): {message}")
    exc = ERROR_CLASSES.get(code, WorkbenchError)(message)
    exc.code, exc.http_status = code, http_status
    return exc


class Client:
    """A connection to one server with one set of credentials. Use it as a context manager, or ``close()``."""

    def __init__(self, server: str | None = None, api_key: str | None = None, *, rpc_cookie: str | None = None,
                 timeout: float = 30.0, transport: httpx.BaseTransport | None = None) -> None:
        api_key = api_key or os.environ.get(API_KEY_ENV) or None
        if api_key is None and rpc_cookie is None:
            rpc_cookie = os.environ.get("RS_SESSION_RPC_COOKIE") or None
        server = server or os.environ.get(SERVER_ENV) or (os.environ.get("RS_SERVER_ADDRESS") if rpc_cookie else None)
        if not server:
            raise ConfigError(f"no server given: pass --server URL or set {SERVER_ENV}")
        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"the server must be an http:// or https:// URL, not {server!r}")
        if api_key is None and rpc_cookie is None:
            raise ConfigError(f"no API key given: pass --api-key TOKEN or set {API_KEY_ENV}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {RPC_COOKIE_HEADER: str(rpc_cookie)}
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def url(self, path: str) -> str:
        """The full address of a path the server gave (a session's ``url``)."""
        return self.server + path if path.startswith("/") else path

    # -- the envelope --------------------------------------------------------------------------
    def call(self, method: str, **kwparams: Any) -> Any:
        """``POST /api/<method>``; the ``result``, or the typed error. None kwparams are left out."""
        body = {"method": method, "kwparams": {k: v for k, v in kwparams.items() if v is not None}}
        try:
            response = self._http.post(f"/api/{method}", json=body)
        except httpx.HTTPError as exc:
            raise _transport_error(self.server, exc) from None
        return _result(response)

    # -- one method per RPC method --------------------------------------------------------------
    def version(self) -> dict[str, Any]:
        return dict(self.call("version"))

    def whoami(self) -> dict[str, Any]:
        """The caller: ``username`` and the effective token ``kind`` (an Open Workbench extension)."""
        return dict(self.call("whoami"))

    def get_users(self) -> list[dict[str, Any]]:
        return list(self.call("get_users"))

    def get_compute_envs(self, user: str | None = None) -> dict[str, Any]:
        return dict(self.call("get_compute_envs", user=user))

    def launch_job(self, job: Mapping[str, Any], apply_config_settings: bool | None = None) -> dict[str, Any]:
        """Launch ``job`` (the API's job object); the stored job."""
        return dict(self.call("launch_job", job=dict(job), apply_config_settings=apply_config_settings)["job"])

    def stop_job(self, job_id: str, force_quit: bool = False) -> None:
        self.call("stop_job", job_id=job_id, force_quit=force_quit)

    def get_session(self, session_id: str | Iterable[str] | None = None, user: str | None = None,
                    fields: list[str] | None = None, include_jobs: bool | None = None,
                    include_all_jobs: bool | None = None) -> dict[str, Any]:
        ids = session_id if session_id is None or isinstance(session_id, str) else ",".join(session_id)
        return dict(self.call("get_session", session_id=ids, user=user, fields=fields, include_jobs=include_jobs,
                              include_all_jobs=include_all_jobs))

    def launch_session(self, workbench: str, *, username: str | None = None, name: str | None = None,
                       open_file: str | None = None, working_directory: str | None = None,
                       launch_parameters: Mapping[str, Any] | None = None, start_hooks: Any = None,
                       stop_hooks: Any = None, environment: Any = None) -> dict[str, Any]:
        """Launch an IDE session; ``{id, url, project_id}`` at once (it starts in the background)."""
        return dict(self.call(
            "launch_session", workbench=workbench, username=username, name=name, open_file=open_file,
            working_directory=working_directory, launch_parameters=launch_parameters, start_hooks=start_hooks,
            stop_hooks=stop_hooks, environment=environment,
        ))

    def resume_session(self, session_id: str, *, username: str | None = None,
                       launch_parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return dict(self.call("resume_session", session_id=session_id, username=username,
                              launch_parameters=launch_parameters))

    def stop_session(self, session_ids: str | Iterable[str], *, force_quit: bool = False,
                     suspend_session: bool = False) -> None:
        ids = session_ids if isinstance(session_ids, str) else ",".join(session_ids)
        self.call("stop_session", session_ids=ids, force_quit=force_quit, suspend_session=suspend_session)

    def get_job_output(self, job_id: str, user: str | None = None, *, follow: bool = True,
                       quiet: float = 1.0, limit: float = 10.0) -> Iterator[dict[str, Any]]:
        """The job's output as it is streamed: ``{"jobId", "outputType", "output"}`` chunks.

        ``follow``: until the job has ended and all its output was sent. Otherwise only what it has written so
        far: the stream is left at its first pause of ``quiet`` seconds, or after ``limit`` seconds.
        """
        body = {"method": "get_job_output", "kwparams": {k: v for k, v in (("job_id", job_id), ("user", user)) if v}}
        timeout = httpx.Timeout(self.timeout, read=None if follow else self.timeout)
        try:
            with self._http.stream("POST", "/api/get_job_output", json=body, timeout=timeout) as response:
                if "ndjson" not in response.headers.get("content-type", ""):
                    response.read()
                    _result(response)  # the error envelope: raises
                    raise UnexpectedResponse("get_job_output answered without an output stream")
                if not follow:
                    # The answer has begun (a busy server had the full timeout for it); from here a pause of
                    # `quiet` seconds ends the read. The transport reads this when the body is first read.
                    response.request.extensions["timeout"] = {**timeout.as_dict(), "read": quiet}
                yield from _chunks(response, None if follow else time.monotonic() + limit)
        except httpx.HTTPError as exc:
            raise _transport_error(self.server, exc) from None

    # -- conveniences over get_session -----------------------------------------------------------
    def session(self, session_id: str, user: str | None = None) -> dict[str, Any]:
        sessions = self.get_session(session_id, user=user)["sessions"]
        if not sessions:
            raise errors.NotFound(f"no session '{session_id}'")
        return dict(sessions[0])

    def job(self, job_id: str, user: str | None = None) -> dict[str, Any]:
        for job in self.get_session(user=user, include_all_jobs=True).get("jobs", []):
            if job["id"] == job_id:
                return dict(job)
        raise errors.NotFound(f"no job '{job_id}'" + (f" of user '{user}'" if user else ""))

    def wait_session(self, session_id: str, until: Iterable[str] = ("running",), *, user: str | None = None,
                     timeout: float | None = None, poll: float = 0.25,
                     on_state: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll until the session is in one of ``until`` or has ended; the session. ``TimeoutError`` past
        ``timeout`` seconds. ``on_state`` sees the session at every poll."""
        wanted = set(until)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.session(session_id, user)
            if on_state is not None:
                on_state(current)
            if current["activity_state"] in wanted or current["activity_state"] in SESSION_FINAL:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"session {session_id} is still {current['activity_state']} after {timeout:g} s")
            time.sleep(poll)

    def wait_job(self, job_id: str, *, user: str | None = None, timeout: float | None = None,
                 poll: float = 0.25) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.job(job_id, user)
            if job["status"] in JOB_FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")
            time.sleep(poll)


def _chunks(response: httpx.Response, deadline: float | None) -> Iterator[dict[str, Any]]:
    lines = response.iter_lines()
    while True:
        try:
            text = next(lines)
        except StopIteration:
            return
        except httpx.ReadTimeout:
            if deadline is None:
                raise
            return  # not following: the output so far has been read
        if not text.strip():
            continue
        try:
            chunk = json.loads(text)
        except ValueError:
            raise UnexpectedResponse(f"get_job_output sent a line that is not JSON: {text[:200]!r}") from None
        if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
            raise error_from(chunk["error"], response.status_code)
        yield chunk
        if deadline is not None and time.monotonic() > deadline:
            return


def _result(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        raise error_from(body["error"], response.status_code)
    if response.status_code != 200 or not isinstance(body, dict) or "result" not in body:
        snippet = " ".join(response.text.split())[:120]
        raise UnexpectedResponse(f"unexpected answer from {response.request.url} (HTTP {response.status_code}): "
                                 f"{snippet or 'empty body'}")
    return body["result"]


def _transport_error(server: str, exc: httpx.HTTPError) -> WorkbenchError:
    if isinstance(exc, httpx.TimeoutException):
        return ServerUnreachable(f"no answer from {server} in time ({type(exc).__name__})")
    if isinstance(exc, httpx.TransportError):
        reason = str(exc) or type(exc).__name__
        return ServerUnreachable(f"cannot reach {server}: {reason}")
    return UnexpectedResponse(f"HTTP error talking to {server}: {exc}")

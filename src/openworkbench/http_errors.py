"""Every error body the server sends, and the log line of every 5xx: the one place both are made.

Three audiences, one exception tree (errors.py):

- **The API** (``/api/<method>``, ``/metrics``, a page form's refusal, any path a program asks for): the envelope
  ``{"error": {"code", "message"}}`` with the class's own ``code`` and declared ``http_status``. A class added to
  errors.py is rendered by what it declares, with no edit here.
- **The proxy** (``/s/<part>/``): the envelope in HTTP terms, ``code`` equal to the status: a missing session is
  404, one not running 503, an IDE that does not answer 502 (errors of the IDE's side declare their status).
- **Pages** (a browser asking for HTML): an HTML page with the status and the message.

A 5xx is logged here, once, with its cause (the exception chain); its body says only what the class's message
says, so a traceback reaches the log and never a response. Call sites build an exception and hand it here; a
test (tests/test_http_errors.py) fails when an error body is built anywhere else in the package.
"""

from __future__ import annotations

import http
import json
import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, Response

from openworkbench.errors import InternalError, InvalidState, NotFound, StoreUnavailable, WorkbenchError

log = logging.getLogger("openworkbench.http")

INTERNAL = "Internal server error"
# The proxy answers in HTTP terms: application errors (HTTP 200 in the API) get a real status there.
PROXY_STATUS: tuple[tuple[type[WorkbenchError], int], ...] = ((NotFound, 404), (InvalidState, 503))
JSON = "application/json"


def envelope(exc: WorkbenchError, code: int | None = None) -> bytes:
    """The API's error body: ``{"error": {"code", "message"}}`` (the class's code unless ``code`` is given)."""
    body = {"error": {"code": exc.code if code is None else code, "message": exc.message}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def logged(exc: WorkbenchError, status: int, where: str = "") -> None:
    """Log a 5xx once, with its cause: the exception chain (a traceback) when there is one."""
    if status < 500 or isinstance(exc, StoreUnavailable):
        return  # the store logs an outage once (store/availability.py): a line per refused request would bury it
    cause = exc.__cause__ or exc.__context__
    detail = getattr(exc, "log_text", None)
    extra = f" ({detail()})" if callable(detail) else ""
    log.error("%s -> %d %s: %s%s", where or "(no request)", status, type(exc).__name__, exc.message, extra,
              exc_info=(type(cause), cause, cause.__traceback__) if cause is not None else None)


def unexpected(exc: BaseException, where: str) -> InternalError:
    """A bug or a foreign error that reached the boundary: logged with its traceback, answered as a plain 500."""
    log.error("%s -> 500 unhandled %s", where, type(exc).__name__, exc_info=(type(exc), exc, exc.__traceback__))
    internal = InternalError(INTERNAL)
    internal.__cause__ = exc
    internal.logged = True  # type: ignore[attr-defined]  # its cause's traceback is in the log already
    return internal


def _log_once(exc: WorkbenchError, status: int, where: str) -> None:
    if not getattr(exc, "logged", False):
        logged(exc, status, where)


def with_retry(exc: WorkbenchError, headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
    """``headers`` plus Retry-After when the class declares how long to wait (a store outage)."""
    if exc.retry_after is None:
        return headers
    return {**(headers or {}), "Retry-After": str(exc.retry_after)}


def api_error(exc: WorkbenchError, *, status: int | None = None, headers: Mapping[str, str] | None = None,
              where: str = "") -> Response:
    """The API's answer to ``exc``: the envelope at the class's HTTP status (or ``status``)."""
    status = exc.http_status if status is None else status
    _log_once(exc, status, where)
    return Response(envelope(exc), status_code=status, media_type=JSON, headers=with_retry(exc, headers))


def proxy_status(exc: WorkbenchError) -> int:
    if exc.http_status >= 400:
        return exc.http_status
    return next((status for kind, status in PROXY_STATUS if isinstance(exc, kind)), 500)


def proxy_error(exc: WorkbenchError, *, headers: Mapping[str, str] | None = None, where: str = "") -> Response:
    """The proxy's answer to ``exc``: the envelope with ``code`` = HTTP status."""
    status = proxy_status(exc)
    _log_once(exc, status, where)
    return Response(envelope(exc, status), status_code=status, media_type=JSON, headers=with_retry(exc, headers))


def page_error(exc: WorkbenchError, *, status: int | None = None, where: str = "") -> HTMLResponse:
    """An HTML error page for a browser: the status and the class's message, nothing more."""
    from openworkbench.web.templating import NO_STORE, TEMPLATES  # web imports the proxy, which imports this

    status = (exc.http_status if exc.http_status >= 400 else 400) if status is None else status
    _log_once(exc, status, where)
    body = TEMPLATES.get_template("error.html").render(
        status=status, reason=http.HTTPStatus(status).phrase, message=exc.message)
    return HTMLResponse(body, status_code=status, headers=with_retry(exc, NO_STORE))


def from_http_exception(exc: HTTPException) -> WorkbenchError:
    """Starlette's own refusals (no route: 404, wrong verb: 405) as one of ours, with the status it had."""
    error = WorkbenchError(str(exc.detail))
    error.code = error.http_status = exc.status_code
    return error


def wants_html(conn: HTTPConnection) -> bool:
    return "text/html" in conn.headers.get("accept", "")


def raw_http(exc: WorkbenchError) -> bytes:
    """A whole HTTP/1.1 response, for refusals made before a request exists to answer (api/http_protocol.py)."""
    _log_once(exc, exc.http_status, "connection")
    body = envelope(exc)
    retry = "" if exc.retry_after is None else f"retry-after: {exc.retry_after}\r\n"
    head = (f"HTTP/1.1 {exc.http_status} {http.HTTPStatus(exc.http_status).phrase}\r\n"
            f"content-type: {JSON}\r\ncontent-length: {len(body)}\r\n{retry}connection: close\r\n\r\n")
    return head.encode() + body


def stream_line(exc: WorkbenchError) -> bytes:
    """The envelope as the last line of an NDJSON stream (``get_job_output``), after its 200 has gone out."""
    _log_once(exc, 500 if exc.http_status >= 500 else 200, "stream")
    return envelope(exc) + b"\n"


def escaped(conn: HTTPConnection, exc: Exception) -> Response:
    """The answer to what escaped a route (api/boundary.py): the proxy's body under ``/s/``, a page for a
    browser outside the API, the envelope otherwise."""
    headers: Mapping[str, str] | None = None
    if isinstance(exc, HTTPException):
        error, headers = from_http_exception(exc), exc.headers
    elif isinstance(exc, WorkbenchError):
        error = exc
    else:
        error = unexpected(exc, f"{conn.scope.get('method', 'WEBSOCKET')} {conn.url.path}")
    path = conn.url.path
    if path.startswith("/s/"):
        return proxy_error(error, headers=headers)
    if wants_html(conn) and not path.startswith("/api/"):
        response: Response = page_error(error, where=path)
        response.headers.update(headers or {})
        return response
    return api_error(error, headers=headers, where=path)

"""HTTP forwarding: the browser's request streamed to the IDE, its answer streamed back.

Small answers (most API calls) are read whole and sent in one message instead: streaming costs a task and
a message per chunk, more than relaying a small body takes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from openworkbench.errors import PermissionDenied, UpstreamRefused
from openworkbench.http_errors import proxy_error
from openworkbench.proxy.pool import UpstreamPool
from openworkbench.proxy.rewrite import filter_request_headers, filter_response_headers, origin_allowed, upstream_path
from openworkbench.proxy.target import ProxyTarget, UpstreamUnavailable

log = logging.getLogger(__name__)

UNREACHABLE = "The session's IDE is not reachable"
CROSS_ORIGIN = "Cross-origin request refused"
# Methods a page of another site can make a browser send without CORS' consent, with the user's cookies.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# An answer announced at most this long is read whole before anything goes to the browser.
WHOLE_BODY_MAX = 64 * 1024
_NO_BODY_STATUS = (204, 304)


def raw_path_and_query(conn: HTTPConnection) -> tuple[str, str]:
    """The path as the browser sent it (still percent-encoded: %2F in Jupyter file names must survive)."""
    raw = conn.scope.get("raw_path")
    path = raw.decode("latin-1") if raw else conn.scope["path"]
    return path, conn.scope.get("query_string", b"").decode("latin-1")


def upstream_headers(conn: HTTPConnection, target: ProxyTarget) -> list[tuple[str, str]]:
    raw = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in conn.headers.raw]
    client = conn.client.host if conn.client else None
    return filter_request_headers(raw, target, client_host=client, scheme=conn.scope.get("scheme", "http"))


def same_origin(conn: HTTPConnection) -> bool:
    # Host only: X-Forwarded-Host from a trusted proxy has already become the Host (api/forwarded.py), and
    # from anyone else it is not believed (it would let any page pass by naming itself).
    return origin_allowed(conn.headers.get("origin"), conn.headers.get("host"))


def refused_where(target: ProxyTarget) -> str:
    """A refused upstream is an attack or a broken session: the log says which session (the renderer adds
    whose socket it was, ``UpstreamRefused.log_text``)."""
    return f"proxy refused session {target.session_id or '?'} ({target.prefix})"


def unreachable(cause: BaseException) -> UpstreamUnavailable:
    """The 502 of an IDE that did not answer, with what went wrong as its cause (for the log)."""
    exc = UpstreamUnavailable(UNREACHABLE)
    exc.__cause__ = cause
    return exc


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() != "0")


async def _request_body(request: Request) -> AsyncIterator[bytes]:
    async for chunk in request.stream():
        if chunk:
            yield chunk


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class _WholeResponse(Response):
    """An answer read whole: Starlette's Response sends it as one start and one body message."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code, self.raw_headers, self.body, self.background = status, headers, body, None


class _RelayResponse(StreamingResponse):
    """Streams the IDE's body; always gives the upstream connection back (or drops it) when done.

    StreamingResponse supplies the disconnect handling (a browser that leaves stops the relay).
    """

    def __init__(self, upstream: aiohttp.ClientResponse, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(upstream.content.iter_any(), status_code=upstream.status)
        self.raw_headers = headers
        self._upstream = upstream

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except aiohttp.ClientError as exc:
            # Not sending the final message makes the server drop the connection, so the browser sees a
            # broken response instead of a truncated one that looks complete.
            log.warning("IDE response broke off, dropping the browser's connection: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # After a complete body aiohttp has already pooled the connection and this is a no-op;
            # after a disconnect or error it closes the half-read connection.
            self._upstream.close()


def _small(upstream: aiohttp.ClientResponse) -> bool:
    """Is the answer's body known to be short (or absent)?"""
    if upstream.method == "HEAD" or upstream.status in _NO_BODY_STATUS:
        return True
    length = upstream.content_length
    return length is not None and length <= WHOLE_BODY_MAX


async def _answer(upstream: aiohttp.ClientResponse, headers: list[tuple[bytes, bytes]]) -> Response:
    if not _small(upstream):
        return _RelayResponse(upstream, headers)
    try:
        body = await upstream.read()  # gives the connection back to the pool
    except (aiohttp.ClientError, TimeoutError) as exc:
        upstream.close()
        # Nothing has gone to the browser yet: an honest 502 rather than a broken answer.
        return proxy_error(unreachable(exc), where="IDE response broke off before its end:")
    return _WholeResponse(upstream.status, headers, body)


async def forward_http(request: Request, target: ProxyTarget, pool: UpstreamPool) -> Response:
    """Forward one HTTP request of any method to the IDE behind ``target``."""
    if request.method not in _SAFE_METHODS and not same_origin(request):
        return proxy_error(PermissionDenied(CROSS_ORIGIN))
    path, query = raw_path_and_query(request)
    url = pool.url(upstream_path(target, path, query), target.upstream)
    headers = upstream_headers(request, target)
    body = _request_body(request) if _has_body(request) else None
    try:
        upstream = await pool.session(target.upstream).request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )
    except UpstreamRefused as exc:
        return proxy_error(exc, where=refused_where(target))
    except (aiohttp.ClientError, TimeoutError, ClientDisconnect) as exc:
        return proxy_error(unreachable(exc), where=f"proxy {request.method} {target.prefix} -> {target.upstream}")
    raw = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in upstream.raw_headers]
    host = request.headers.get("host", "")
    return await _answer(upstream, _raw(filter_response_headers(raw, target, request_host=host)))

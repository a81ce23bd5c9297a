"""A tiny HTTP client that talks to one session's IDE the way the proxy does: over its Unix socket
(or loopback port), at the path the IDE expects, with the per-session secret headers.

Every request uses its own connection (``force_close``): a pooled keep-alive connection would
count as an open client to code-server and keep its heartbeat "alive" for ever. Each connection to a socket
is checked as the proxy checks its own (``Upstream``): the readiness probe and the courtesy calls (save,
shut down, activity) must not talk, as root, to whatever the user put at the socket's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import aiohttp

from openworkbench.errors import InternalError, UpstreamRefused
from openworkbench.ides.base import Ide, LaunchContext

log = logging.getLogger(__name__)
T = TypeVar("T")


class IdeRequestError(InternalError):
    """The IDE did not answer, or answered with an unexpected status (``status`` 0: no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class IdeClient:
    def __init__(self, ide: Ide, ctx: LaunchContext, timeout: float = 10.0) -> None:
        self.ide = ide
        self.ctx = ctx
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        upstream = ide.upstream(ctx)
        if upstream is None:
            raise InternalError(f"{ide.name}: where it listens is not known yet (no endpoint or port)")
        self.upstream = upstream
        self.base = str(self.upstream.url("/" if ide.strip_prefix else ctx.prefix))
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> IdeClient:
        self._session = aiohttp.ClientSession(
            connector=self.upstream.connector(force_close=True), headers=self.ide.upstream_headers(self.ctx),
            timeout=self._timeout,
        )
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path: str) -> str:
        """``path`` is relative to the IDE's base (the prefix, or "/" when the proxy strips it)."""
        return self.base + path.lstrip("/")

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise InternalError("IdeClient used outside 'async with'")
        return self._session

    @asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self.session.request(method, self.url(path), allow_redirects=False, **kwargs) as response:
                yield response
        except (aiohttp.ClientError, OSError) as exc:  # OSError covers TimeoutError
            raise IdeRequestError(f"{self.ide.name} did not answer {method} {path}: {exc!r}") from None

    async def status(self, path: str) -> int:
        async with self._request("GET", path) as response:
            await response.read()
            return response.status

    async def get_json(self, path: str) -> Any:
        async with self._request("GET", path) as response:
            if response.status != 200:
                raise IdeRequestError(f"{self.ide.name} answered {response.status} to GET {path}", response.status)
            return await response.json(content_type=None)

    async def post(self, path: str, json: Any = None) -> int:
        async with self._request("POST", path, json=json) as response:
            await response.read()
            return response.status

    def websocket(self, path: str) -> Any:
        """``async with client.websocket(path) as ws``: a WebSocket to the IDE (kernels, terminals)."""
        return self.session.ws_connect(self.url(path))


async def using(ide: Ide, ctx: LaunchContext, call: Callable[[IdeClient], Awaitable[T]]) -> T:
    async with IdeClient(ide, ctx) as client:
        return await call(client)


async def answers(ide: Ide, ctx: LaunchContext) -> bool:
    """Does the IDE answer its ready path? Raises ``UpstreamRefused`` if what listens is not the IDE."""
    try:
        async with IdeClient(ide, ctx) as client:
            return await client.status(ide.ready_path) == 200
    except UpstreamRefused:
        raise
    except Exception:  # not listening yet, connection refused, half-started: all mean "not ready"
        return False


async def quietly(work: Any, default: Any) -> Any:
    """An IDE that does not answer a courtesy call (save, shutdown, activity) must not stop the flow."""
    try:
        return await asyncio.wait_for(work, timeout=10)
    except Exception as exc:
        log.info("IDE call failed: %s", exc)
        return default

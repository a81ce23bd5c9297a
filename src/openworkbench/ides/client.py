"""A tiny HTTP client that talks to one session's IDE the way the proxy does: over its Unix socket
(or loopback port), at the path the IDE expects, with the per-session secret headers.

Every request uses its own connection (``force_close``): a pooled keep-alive connection would
count as an open client to code-server and keep its heartbeat "alive" for ever.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import aiohttp

from openworkbench.errors import InternalError
from openworkbench.ides.base import Ide, LaunchContext


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
        path = "/" if ide.strip_prefix else ctx.prefix
        if ctx.network:
            if not ctx.endpoint:
                raise InternalError(f"{ide.name} on a cluster node has not reported where it listens yet")
            self.base = f"http://{ctx.endpoint}{path}"
        elif ide.uses_socket:
            self.base = "http://localhost" + path
        elif ctx.port is not None:
            self.base = f"http://127.0.0.1:{ctx.port}{path}"
        else:
            raise InternalError(f"{ide.name} listens on a loopback port, and the launch context has none")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> IdeClient:
        connector: aiohttp.BaseConnector
        if self.ide.uses_socket and not self.ctx.network:
            connector = aiohttp.UnixConnector(path=self.ctx.socket_path, force_close=True)
        else:
            connector = aiohttp.TCPConnector(force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=self.ide.upstream_headers(self.ctx), timeout=self._timeout
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

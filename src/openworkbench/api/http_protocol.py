"""uvicorn's httptools protocol with the limits uvicorn lacks.

- A deadline for the request line and headers (``server.header_timeout_s``): uvicorn has none, so a client
  sending a header byte every few seconds would hold a connection for ever.
- A cap on their size (``server.max_header_bytes``), answered 431: llhttp buffers a header of any size.
- The connection limit's 503 in the API's error envelope instead of uvicorn's plain text.

httptools rather than h11: it is the parser uvicorn picks when installed and several times faster on the
RPC hot path; h11's ``max_incomplete_event_size`` would cap headers but answer a bare 400, and neither has a
header deadline, so this class is needed either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from openworkbench.config import ServerSettings
from openworkbench.errors import HeadersTooLarge, Overloaded, RequestTimeout, WorkbenchError
from openworkbench.http_errors import api_error, raw_http

_CLOSE = {"connection": "close"}


def _refusal_app(exc: WorkbenchError) -> ASGIApp:
    return api_error(exc, headers=_CLOSE, where="connection limit")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The connection limit is checked here (to answer in the envelope), so uvicorn's own check is off.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._header_bytes = 0  # bytes received in earlier reads while this request's headers were incomplete
        self._last_read = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = len(data)
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)  # the whole read: headers still incomplete after it
            if self._header_bytes > self.max_header_bytes:
                self._refuse_raw(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        if self._deadline is None:  # a keep-alive connection's next request: its own deadline
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        refusal: WorkbenchError | None = None
        # The sum of the reads is an upper bound; only past the cap are the headers counted exactly.
        if self._header_bytes + self._last_read > self.max_header_bytes and self._exact_size() > self.max_header_bytes:
            refusal = self._too_large()
        elif self.max_connections is not None and (
            len(self.connections) >= self.max_connections or len(self.tasks) >= self.max_connections
        ):
            # Logged by the renderer, as every 5xx.
            refusal = Overloaded("The server has too many open connections; try again shortly")
        if refusal is None:
            super().on_headers_complete()
            return
        app, self.app = self.app, _refusal_app(refusal)
        try:
            super().on_headers_complete()  # the request runs through the usual cycle, answered by the refusal
        finally:
            self.app = app

    def _exact_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _too_large(self) -> HeadersTooLarge:
        limit = self.max_header_bytes
        return HeadersTooLarge(f"the request headers are larger than the server accepts ({limit} bytes)")

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        self._refuse_raw(RequestTimeout(f"the request headers did not arrive within {self.header_timeout:g} s"))

    def _refuse_raw(self, exc: WorkbenchError) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # never into the middle of an answer
            self.transport.write(raw_http(exc))
        self.transport.close()


def protocol_class(server: ServerSettings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class uvicorn builds for each connection, with this server's limits."""

    class Configured(LimitedHttpToolsProtocol):
        header_timeout = server.header_timeout_s
        max_header_bytes = server.max_header_bytes

    return Configured

"""One keep-alive aiohttp client per IDE (per ``Upstream``)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from openworkbench.proxy.upstream import NOWHERE, Upstream

# Node (code-server) drops idle keep-alive connections after 5 s; reusing one it has just closed fails a POST,
# which aiohttp cannot retry. Idling out first avoids that race.
KEEPALIVE_SECONDS = 4.0
# The IDE sits on a local socket: anything slower than this to accept is down, not slow.
CONNECT_TIMEOUT_SECONDS = 5.0
# Browsers send large cookie headers, IDEs large Set-Cookie / CSP headers; aiohttp's 8 KiB default is too tight.
MAX_HEADER_BYTES = 65536


class UpstreamPool:
    """Owns the client sessions to the IDEs, created on first use and reused.

    Every new connection a session opens to a Unix socket is checked (``Upstream.connector``): the socket must
    belong to, and be served by, the session's owner.
    """

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        self._connect_timeout = connect_timeout
        self._sessions: dict[Upstream, aiohttp.ClientSession] = {}

    def session(self, upstream: Upstream) -> aiohttp.ClientSession:
        """The session for one IDE; must be called on the event loop that will use it."""
        session = self._sessions.get(upstream)
        if session is None or session.closed:
            session = self._sessions[upstream] = self._open(upstream)
        return session

    @staticmethod
    def url(path_and_query: str, upstream: Upstream | None = None) -> URL:
        """An upstream URL, the path percent-encoded as sent; for a socket the host is nominal (the socket
        decides), for a TCP upstream it is its host and port."""
        path, _, query = path_and_query.partition("?")
        return (upstream or NOWHERE).url(path, query)

    def _open(self, upstream: Upstream) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=upstream.connector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS),
            # Bodies (downloads, event streams, long polls) may last any time; only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            auto_decompress=False,  # pass bytes through exactly as encoded
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies belong to the browser, never to the proxy
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )

    async def forget(self, upstream: Upstream) -> None:
        """Close the connections to one IDE (its session stopped)."""
        session = self._sessions.pop(upstream, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


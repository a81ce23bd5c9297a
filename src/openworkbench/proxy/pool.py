"""One keep-alive aiohttp client per IDE socket."""

from __future__ import annotations

import aiohttp
from yarl import URL

# Node (code-server) drops idle keep-alive connections after 5 s; reusing one it has just closed fails a POST,
# which aiohttp cannot retry. Idling out first avoids that race.
KEEPALIVE_SECONDS = 4.0
# The IDE sits on a local socket: anything slower than this to accept is down, not slow.
CONNECT_TIMEOUT_SECONDS = 5.0
# Browsers send large cookie headers, IDEs large Set-Cookie / CSP headers; aiohttp's 8 KiB default is too tight.
MAX_HEADER_BYTES = 65536
TCP = "tcp://"  # an upstream "socket path" with this prefix is a host:port


class UpstreamPool:
    """Owns the client sessions to the IDEs' Unix sockets, created on first use and reused."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT_SECONDS) -> None:
        self._connect_timeout = connect_timeout
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def session(self, socket_path: str) -> aiohttp.ClientSession:
        """The session for one socket; must be called on the event loop that will use it."""
        session = self._sessions.get(socket_path)
        if session is None or session.closed:
            session = self._sessions[socket_path] = self._open(socket_path)
        return session

    @staticmethod
    def url(path_and_query: str, upstream: str = "") -> URL:
        """An upstream URL, the path percent-encoded as sent; for a socket the host is nominal (the socket
        decides), for ``tcp://host:port`` it is that host and port."""
        path, _, query = path_and_query.partition("?")
        host, port = "localhost", None
        if upstream.startswith(TCP):
            host, _, port_text = upstream[len(TCP):].rpartition(":")
            port = int(port_text)
        return URL.build(scheme="http", host=host, port=port, path=path, query_string=query, encoded=True)

    def _open(self, socket_path: str) -> aiohttp.ClientSession:
        connector: aiohttp.BaseConnector
        if socket_path.startswith(TCP):  # an IDE on a cluster node
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
        else:
            connector = aiohttp.UnixConnector(path=socket_path, limit=0, keepalive_timeout=KEEPALIVE_SECONDS)
        return aiohttp.ClientSession(
            connector=connector,
            # Bodies (downloads, event streams, long polls) may last any time; only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            auto_decompress=False,  # pass bytes through exactly as encoded
            cookie_jar=aiohttp.DummyCookieJar(),  # cookies belong to the browser, never to the proxy
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            max_line_size=MAX_HEADER_BYTES,
            max_field_size=MAX_HEADER_BYTES,
        )

    async def forget(self, socket_path: str) -> None:
        """Close the connections to one socket (its session stopped)."""
        session = self._sessions.pop(socket_path, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

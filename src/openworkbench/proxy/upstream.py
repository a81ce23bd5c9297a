"""Where an IDE listens, as one value, and the aiohttp connector that only ever reaches that IDE.

A session's IDE listens on a Unix socket in a directory its user owns (checked on every new connection:
``safefs.sockets``), or on ``host:port`` of a cluster node (a path the user cannot swap; the host was checked
to be one of the cluster's nodes when the job reported it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace
from yarl import URL

from openworkbench.safefs.sockets import connect_checked

TCP = "tcp://"


@dataclass(frozen=True)
class Upstream:
    """A Unix socket ``path`` that must be a socket of, and served by, ``uid``; or ``host``:``port``."""

    path: str = ""
    uid: int = -1  # -1 never matches: an unknown owner reaches nothing
    host: str = ""
    port: int = 0

    @classmethod
    def unix(cls, path: str, uid: int) -> Upstream:
        return cls(path=path, uid=uid)

    @classmethod
    def tcp(cls, host: str, port: int) -> Upstream:
        return cls(host=host, port=port)

    @classmethod
    def parse(cls, text: str, uid: int) -> Upstream:
        """``tcp://host:port`` or a socket path (then served by ``uid``)."""
        if text.startswith(TCP):
            host, _, port = text[len(TCP):].rpartition(":")
            return cls.tcp(host, int(port))
        return cls.unix(text, uid)

    @classmethod
    def node(cls, endpoint: str) -> Upstream:
        """``host:port`` as a job reports it from a cluster node (``Session.endpoint``)."""
        host, _, port = endpoint.rpartition(":")
        return cls.tcp(host, int(port))

    @property
    def endpoint(self) -> str:
        """``host:port`` of a TCP upstream (what ``node`` reads)."""
        return f"{self.host}:{self.port}"

    @property
    def is_unix(self) -> bool:
        return not self.host

    def __str__(self) -> str:
        return self.path if self.is_unix else f"{TCP}{self.host}:{self.port}"

    def url(self, path: str, query: str = "") -> URL:
        """An URL to the IDE, ``path`` percent-encoded as sent; for a socket the host is nominal."""
        host, port = ("localhost", None) if self.is_unix else (self.host, self.port)
        return URL.build(scheme="http", host=host, port=port, path=path, query_string=query, encoded=True)

    def connector(self, **options: Any) -> aiohttp.BaseConnector:
        """An aiohttp connector to this IDE; for a socket, every new connection is checked."""
        if self.is_unix:
            return CheckedUnixConnector(self.path, self.uid, **options)
        return aiohttp.TCPConnector(**options)


class CheckedUnixConnector(aiohttp.UnixConnector):
    """``UnixConnector`` whose new connections reach only a socket owned and served by ``uid``.

    Only *new* connections pay for the checks (an open, an fstat, a getsockopt); keep-alive reuse is free.
    ``UpstreamRefused`` passes through aiohttp unchanged (it is not an OSError).
    """

    def __init__(self, path: str, uid: int, **options: Any) -> None:
        super().__init__(path, **options)
        self.uid = uid

    async def _create_connection(self, req: aiohttp.ClientRequest, traces: list[Trace],
                                 timeout: aiohttp.ClientTimeout) -> ResponseHandler:
        try:
            sock = await connect_checked(self.path, self.uid)
        except OSError as exc:  # missing, refused: the IDE is not listening (not an attack)
            raise UnixClientConnectorError(self.path, req.connection_key, exc) from exc
        try:
            _, proto = await self._loop.create_unix_connection(self._factory, sock=sock)
        except OSError as exc:
            sock.close()
            raise UnixClientConnectorError(self.path, req.connection_key, exc) from exc
        return proto


NOWHERE = Upstream.unix("", -1)
"""Where an IDE listens before it is known (a cluster node has not reported yet): connects to nothing."""

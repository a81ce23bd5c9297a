"""``X-Forwarded-*`` believed only from ``server.trusted_proxies``.

From any other peer the headers are removed before anything reads them: a client must not choose the Host
the same-origin checks compare Origin with, nor the address the proxy reports to an IDE. From a trusted proxy,
X-Forwarded-Host becomes the Host (every check then uses one value) and uvicorn's own middleware applies
X-Forwarded-Proto and -For, walking -For from the right past trusted hops.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_FORWARDED = frozenset({b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-for",
                        b"x-forwarded-port", b"x-forwarded-prefix", b"x-real-ip"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.networks: list[Network] = [ipaddress.ip_network(item, strict=False) for item in trusted]
        # The same list for uvicorn: it must pick the client out of a trusted proxy's X-Forwarded-For.
        self.forwarded = ProxyHeadersMiddleware(app, trusted_hosts=trusted) if trusted else None  # type: ignore[arg-type]

    def trusts(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client or not self.networks:
            return False
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:  # a Unix socket peer has no address
            return False
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.trusts(scope) or self.forwarded is None:
            scope["headers"] = [(name, value) for name, value in scope["headers"] if name not in _FORWARDED]
            await self.app(scope, receive, send)
            return
        scope["headers"] = _with_forwarded_host(scope["headers"])
        await self.forwarded(scope, receive, send)  # type: ignore[arg-type]


def _with_forwarded_host(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Host replaced by the proxy's X-Forwarded-Host (its last value: the one the nearest proxy wrote)."""
    forwarded = [value for name, value in headers if name == b"x-forwarded-host"]
    host = forwarded[-1].split(b",")[-1].strip() if forwarded else b""
    if not host:
        return headers
    return [(name, value) for name, value in headers if name not in (b"host", b"x-forwarded-host")] + [(b"host", host)]

"""The reverse proxy at ``/s/<session>/``: HTTP and WebSockets from the browser to an IDE's Unix socket.

The caller authenticates the user and resolves the session to a ``ProxyTarget`` first; this package only
forwards, keeping the user's credentials (API token, sign-in cookie) away from the IDE.
"""

from openworkbench.proxy.pool import UpstreamPool
from openworkbench.proxy.relay_http import forward_http
from openworkbench.proxy.relay_ws import forward_websocket
from openworkbench.proxy.rewrite import (
    filter_request_headers,
    filter_response_headers,
    origin_allowed,
    rewrite_location,
    rewrite_set_cookie,
    strip_cookie,
    upstream_path,
)
from openworkbench.proxy.routes import Route, RouteTable
from openworkbench.proxy.target import SIGN_IN_COOKIE, ProxyTarget, UpstreamUnavailable
from openworkbench.proxy.upstream import NOWHERE, Upstream

__all__ = [
    "NOWHERE",
    "SIGN_IN_COOKIE",
    "ProxyTarget",
    "Route",
    "RouteTable",
    "Upstream",
    "UpstreamPool",
    "UpstreamUnavailable",
    "filter_request_headers",
    "filter_response_headers",
    "forward_http",
    "forward_websocket",
    "origin_allowed",
    "rewrite_location",
    "rewrite_set_cookie",
    "strip_cookie",
    "upstream_path",
]

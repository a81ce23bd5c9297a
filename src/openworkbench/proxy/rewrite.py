"""Pure header and URL rules of the proxy: what goes upstream, what comes back, and how it is rewritten."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

from openworkbench.proxy.target import SERVER_COOKIES, ProxyTarget

Headers = list[tuple[str, str]]

# RFC 9110 §7.6.1 connection-specific fields, plus Proxy-* (which only concern the hop to us).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "transfer-encoding", "upgrade"}
)
# Never to an IDE: the user's API token travels in Authorization; uvicorn already answered any Expect.
_DROP_REQUEST = frozenset({"authorization", "expect", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-prefix"})
# uvicorn adds its own Date and Server; passing the IDE's would send both twice. Service-Worker-Allowed would
# let a session's script register a worker for "/" (the sign-in page and every other session on this origin):
# without it a worker's scope cannot reach above its script, which is inside the session's prefix.
_DROP_RESPONSE = frozenset({"date", "server", "service-worker-allowed"})
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def upstream_path(target: ProxyTarget, request_path: str, query: str) -> str:
    """The path and query to request from the IDE; ``request_path`` is the raw (still percent-encoded) path."""
    path = request_path
    if target.strip_prefix:
        if path.startswith(target.prefix):
            path = "/" + path[len(target.prefix) :]
        elif path == target.prefix.rstrip("/"):
            path = "/"
    return f"{path}?{query}" if query else path


def strip_cookie(cookie_header: str, names: frozenset[str] = SERVER_COOKIES) -> str:
    """A Cookie header without the server's own cookies; the others keep their order."""
    pairs = (pair.strip() for pair in cookie_header.split(";"))
    return "; ".join(pair for pair in pairs if pair and pair.partition("=")[0].strip() not in names)


def _connection_tokens(value: str) -> set[str]:
    """Header names a sender listed in Connection: hop-by-hop too (RFC 9110 §7.6.1)."""
    return {token.strip().lower() for token in value.split(",") if token.strip()}


_REQUEST_DROP = HOP_BY_HOP | _DROP_REQUEST
_RESPONSE_DROP = HOP_BY_HOP | _DROP_RESPONSE


def filter_request_headers(
    headers: Iterable[tuple[str, str]], target: ProxyTarget, *, client_host: str | None, scheme: str
) -> Headers:
    """Headers for the upstream request: the browser's, minus hop-by-hop and credentials, plus forwarding info.

    Host is kept as the browser sent it: Jupyter compares it with Origin on WebSockets.
    """
    drop = _REQUEST_DROP | {name.lower() for name in target.headers}
    late_drop: set[str] = set()  # known only once every field is seen (one pass: this runs on every request)
    kept: list[tuple[str, str, str]] = []
    cookies: list[str] = []
    forwarded_for: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.append(strip_cookie(value))
        elif lower == "x-forwarded-for":
            forwarded_for.append(value)
        elif lower == "connection":
            late_drop |= _connection_tokens(value)
        elif lower == "transfer-encoding" and "chunked" in value.lower():
            late_drop.add("content-length")  # a chunked body goes up chunked again; a stray length would contradict it
        elif lower not in drop:
            kept.append((lower, name, value))
    out: Headers = []
    host = ""
    for lower, name, value in kept:
        if lower not in late_drop:
            out.append((name, value))
            host = value if lower == "host" else host
    cookie = "; ".join(c for c in cookies if c)
    if cookie:
        out.append(("Cookie", cookie))
    if client_host:
        forwarded_for.append(client_host)
    if forwarded_for:
        out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
    out.append(("X-Forwarded-Proto", {"ws": "http", "wss": "https"}.get(scheme, scheme)))
    if host:
        out.append(("X-Forwarded-Host", host))
    if target.strip_prefix:  # "the part of the public path removed before it reached you"
        out.append(("X-Forwarded-Prefix", target.prefix.rstrip("/")))
    out.extend(target.headers.items())
    return out


def _netloc_key(netloc: str, scheme: str) -> str:
    host, sep, port = netloc.lower().rpartition(":")
    if not sep or "]" in port:  # no port, or the colon was inside an IPv6 literal
        host, port = netloc.lower(), ""
    return host if port in ("", _DEFAULT_PORTS.get(scheme, "")) else f"{host}:{port}"


def _under_prefix(path: str, target: ProxyTarget) -> str:
    """An absolute IDE path as the browser must see it (kept if the IDE already knew the prefix)."""
    if path.startswith(target.prefix) or path == target.prefix.rstrip("/"):
        return path
    return target.prefix + path.lstrip("/")


def rewrite_location(location: str, target: ProxyTarget, request_host: str) -> str:
    """A redirect target that keeps the browser under the session prefix.

    ``request_host`` is the Host the browser sent: absolute URLs to it are "ours" whatever their scheme
    (an IDE behind us sees plain http even when the browser uses https), so they become paths.
    """
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        scheme = parts.scheme.lower() or "http"
        if scheme not in _DEFAULT_PORTS or not request_host:
            return location
        if _netloc_key(parts.netloc, scheme) != _netloc_key(request_host, scheme):
            return location
        path = urlunsplit(("", "", parts.path or "/", parts.query, parts.fragment))
        return _under_prefix(path, target) if target.strip_prefix else path
    if target.strip_prefix and location.startswith("/"):
        return _under_prefix(location, target)
    return location  # relative: the browser resolves it against the public URL already


def rewrite_set_cookie(value: str, target: ProxyTarget) -> str | None:
    """An IDE's cookie confined to its session: None (dropped) for a cookie named like the server's own.

    Every session shares the server's origin unless ``server.session_domain`` is set, so a cookie with
    ``Path=/`` would reach the sign-in page and every other session: its Path is kept under the prefix
    (``Path=/x`` -> ``Path=<prefix>x`` for an IDE that does not know its prefix), and Domain is removed
    (with per-session origins it would reach the main origin and the other sessions).
    """
    parts = value.split(";")
    if parts[0].partition("=")[0].strip() in SERVER_COOKIES:
        return None
    kept, path, where = [parts[0]], "", -1
    for attribute in parts[1:]:
        name, _, argument = attribute.strip().partition("=")
        if name.lower() == "path":  # the last Path attribute is the one a browser uses: it stays in its place
            path, where = argument.strip(), len(kept)
        elif name.lower() != "domain":
            kept.append(attribute)
    kept.insert(where if where >= 0 else len(kept), " Path=" + _cookie_path(path, target))
    return ";".join(kept)


def _cookie_path(path: str, target: ProxyTarget) -> str:
    if not path.startswith("/"):
        return target.prefix
    if target.strip_prefix:
        return _under_prefix(path, target)
    inside = path.startswith(target.prefix) or path == target.prefix.rstrip("/")
    return path if inside else target.prefix


def filter_response_headers(headers: Iterable[tuple[str, str]], target: ProxyTarget, *, request_host: str) -> Headers:
    """The IDE's response headers for the browser: hop-by-hop removed, Location and Set-Cookie rewritten."""
    late_drop: set[str] = set()  # known only once every field is seen (one pass: this runs on every request)
    kept: list[tuple[str, str, str]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "connection":
            late_drop |= _connection_tokens(value)
        elif lower == "transfer-encoding":
            late_drop.add("content-length")
        elif lower in _RESPONSE_DROP:
            continue
        elif lower == "location":
            kept.append((lower, name, rewrite_location(value, target, request_host)))
        elif lower == "set-cookie":
            cookie = rewrite_set_cookie(value, target)
            if cookie is not None:
                kept.append((lower, name, cookie))
        else:
            kept.append((lower, name, value))
    return [(name, value) for lower, name, value in kept if lower not in late_drop]


def sendable_close_code(code: int | None, default: int = 1000) -> int:
    """A close code that may go into a close frame (1005/1006/1015 are reserved for reporting only)."""
    if code is None or code in (1005, 1015):
        return default
    if code == 1006:  # the peer vanished: tell the other side we are going away
        return 1001
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


def origin_allowed(origin: str | None, host: str | None, forwarded_host: str | None = None) -> bool:
    """Is a browser request same-origin (or not from a browser at all)?

    The proxy hands every request the IDE's secret, so the IDE treats it as token-authenticated and skips its
    own cross-origin checks (Jupyter skips Origin == Host and its XSRF check then). The proxy must make
    that check itself, or any web page could drive a kernel with the user's sign-in cookie.
    """
    if origin is None:
        return True  # not a browser (curl, SDKs): no ambient credentials to abuse
    parts = urlsplit(origin.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False  # "null" (sandboxed frames, file://) and anything odd
    key = _netloc_key(parts.netloc, parts.scheme)
    return any(_netloc_key(h, parts.scheme) == key for h in (host, forwarded_host) if h)

"""Bounds on what a request can make the server hold or walk: body size and JSON nesting.

Both are checked before the work they protect (a body is counted as it arrives, never read past the cap;
nesting is measured without recursion before anything recursive sees the value).
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from openworkbench.errors import BadRequest, ClientGone, PayloadTooLarge

# Far deeper than any real kwparams (the deepest is a job's resource limits, 4 levels), far shallower than
# the recursion limit that json, pydantic and the handlers would otherwise hit with a 500.
MAX_JSON_DEPTH = 64


def has_body(headers: Headers) -> bool:
    """Does the request announce a body? (HTTP/1.1: a non-zero Content-Length, or Transfer-Encoding.)"""
    length = headers.get("content-length")
    return (length is not None and length.strip() != "0") or "transfer-encoding" in headers


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than the server accepts ({limit} bytes)")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body if it is at most ``limit`` bytes; PayloadTooLarge as soon as it is known to be more.

    Content-Length is checked before a byte is read; a chunked body is counted as it streams.
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # Starlette's: ours, so that every caller answers it as any other error
        raise ClientGone("the client closed the connection before its request body arrived") from None
    return b"".join(chunks)


def check_depth(raw: bytes, value: Any, limit: int = MAX_JSON_DEPTH) -> None:
    """BadRequest if the parsed JSON ``value`` nests containers deeper than ``limit``.

    Fewer brackets in ``raw`` than the limit cannot nest that deep: most bodies cost two byte counts.
    """
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return
    pending: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            raise nested_too_deeply(limit)
        children = item.values() if isinstance(item, dict) else item
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def nested_too_deeply(limit: int = MAX_JSON_DEPTH) -> BadRequest:
    return BadRequest(f"the request body is nested too deeply (more than {limit} levels)")

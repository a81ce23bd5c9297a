"""WebSocket forwarding: connect to the IDE first, then accept the browser and pump frames both ways."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import aiohttp
from starlette.websockets import WebSocket, WebSocketState

from openworkbench.errors import PermissionDenied, UpstreamRefused, WorkbenchError
from openworkbench.http_errors import proxy_error
from openworkbench.proxy.pool import UpstreamPool
from openworkbench.proxy.relay_http import (
    CROSS_ORIGIN,
    raw_path_and_query,
    refused_where,
    same_origin,
    unreachable,
    upstream_headers,
)
from openworkbench.proxy.rewrite import sendable_close_code, upstream_path
from openworkbench.proxy.target import ProxyTarget, UpstreamUnavailable

log = logging.getLogger(__name__)

UpstreamWS = aiohttp.ClientWebSocketResponse[bool]


async def _connect(websocket: WebSocket, target: ProxyTarget, pool: UpstreamPool) -> UpstreamWS:
    path, query = raw_path_and_query(websocket)
    # aiohttp writes its own handshake fields; the browser's would clash (its key, its extension offer).
    headers = [(n, v) for n, v in upstream_headers(websocket, target) if not n.lower().startswith("sec-websocket-")]
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    return await pool.session(target.upstream).ws_connect(
        pool.url(upstream_path(target, path, query), target.upstream),
        headers=headers,
        protocols=protocols,
        max_msg_size=0,  # the browser side (uvicorn) already bounds message size
        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
    )


async def _refuse(websocket: WebSocket, exc: WorkbenchError, where: str = "") -> None:
    """Answer a handshake we cannot complete: an HTTP error where the server allows it, else a close."""
    response = proxy_error(exc, where=where)  # the log line of a 5xx, whichever way the browser is told
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008 if exc.http_status == 403 else 1011)


def _refused_by_ide(status: int) -> WorkbenchError:
    exc = UpstreamUnavailable("The session's IDE refused the WebSocket")
    if 400 <= status < 500:  # the IDE itself said no (bad path, bad origin): keep its status
        exc.http_status = exc.code = status
    return exc


async def _browser_to_ide(websocket: WebSocket, upstream: UpstreamWS) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=sendable_close_code(message.get("code")))
            return
        if message.get("text") is not None:
            await upstream.send_str(message["text"])
        elif message.get("bytes") is not None:
            await upstream.send_bytes(message["bytes"])


async def _ide_to_browser(websocket: WebSocket, upstream: UpstreamWS) -> None:
    async for message in upstream:  # ends on the IDE's close frame (answered by aiohttp's autoclose)
        if message.type == aiohttp.WSMsgType.TEXT:
            await websocket.send_text(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await websocket.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.ERROR:
            log.warning("IDE WebSocket error: %s", upstream.exception())
            break
    code = sendable_close_code(upstream.close_code, default=1011 if upstream.exception() else 1000)
    await _close_browser(websocket, code)


async def _close_browser(websocket: WebSocket, code: int) -> None:
    connected = WebSocketState.CONNECTED
    if websocket.application_state == connected and websocket.client_state == connected:
        with suppress(Exception):  # the browser may be gone already; nothing left to tell it
            await websocket.close(code=code)


async def forward_websocket(websocket: WebSocket, target: ProxyTarget, pool: UpstreamPool) -> None:
    """Bridge one browser WebSocket to the IDE behind ``target`` until either side closes."""
    if not same_origin(websocket):
        await _refuse(websocket, PermissionDenied(CROSS_ORIGIN))
        return
    try:
        upstream = await _connect(websocket, target, pool)
    except UpstreamRefused as exc:
        await _refuse(websocket, exc, refused_where(target))
        return
    except aiohttp.WSServerHandshakeError as exc:
        refused = _refused_by_ide(exc.status)
        refused.__cause__ = exc
        await _refuse(websocket, refused, f"proxy WebSocket {target.prefix} refused by the IDE ({exc.status})")
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        await _refuse(websocket, unreachable(exc), f"proxy WebSocket {target.prefix} -> {target.upstream}")
        return
    try:
        await websocket.accept(subprotocol=upstream.protocol)
        await _pump(websocket, upstream)
    finally:
        await upstream.close()
        await _close_browser(websocket, 1011)


async def _pump(websocket: WebSocket, upstream: UpstreamWS) -> None:
    """Run both directions at once; the first to finish ends the other."""
    tasks = [
        asyncio.create_task(_browser_to_ide(websocket, upstream)),
        asyncio.create_task(_ide_to_browser(websocket, upstream)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.debug("WebSocket relay ended: %r", outcome)

"""Kernel round trips over Jupyter's WebSocket, from a process of its own.

Starts a kernel at BASE (``POST api/kernels``), opens its ``channels`` WebSocket, and times COUNT
``execute_request`` -> ``execute_reply`` round trips one after another (after WARMUP untimed ones),
then shuts the kernel down. Prints one JSON line: p50/p99/max in ms.

Usage: python -m bench.ws_rtt BASE --header 'Authorization: ...' [--unix SOCKET] [--count N] [--warmup N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import aiohttp

from bench.common import percentiles_ms


def execute_request(session: str) -> tuple[str, dict[str, Any]]:
    msg_id = uuid.uuid4().hex
    return msg_id, {
        "header": {"msg_id": msg_id, "username": "bench", "session": session, "msg_type": "execute_request",
                   "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": "1+1", "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }


async def round_trip(ws: aiohttp.ClientWebSocketResponse, session: str) -> float:
    msg_id, message = execute_request(session)
    began = time.perf_counter()
    await ws.send_str(json.dumps(message))
    async for frame in ws:
        data = json.loads(frame.data)
        if data.get("parent_header", {}).get("msg_id") == msg_id and data["msg_type"] == "execute_reply":
            return time.perf_counter() - began
    raise RuntimeError("the WebSocket closed before the reply")


async def measure(base: str, headers: dict[str, str], unix: str | None, count: int, warmup: int) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=unix) if unix else aiohttp.TCPConnector()
    async with aiohttp.ClientSession(headers=headers, connector=connector) as client:
        async with client.post(f"{base}api/kernels", json={"name": "python3"}) as resp:
            if resp.status != 201:
                raise RuntimeError(f"kernel start: {resp.status} {await resp.text()}")
            kernel = await resp.json()
        try:
            ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
            async with client.ws_connect(ws_url, max_msg_size=0) as ws:
                session = uuid.uuid4().hex
                times = [await round_trip(ws, session) for _ in range(warmup + count)][warmup:]
        finally:
            async with client.delete(f"{base}api/kernels/{kernel['id']}"):
                pass
    return percentiles_ms(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--unix")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()
    headers = dict(item.split(": ", 1) for item in args.header)
    result = asyncio.run(asyncio.wait_for(measure(args.base, headers, args.unix, args.count, args.warmup), 300))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

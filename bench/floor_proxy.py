"""The floor of our proxy's stack: uvicorn + aiohttp to the IDE's Unix socket, and nothing else.

No authentication, no session look-up, no header rules, no streaming: GETs only, bodies read whole.
What our proxy costs above this is our own code; what this costs above direct is the stack's.

Usage: python -m bench.floor_proxy PORT SOCKET 'Header: value'
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn


def make_app(socket_path: str, header: tuple[str, str]) -> Any:
    client: list[aiohttp.ClientSession] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not client:  # created on the server's loop
            client.append(aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket_path),
                                                auto_decompress=False))
        path = scope["raw_path"].decode("latin-1")
        query = scope["query_string"].decode("latin-1")
        url = f"http://localhost{path}" + (f"?{query}" if query else "")
        async with client[0].get(url, headers=[header], allow_redirects=False) as upstream:
            body = await upstream.read()
            headers = [(k.lower(), v) for k, v in upstream.raw_headers
                       if k.lower() not in (b"transfer-encoding", b"connection", b"content-length", b"date",
                                            b"server")]
            await send({"type": "http.response.start", "status": upstream.status,
                        "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    port, socket_path, header = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    name, _, value = header.partition(": ")
    uvicorn.run(make_app(socket_path, (name, value)), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()

"""The bare baseline of the API: uvicorn (as our server runs it) answering fixed bytes from memory.

The bytes are our server's real answer to the same request, captured beforehand, so the difference to
ours is what our handler costs (authentication, the store, JSON), not HTTP or the payload's size.

Usage: python -m bench.bare_http PORT PATH=FILE [PATH=FILE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn


def make_app(bodies: dict[str, bytes]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # drain the request body, as a real handler must
            message = await receive()
            more = message.get("more_body", False)
        body = bodies.get(scope["path"], b"")
        await send({"type": "http.response.start", "status": 200 if body else 404,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def main() -> None:
    port = int(sys.argv[1])
    bodies = {path: Path(file).read_bytes() for path, _, file in (arg.partition("=") for arg in sys.argv[2:])}
    uvicorn.run(make_app(bodies), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

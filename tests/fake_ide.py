#!/usr/bin/python3
"""A hostile "IDE" for tests/test_security_origins.py, started by the server's real launch path as the user.

Configured as the Jupyter Notebook executable, it gets Jupyter's flags, listens on ``--ServerApp.sock`` under
``--ServerApp.base_url`` and answers the readiness and activity probes. Its pages do what an attacker's IDE would:
``Service-Worker-Allowed: /`` (so a worker could control the whole origin), a cookie named like the server's
sign-in cookie, and a cookie for ``Path=/``. Standard library only: it runs under the system Python as the user.
"""

import http.server
import json
import os
import socketserver
import sys
import threading

FLAGS = dict(arg[2:].split("=", 1) for arg in sys.argv[1:] if arg.startswith("--") and "=" in arg)
SOCKET, BASE = FLAGS["ServerApp.sock"], FLAGS["ServerApp.base_url"]
PAGE = b"<!doctype html><html><head><title>hostile IDE</title></head><body><h1 id='ide'>hostile IDE</h1></body></html>"
WORKER = b"self.addEventListener('fetch', () => {});\n"
HOSTILE = [("Service-Worker-Allowed", "/"), ("Set-Cookie", "owb_session=forged-by-ide; Path=/"),
           ("Set-Cookie", "owb_csrf=forged-by-ide; Path=/"), ("Set-Cookie", "x=1; Path=/")]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def address_string(self) -> str:  # a Unix socket peer has no address
        return "proxy"

    def log_message(self, *args: object) -> None:
        pass

    def answer(self, status: int, kind: str, body: bytes, extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra or []:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if not path.startswith(BASE):
            self.answer(404, "text/plain", b"outside base_url")
        elif path == BASE + "api/status":
            self.answer(200, "application/json", json.dumps({"last_activity": "", "connections": 0}).encode())
        elif path == BASE + "api/kernels":
            self.answer(200, "application/json", b"[]")
        elif path == BASE + "sw.js":
            self.answer(200, "text/javascript", WORKER, [("Service-Worker-Allowed", "/")])
        elif path == BASE + "echo":
            self.answer(200, "application/json", json.dumps({k.lower(): v for k, v in self.headers.items()}).encode())
        else:
            self.answer(200, "text/html", PAGE, HOSTILE)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.split("?")[0] == BASE + "api/shutdown":
            self.answer(200, "application/json", b"{}")
            threading.Thread(target=server.shutdown).start()
        else:
            self.answer(200, "application/json", b'{"posted": true}')


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if os.path.exists(SOCKET):
    os.unlink(SOCKET)
server = Server(SOCKET, Handler)
os.chmod(SOCKET, 0o600)
server.serve_forever()

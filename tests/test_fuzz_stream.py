"""The NDJSON stream of get_job_output under generated output and hostile clients, against a real server.

hypothesis writes arbitrary text through a real job (``cat`` of its stdin, to stdout or stderr): every line
of the stream is one JSON object and the chunks put back together are exactly what the job wrote. Then
clients that read slowly, half-close their side, or vanish mid-stream (a FIN or a reset) while a job is still
writing: the server's fds and threads come back to where they were, the log has no traceback, and the server
still answers."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, result_of, temporary_posix_user
from tests.fuzz_helpers import fuzz_server, resources, settled_resources, tracebacks

Fixture = tuple[Server, str]
# Any text but NUL (refused in a job's stdin) and lone surrogates (not UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=3000)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    with temporary_posix_user("owbfs") as user, fuzz_server(tmp_path_factory.mktemp("stream") / "data") as server:
        yield server, server.token(user.pw_name)


def _launch(server: Server, token: str, **job: Any) -> str:
    return str(server.rpc("launch_job", token, job={"name": "fuzz", "cluster": "Local", **job})["job"]["id"])


def _stream(server: Server, token: str, job_id: str) -> list[dict[str, Any]]:
    response = server.post("get_job_output", token, job_id=job_id)
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    return [json.loads(line) for line in response.text.splitlines()]


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(text=TEXT, to_stderr=st.booleans())
@example(text="", to_stderr=False)
@example(text="no newline at the end", to_stderr=False)
@example(text="\r\n\n\u2028\u0085é€😀\n" * 50 + "x" * 70000, to_stderr=True)  # long line, odd line ends
def test_the_stream_gives_back_exactly_what_the_job_wrote(srv: Fixture, text: str, to_stderr: bool) -> None:
    server, token = srv
    job_id = _launch(server, token, command="cat >&2" if to_stderr else "cat", stdin=text)
    server.wait_job(token, job_id, timeout=60)
    lines = _stream(server, token, job_id)
    assert all("error" not in line for line in lines), lines[-1]
    kind = "stderr" if to_stderr else "stdout"
    assert {line["outputType"] for line in lines} <= {kind}
    assert "".join(line["output"] for line in lines) == text


def _open_stream(server: Server, token: str, job_id: str) -> socket.socket:
    body = json.dumps({"method": "get_job_output", "kwparams": {"job_id": job_id}}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server must wait on us
    sock.sendall(b"POST /api/get_job_output HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0): the client vanishes without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _hostile_clients(server: Server, token: str, job_id: str) -> None:
    vanish = [_open_stream(server, token, job_id) for _ in range(10)]
    for index, sock in enumerate(vanish):
        assert sock.recv(1024).startswith(b"HTTP/1.1 200"), "the stream did not start"
        sock.close() if index % 2 else _reset(sock)
    half = [_open_stream(server, token, job_id) for _ in range(5)]
    for sock in half:
        sock.shutdown(socket.SHUT_WR)  # half-closed: the request is in, nothing more will come
        # uvicorn takes the client's FIN for a closed connection: it ends the stream and closes its side too.
        # Either way the answer comes at once (recv's timeout is 30 s) and is never an error status.
        first = sock.recv(1024)
        assert first == b"" or first.startswith(b"HTTP/1.1 200"), first
    slow = [_open_stream(server, token, job_id) for _ in range(5)]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # a few bytes now and then, far slower than the job writes
        for sock in slow:
            assert sock.recv(16)
        time.sleep(0.2)
    for sock in half + slow:
        _reset(sock)


def _round(server: Server, token: str) -> None:
    job_id = _launch(server, token, command="while :; do seq 1 2000; sleep 0.05; done")
    server.wait_job(token, job_id, statuses=("Running",), timeout=60)
    _hostile_clients(server, token, job_id)
    result_of(server.post("stop_job", token, job_id=job_id, force_quit=True))
    server.wait_job(token, job_id, timeout=60)


def test_slow_half_closed_and_vanishing_clients_leak_nothing(srv: Fixture) -> None:
    server, token = srv
    # A first round fills the pools a burst of calls grows and keeps (worker threads, the store's pooled
    # connections: three fds each on SQLite); the second must leave the server exactly where the first did.
    _round(server, token)
    before = settled_resources(server, resources(server), timeout=5)
    _round(server, token)
    after = settled_resources(server, before)
    print(f"fuzz_stream: 20 hostile clients a round; fds {before.fds}->{after.fds} "
          f"(store {before.store_fds}->{after.store_fds}), threads {before.threads}->{after.threads}")
    leaked = sorted((Counter(after.open) - Counter(before.open)).elements())
    assert after.fds <= before.fds and after.threads <= before.threads, (before.fds, after.fds, after.threads, leaked)
    warm = _launch(server, token, command="seq 1 1000")
    server.wait_job(token, warm, timeout=60)
    assert _stream(server, token, warm)[-1]["output"].endswith("1000\n")  # still serving streams
    assert tracebacks(server) == []

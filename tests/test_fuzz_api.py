"""schemathesis against the server's own /api/openapi.json: every operation (POST and GET), with generated
valid and invalid kwparams, as a user token, an admin token and no token. No answer may be a 5xx or carry a
traceback, none may break the document's response schemas, and a refused call must leave the store as it was.
The server runs for real; jobs run for real as an unprivileged user; sessions fail at once (tests/fuzz_helpers)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import Server, temporary_posix_user
from tests.fuzz_helpers import fuzz_server, resources, row_counts, settled_resources, tracebacks

# Serial: its fd count must settle back within 30 s, which a loaded parallel phase makes long.
pytestmark = pytest.mark.serial

EXAMPLES = 15  # per operation and mode: ~17 operations x 2 modes keeps the run near a minute
# (path, HTTP method, status, refused) -> calls: what the fuzzer reached.
TALLY: Counter[tuple[str, str, int, bool]] = Counter()
ENDED = ("failed", "finished", "killed", "canceled", "suspended")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str | None]]]:
    with temporary_posix_user("owbfz") as user, fuzz_server(tmp_path_factory.mktemp("fuzz") / "data") as server:
        tokens = {"user": server.token(user.pw_name), "admin": server.token(user.pw_name, "admin"), "none": None}
        yield server, tokens


def _refused(response: Any) -> bool:
    if response.status_code != 200:
        return True
    try:
        body = response.json()
    except ValueError:
        return False  # an NDJSON stream: get_job_output's success
    return isinstance(body, dict) and "error" in body and "result" not in body


def _settle(server: Server, token: str, response: Any) -> None:
    """A launched session starts in the background (and fails at once: its IDE is /bin/false); wait for it,
    so its background writes do not land inside the next call's before/after."""
    session_id = response.json()["result"]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = server.rpc("get_session", token, session_id=session_id)["sessions"][0]["activity_state"]
        if state in ENDED:
            return
        time.sleep(0.1)
    raise AssertionError(f"session {session_id} never ended: {state}")


def _check(server: Server, case: schemathesis.Case, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    before = row_counts(server)
    response = case.call(base_url=server.url, headers=headers, timeout=60)
    label = f"{case.method} {case.path} body={case.body!r} token={'yes' if token else 'no'}"
    assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:2000]}"
    assert "Traceback" not in response.text, f"{label}: {response.text[:2000]}"
    case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                             response_schema_conformance])
    TALLY[(case.path, case.method, response.status_code, _refused(response))] += 1
    if _refused(response):
        assert row_counts(server) == before, f"{label} was refused but wrote: {response.text[:500]}"
    elif case.path == "/api/launch_session" and token:
        _settle(server, token, response)


def _fuzz(server: Server, operation: Any, mode: GenerationMode, tokens: list[str | None]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), token=st.sampled_from(tokens))
    def run(case: schemathesis.Case, token: str | None) -> None:
        _check(server, case, token)

    run()


@pytest.mark.timeout(600)  # ~1 min alone; more on a busy machine
def test_every_operation_survives_generated_calls(srv: tuple[Server, dict[str, str | None]]) -> None:
    server, tokens = srv
    # The first Local job starts the cluster's job launcher, which stays for the server's life with two pipes
    # (clusters/local.py). Started by a job the fuzzer happened to launch, it was once counted as two leaked fds.
    warm_up = server.rpc("launch_job", tokens["user"] or "", job={"name": "warm-up", "exe": "/bin/true"})["job"]
    assert server.wait_job(tokens["user"] or "", warm_up["id"])["status"] == "Finished"
    start = resources(server)
    schema = schemathesis.openapi.from_url(f"{server.url}/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 17, [op.label for op in operations]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(server, operation, mode, list(tokens.values()))
    # Every operation got past authentication at least once: the fuzzer reached the parameters' checks.
    reached = {(path, method) for path, method, status, _ in TALLY if status != 401}
    assert reached == {(op.path, op.method.upper()) for op in operations}, sorted(TALLY.items())
    assert tracebacks(server) == [], tracebacks(server)
    end = settled_resources(server, start)
    refused = sum(count for (_, _, _, no), count in TALLY.items() if no)
    print(f"fuzz_api: {sum(TALLY.values())} calls ({refused} refused) on {len(operations)} operations; "
          f"fds {start.fds}->{end.fds} (store {start.store_fds}->{end.store_fds}), "
          f"threads {start.threads}->{end.threads}")
    leaked = sorted((Counter(end.open) - Counter(start.open)).elements())
    assert end.fds <= start.fds and end.threads <= start.threads, (start.fds, end.fds, end.threads, leaked)

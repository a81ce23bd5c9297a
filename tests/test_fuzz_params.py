"""hypothesis against kwparams parsing (api/rpc.py parse_kwparams, the models of api/params.py): whatever the
body, a call's parameters parse or are refused with a WorkbenchError (400, the envelope's message), never
another exception, which the server would answer with a 500. Then generated valid jobs with random commands,
launched for real: each is stored and runs, or is refused with the envelope, and none is a 5xx."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from openworkbench.api.methods import METHODS
from openworkbench.api.params import Params
from openworkbench.api.rpc import describe_validation, parse_kwparams
from openworkbench.errors import BadRequest, WorkbenchError
from tests.conftest import Server, temporary_posix_user
from tests.fuzz_helpers import fuzz_server, row_counts, tracebacks

FAST = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
NAMES = sorted(METHODS)

json_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**30), max_value=10**30)
                | st.floats() | st.text(max_size=20) | st.datetimes(timezones=st.timezones()).map(str)
                | st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()))


def _field_names(model: type[Params]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        names.append(name)
        if info.validation_alias is not None:
            names.extend(str(choice) for choice in getattr(info.validation_alias, "choices", [info.validation_alias]))
    return names


def _values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=5), max_leaves=25)


@st.composite
def bodies(draw: st.DrawFn, name: str) -> bytes:
    """A request body: mostly ``{"method", "kwparams"}`` with the method's own (and its models') field names,
    sometimes anything JSON, sometimes bytes that are not JSON at all."""
    params = METHODS[name].params
    keys = st.sampled_from([*_field_names(params), "name", "command", "exe", "value", "type"]) | st.text(max_size=6)
    kind = draw(st.sampled_from(["envelope", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(_values(keys))).encode()
    kwparams = draw(st.dictionaries(keys, _values(keys), max_size=6))
    return json.dumps({"method": name, "kwparams": kwparams}, allow_nan=True).encode()


def parse(name: str, http_method: str, raw: bytes) -> Params:
    """What ``rpc.prepare`` does with a body before the handler (the credentials aside)."""
    method = METHODS[name]
    try:
        return method.params.model_validate(parse_kwparams(http_method, raw, name, method))
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from None


@FAST
@given(data=st.data(), name=st.sampled_from(NAMES), http_method=st.sampled_from(["POST", "GET"]))
def test_any_body_parses_or_is_refused_by_name(data: st.DataObject, name: str, http_method: str) -> None:
    raw = data.draw(bodies(name))
    try:
        parse(name, http_method, raw)
    except WorkbenchError as exc:
        assert exc.http_status == 400 and exc.message, exc


# Bodies the fuzzers found to raise something else than a WorkbenchError (a 500), kept as regressions.
FOUND = [
    # datetime.astimezone(UTC) past year 9999 or before year 1: OverflowError out of a validator.
    ("get_historical_session", b'{"kwparams": {"filter_time_begin": "9999-12-31T23:59:59-23:59"}}',
     "out of range once converted to UTC"),
    ("get_historical_session", b'{"kwparams": {"filter_time_end": "0001-01-01T00:00:00+23:59"}}',
     "out of range once converted to UTC"),
    # (schemathesis) a timestamp no datetime holds: ValueError from datetime.fromtimestamp in the delta's query.
    ("get_session", b'{"kwparams": {"include_all_jobs": true, "timestamp": -4.548897961490419e+16}}',
     "kwparams.timestamp"),
    ("get_session", b'{"kwparams": {"timestamp": 1e300}}', "kwparams.timestamp"),
]


@pytest.mark.parametrize(("name", "raw", "message"), FOUND)
def test_found_bodies_are_refused(name: str, raw: bytes, message: str) -> None:
    with pytest.raises(WorkbenchError) as refused:
        parse(name, "POST", raw)
    assert refused.value.http_status == 400 and message in refused.value.message, refused.value


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    with temporary_posix_user("owbfp") as user, fuzz_server(tmp_path_factory.mktemp("params") / "data") as server:
        yield server, server.token(user.pw_name)


@pytest.mark.parametrize(("name", "raw", "message"), FOUND)
def test_found_bodies_get_the_envelope_from_a_real_server(srv: tuple[Server, str], name: str, raw: bytes,
                                                          message: str) -> None:
    server, token = srv
    before = row_counts(server)
    response = server.client.post(f"{server.url}/api/{name}", content=raw,
                                  headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]
    assert row_counts(server) == before
    assert tracebacks(server) == []


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(command=st.text(string.printable.replace("\x0b", "").replace("\x0c", ""), min_size=1, max_size=40),
       args=st.lists(st.text(max_size=10), max_size=3))
@example(command="exit 3", args=[])
@example(command="definitely-not-a-command-here", args=["-x"])
def test_random_commands_run_or_are_refused_never_a_500(srv: tuple[Server, str], command: str,
                                                        args: list[str]) -> None:
    server, token = srv
    before = row_counts(server)
    response = server.post("launch_job", token, job={"name": "fuzz", "command": command, "args": args})
    assert response.status_code < 500 and "Traceback" not in response.text, response.text
    body = response.json()
    if "error" in body:
        assert row_counts(server) == before, body
        return
    job = server.wait_job(token, body["result"]["job"]["id"], timeout=60)  # every accepted job ends
    assert job["status"] in ("Finished", "Failed"), job

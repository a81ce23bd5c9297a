"""The RPC envelope and authentication, against a real server over HTTP.

Success is HTTP 200 ``{"result": ...}``; application errors are HTTP 200 ``{"error": {code, message}}``;
credential problems 401, missing permission 403, malformed requests 400, unknown methods 404, each
with the same error body. No response ever carries a Python traceback.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from openworkbench.auth.tokens import hash_token
from openworkbench.services.signin import COOKIE_NAME, LIFETIME
from openworkbench.store.schema import BrowserSession, utcnow
from tests.conftest import Server, result_of

# Sentinel for "send no JSON body": distinct from None, which is a JSON null.
NO_BODY: Any = object()
APP_ERROR_CODES = {1, 2, 3, 4, 5}


def check_envelope(response: httpx.Response) -> None:
    """Every response: no traceback, and the body shape that goes with its status."""
    assert "Traceback" not in response.text, response.text
    assert 'File "' not in response.text, response.text
    if response.headers.get("content-type", "").startswith("application/x-ndjson"):
        for line in response.text.splitlines():
            json.loads(line)
        return
    body = response.json()
    assert isinstance(body, dict), body
    if response.status_code != 200:
        assert set(body) == {"error"}, body
    if "error" in body:
        error = body["error"]
        assert set(error) == {"code", "message"}, body
        assert isinstance(error["code"], int), body
        assert isinstance(error["message"], str) and error["message"].strip(), body
        if response.status_code == 200:
            assert error["code"] in APP_ERROR_CODES, body
            assert "result" not in body, body
        else:
            assert error["code"] == response.status_code, body
    else:
        assert response.status_code == 200, body
        assert "result" in body, body


def call(
    server: Server,
    method: str,
    token: str | None,
    *,
    body: Any = NO_BODY,
    content: bytes | None = None,
    verb: str = "POST",
    scheme: str = "Bearer",
    client: httpx.Client | None = None,
    **kwparams: Any,
) -> httpx.Response:
    """One request: kwparams in the standard envelope, or an explicit JSON ``body``, or raw ``content``."""
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    url = f"{server.url}/api/{method}"
    requester: Any = client or httpx
    if verb == "GET":
        response = requester.get(url, headers=headers, timeout=30)
    elif content is not None:
        headers["Content-Type"] = "application/json"
        response = requester.post(url, content=content, headers=headers, timeout=30)
    else:
        payload = body if body is not NO_BODY else {"method": method, "kwparams": kwparams}
        response = requester.post(url, json=payload, headers=headers, timeout=30)
    check_envelope(response)
    return response


result = result_of


def error(response: httpx.Response, status: int, code: int | None = None) -> str:
    """The error message, after checking the status and code."""
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert err["code"] == (code if code is not None else status), err
    return str(err["message"])


def job_count(server: Server, token: str) -> int:
    return len(result(call(server, "get_session", token, include_all_jobs=True))["jobs"])


@pytest.fixture(scope="module")
def root_token(server: Server) -> str:
    return server.token("root", "user")


@pytest.fixture(scope="module")
def admin_token(server: Server) -> str:
    return server.token(f"rpc-admin-{secrets.token_hex(3)}", "admin")


@pytest.fixture(scope="module")
def super_token(server: Server) -> str:
    return server.token(f"rpc-super-{secrets.token_hex(3)}", "super-admin")


@pytest.fixture
def named_token(server: Server) -> Iterator[tuple[str, str, str]]:
    """(name, token, username) of a fresh user token whose name we know."""
    name = f"rpc-named-{secrets.token_hex(4)}"
    username = f"rpc-user-{secrets.token_hex(4)}"
    yield name, server.accounts().generate_token("user", name, username), username


# -- success -------------------------------------------------------------------------------------


def test_success_is_http_200_with_result_only(server: Server, root_token: str) -> None:
    response = call(server, "get_session", root_token, include_all_jobs=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"result"}
    assert body["result"]["sessions"] == []
    assert isinstance(body["result"]["jobs"], list)


def test_launch_job_result_holds_the_job(server: Server, root_token: str) -> None:
    job = result(call(server, "launch_job", root_token, job={"name": "rpc-ok", "command": "echo rpc-ok"}))["job"]
    assert set(job) >= {"id", "status", "user", "cluster", "submissionTime", "lastUpdateTime"}
    assert job["user"] == "root"
    assert job["cluster"] == "Local"
    assert job["status"] in ("Pending", "Running", "Finished")
    done = server.wait_job(root_token, job["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 0)


@pytest.mark.parametrize("verb", ["GET", "POST"])
def test_version_answers_both_shapes_at_once(server: Server, root_token: str, verb: str) -> None:
    response = call(server, "version", root_token, verb=verb)
    assert response.status_code == 200
    body = response.json()
    assert "error" not in body
    # The live product's bare shape ...
    assert set(body["version"]) == {"major", "minor", "patch", "build_number", "release_name", "build_type"}
    assert all(isinstance(value, str) for value in body["version"].values())
    assert isinstance(body["features"], list) and all(isinstance(f, str) for f in body["features"])
    # ... and the reference text's, with the same content.
    assert body["result"] == {"version": body["version"], "features": body["features"]}


@pytest.mark.parametrize("method", ["version", "get_users", "get_compute_envs"])
def test_get_works_for_parameterless_methods(server: Server, admin_token: str, method: str) -> None:
    got = call(server, method, admin_token, verb="GET")
    posted = call(server, method, admin_token)
    assert got.status_code == posted.status_code == 200
    assert "error" not in got.json()
    if method == "get_users":
        assert any(user["username"].startswith("rpc-admin-") for user in got.json()["result"])
    if method == "get_compute_envs":
        assert [c["name"] for c in got.json()["result"]["clusters"]] == ["Local"]


@pytest.mark.parametrize("method", ["launch_job", "stop_job", "get_job_output"])
def test_get_of_a_method_with_parameters_is_400(server: Server, root_token: str, method: str) -> None:
    message = error(call(server, method, root_token, verb="GET"), 400)
    assert "POST" in message and method in message


# -- application errors: HTTP 200 with an error body ------------------------------------------------


def test_stop_job_of_unknown_job_is_not_found(server: Server, root_token: str) -> None:
    message = error(call(server, "stop_job", root_token, job_id="no-such-job"), 200, code=2)
    assert "no-such-job" in message


def test_get_job_output_of_unknown_job_is_not_found(server: Server, root_token: str) -> None:
    response = call(server, "get_job_output", root_token, job_id="no-such-job")
    assert "no-such-job" in error(response, 200, code=2)


@pytest.mark.parametrize(
    ("method", "kwparams", "code", "text"),
    [
        ("launch_session", {"workbench": "RStudio"}, 3, "RStudio is not available"),
        ("resume_session", {"session_id": "acdd5861"}, 2, "no session 'acdd5861'"),
        ("stop_session", {"session_ids": "acdd5861"}, 2, "no session 'acdd5861'"),
    ],
)
def test_session_methods_refuse_clearly(server: Server, root_token: str, method: str, kwparams: Any, code: int,
                                        text: str) -> None:
    message = error(call(server, method, root_token, **kwparams), 200, code=code)
    assert text in message


def test_launch_job_on_unknown_cluster_is_invalid_parameter(server: Server, root_token: str) -> None:
    before = job_count(server, root_token)
    response = call(server, "launch_job", root_token, job={"name": "x", "command": "true", "cluster": "Nowhere"})
    message = error(response, 200, code=1)
    assert "Nowhere" in message and "Local" in message
    assert job_count(server, root_token) == before


def test_stop_job_of_ended_job_is_invalid_state(server: Server, root_token: str) -> None:
    job = result(call(server, "launch_job", root_token, job={"name": "quick", "command": "true"}))["job"]
    server.wait_job(root_token, job["id"])
    assert job["id"] in error(call(server, "stop_job", root_token, job_id=job["id"]), 200, code=4)


def test_launch_as_user_without_posix_account_creates_nothing(server: Server, super_token: str) -> None:
    ghost = f"ghost{secrets.token_hex(3)}"
    response = call(server, "launch_job", super_token, job={"name": "x", "command": "true", "user": ghost})
    assert ghost in error(response, 200, code=5)
    users = result(call(server, "get_users", super_token))
    assert ghost not in [user["username"] for user in users]
    assert result(call(server, "get_session", super_token, user=ghost, include_all_jobs=True))["jobs"] == []


# -- authentication: HTTP 401 with the error body ---------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer two words",
        "Bearer not-a-real-token",
        "Key not-a-real-token",
        "Basic {token}",
        "Token {token}",
        "{token}",
        "Bearer {token}x",
    ],
    ids=["none", "empty", "scheme-only", "two-words", "bad-bearer", "bad-key", "basic", "token-scheme", "bare",
         "altered"],
)
@pytest.mark.parametrize("method", ["version", "get_session", "stop_job", "no_such_method"])
def test_missing_or_bad_credentials_are_401(
    server: Server, root_token: str, authorization: str | None, method: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization.format(token=root_token)}
    response = httpx.post(
        f"{server.url}/api/{method}", json={"method": method, "kwparams": {}}, headers=headers, timeout=30
    )
    check_envelope(response)
    error(response, 401)


def test_401_on_get_too(server: Server) -> None:
    for method in ("version", "get_users", "get_compute_envs"):
        error(call(server, method, None, verb="GET"), 401)


@pytest.mark.parametrize("scheme", ["Bearer", "Key", "bearer", "key", "BEARER"])
def test_bearer_and_key_schemes_are_accepted(server: Server, root_token: str, scheme: str) -> None:
    assert result(call(server, "get_session", root_token, scheme=scheme))["sessions"] == []


def test_revocation_is_effective_on_the_very_next_request(
    server: Server, named_token: tuple[str, str, str]
) -> None:
    name, token, username = named_token
    spare = server.token(username, "user")  # another token of the same user
    with httpx.Client() as client:  # the same keep-alive connection before and after
        assert result(call(server, "get_session", token, client=client))["sessions"] == []
        server.accounts().revoke_token(name)
        assert "revoked" in error(call(server, "get_session", token, client=client), 401).lower()
        error(call(server, "version", token, client=client, scheme="Key"), 401)
    assert name not in [t.name for t in server.accounts().list_tokens()]
    # Only that token: the user's other tokens keep working.
    assert result(call(server, "get_session", spare))["sessions"] == []


def test_disabled_user_is_refused_at_once(server: Server, named_token: tuple[str, str, str]) -> None:
    _, token, username = named_token
    second = server.token(username, "admin")
    with httpx.Client() as client:
        result(call(server, "get_session", token, client=client))
        result(call(server, "get_users", second, client=client))
        server.accounts().disable_user(username)
        for tok in (token, second):
            assert username in error(call(server, "get_session", tok, client=client), 401)
            error(call(server, "version", tok, client=client, verb="GET"), 401)
            error(call(server, "launch_job", tok, client=client, job={"name": "x", "command": "true"}), 401)


def test_last_used_is_recorded(server: Server, named_token: tuple[str, str, str], admin_token: str) -> None:
    name, token, username = named_token
    info = {t.name: t for t in server.accounts().list_tokens()}[name]
    assert info.last_used is None
    assert info.kind == "user" and info.username == username
    before = datetime.now(UTC)
    result(call(server, "get_session", token))
    after = datetime.now(UTC)
    used = {t.name: t for t in server.accounts().list_tokens()}[name].last_used
    assert used is not None and used.tzinfo is not None
    assert before.timestamp() - 1 <= used.timestamp() <= after.timestamp() + 1
    # A sign-in is visible to admins through get_users too.
    users = {u["username"]: u for u in result(call(server, "get_users", admin_token))}
    assert users[username]["lastSignIn"] is not None
    # A failed authentication does not count as a use of any token.
    error(call(server, "get_session", token + "x"), 401)
    assert {t.name: t for t in server.accounts().list_tokens()}[name].last_used == used


# -- malformed requests: HTTP 400 naming the problem -------------------------------------------------


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", ["JSON"]),
        (b'{"method": "stop_job", "kwparams": {"job_id": "x"}', ["JSON"]),
        (b"\xff\xfe\x00garbage", ["JSON"]),
        (b"[1, 2]", ["object"]),
        (b'[{"method": "stop_job", "kwparams": {"job_id": "x"}}]', ["object"]),
        (b"null", ["object"]),
        (b'"stop_job"', ["object"]),
        (b"42", ["object"]),
        (b'{"method": "stop_job", "kwparams": "job_id=x"}', ["kwparams"]),
        (b'{"method": "stop_job", "kwparams": ["x"]}', ["kwparams"]),
    ],
    ids=["unreadable", "truncated", "binary", "array", "array-of-envelope", "null", "string", "number",
         "kwparams-string", "kwparams-array"],
)
def test_unreadable_or_non_object_body_is_400(
    server: Server, root_token: str, content: bytes, words: list[str]
) -> None:
    message = error(call(server, "stop_job", root_token, content=content), 400)
    for word in words:
        assert word in message


@pytest.mark.parametrize("kwparams", [[], 0, False, ""], ids=["empty-array", "zero", "false", "empty-string"])
def test_falsy_non_object_kwparams_is_400(server: Server, root_token: str, kwparams: Any) -> None:
    response = call(server, "version", root_token, body={"method": "version", "kwparams": kwparams})
    assert "kwparams" in error(response, 400)


def test_deeply_nested_json_is_400_not_500(server: Server, root_token: str) -> None:
    content = b'{"method": "stop_job", "kwparams": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    error(call(server, "stop_job", root_token, content=content), 400)


@pytest.mark.parametrize(
    ("method", "kwparams", "named"),
    [
        ("stop_job", {"job_id": "x", "force_quit": "yes"}, "force_quit"),
        ("stop_job", {"job_id": "x", "force_quit": 1}, "force_quit"),
        ("stop_job", {"job_id": 5}, "job_id"),
        ("stop_job", {"job_id": ["a", "b"]}, "job_id"),
        ("stop_job", {"job_id": ""}, "job_id"),
        ("get_job_output", {"job_id": {"id": "x"}}, "job_id"),
        ("get_job_output", {"job_id": "x", "user": 7}, "user"),
        ("get_session", {"include_all_jobs": "true"}, "include_all_jobs"),
        ("get_session", {"include_jobs": 1}, "include_jobs"),
        ("get_session", {"fields": "id"}, "fields"),
        ("get_session", {"user": ["root"]}, "user"),
        ("get_compute_envs", {"user": 0}, "user"),
        ("launch_job", {"job": "echo hi"}, "job"),
        ("launch_job", {"job": {"name": 5, "command": "true"}}, "job.name"),
        ("launch_job", {"job": {"name": "x", "command": "true", "args": "-c"}}, "job.args"),
        ("launch_job", {"job": {"name": "x", "command": "true", "tags": [1]}}, "job.tags"),
        ("launch_job", {"job": {"name": "x", "command": "true", "environment": [{"name": "A"}]}}, "environment"),
        ("launch_job", {"job": {"name": "x", "command": "true"}, "apply_config_settings": "no"},
         "apply_config_settings"),
        ("launch_session", {"workbench": 3}, "workbench"),
        ("stop_session", {"session_ids": "a", "force_quit": "true"}, "force_quit"),
    ],
)
def test_wrong_types_are_400_naming_the_parameter(
    server: Server, root_token: str, method: str, kwparams: dict[str, Any], named: str
) -> None:
    assert named in error(call(server, method, root_token, **kwparams), 400)


@pytest.mark.parametrize(
    ("method", "named"),
    [("stop_job", "job_id"), ("get_job_output", "job_id"), ("launch_job", "job"), ("launch_session", "workbench"),
     ("resume_session", "session_id"), ("stop_session", "session_ids")],
)
def test_missing_required_parameter_is_400_naming_it(server: Server, root_token: str, method: str, named: str) -> None:
    message = error(call(server, method, root_token), 400)
    assert "missing" in message and named in message


def test_empty_body_means_no_kwparams(server: Server, root_token: str) -> None:
    assert "job_id" in error(call(server, "stop_job", root_token, content=b""), 400)
    assert call(server, "get_compute_envs", root_token, content=b"  ").status_code == 200


@pytest.mark.parametrize(
    ("method", "kwparams", "named"),
    [
        ("version", {"verbose": True}, ["verbose"]),
        ("get_users", {"user": "root"}, ["user"]),
        ("stop_job", {"job_id": "x", "jobid": "x", "signal": "TERM"}, ["jobid", "signal"]),
        ("get_session", {"include_job": True}, ["include_job"]),
        ("launch_job", {"job": {"name": "x", "command": "true", "nmae": "y"}}, ["nmae"]),
        ("launch_job", {"job": {"name": "x", "command": "true"}, "jobs": []}, ["jobs"]),
    ],
)
def test_unknown_kwparams_are_400_naming_them(
    server: Server, root_token: str, method: str, kwparams: dict[str, Any], named: list[str]
) -> None:
    message = error(call(server, method, root_token, **kwparams), 400)
    assert "unknown" in message
    for name in named:
        assert name in message


def test_unknown_field_beside_method_and_kwparams_is_400(server: Server, root_token: str) -> None:
    body = {"method": "get_session", "kwparams": {}, "params": {"user": "x"}}
    assert "params" in error(call(server, "get_session", root_token, body=body), 400)


@pytest.mark.parametrize("in_body", ["version", "stop_job ", "STOP_JOB", 5, ["stop_job"]])
def test_method_in_body_must_match_path(server: Server, root_token: str, in_body: Any) -> None:
    body = {"method": in_body, "kwparams": {"job_id": "x"}}
    message = error(call(server, "stop_job", root_token, body=body), 400)
    assert "method" in message and "stop_job" in message


def test_body_without_method_is_accepted(server: Server, root_token: str) -> None:
    response = call(server, "stop_job", root_token, body={"kwparams": {"job_id": "nope"}})
    error(response, 200, code=2)


@pytest.mark.parametrize("verb", ["GET", "POST"])
@pytest.mark.parametrize("method", ["no_such_method", "launchJob", "get_session_", "VERSION"])
def test_unknown_method_is_404(server: Server, root_token: str, verb: str, method: str) -> None:
    assert method in error(call(server, method, root_token, verb=verb), 404)


# -- null means absent --------------------------------------------------------------------------------


def test_null_kwparams_values_mean_absent(server: Server, root_token: str) -> None:
    # Optional parameters sent as null take their defaults ...
    assert error(call(server, "stop_job", root_token, job_id="nope", force_quit=None), 200, code=2)
    envs = result(call(server, "get_compute_envs", root_token, user=None))
    assert envs["clusters"]
    got = result(call(server, "get_session", root_token, user=None, session_id=None, fields=None,
                      include_jobs=None, include_all_jobs=True))
    assert got["sessions"] == []
    assert "jobs" not in result(call(server, "get_session", root_token, include_jobs=None, include_all_jobs=None))
    # ... required ones sent as null are missing, not wrongly typed.
    message = error(call(server, "stop_job", root_token, job_id=None), 400)
    assert "missing" in message and "job_id" in message
    # A null kwparams object is no kwparams, and a null method is no method.
    assert call(server, "version", root_token, body={"method": "version", "kwparams": None}).status_code == 200
    error(call(server, "stop_job", root_token, body={"method": None, "kwparams": {"job_id": "nope"}}), 200, code=2)


def test_null_fields_inside_the_job_mean_absent(server: Server, root_token: str) -> None:
    job = {"name": "nulls", "command": "echo nulls", "exe": None, "user": None, "cluster": None,
           "working_directory": None, "container_image": None}
    launched = result(call(server, "launch_job", root_token, job=job, apply_config_settings=None))["job"]
    assert launched["user"] == "root" and launched["cluster"] == "Local"
    done = server.wait_job(root_token, launched["id"])
    assert (done["status"], done["exitCode"]) == ("Finished", 0)


# -- a bad request changes nothing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("job", "status", "code"),
    [
        ({"name": "bad", "command": "touch /tmp/owb-should-not-exist", "bogus": 1}, 400, 400),
        ({"name": "bad", "command": "touch /tmp/owb-should-not-exist", "args": "x"}, 400, 400),
        ({"name": "bad", "command": "touch /tmp/owb-should-not-exist", "exe": "/bin/touch"}, 400, 400),
        ({"name": "bad", "args": ["x"]}, 400, 400),
        ({"name": "", "command": "touch /tmp/owb-should-not-exist"}, 400, 400),
        ({"name": "bad", "command": "touch /tmp/owb-should-not-exist",
          "resource_limits": [{"type": "gpus", "value": "1"}]}, 400, 400),
        ({"name": "bad", "command": "touch /tmp/owb-should-not-exist", "cluster": "Nowhere"}, 200, 1),
    ],
    ids=["unknown-field", "wrong-type", "exe-and-command", "neither", "empty-name", "unknown-limit",
         "unknown-cluster"],
)
def test_a_bad_launch_creates_no_job(
    server: Server, root_token: str, job: dict[str, Any], status: int, code: int
) -> None:
    before = job_count(server, root_token)
    error(call(server, "launch_job", root_token, job=job), status, code)
    time.sleep(0.1)
    assert job_count(server, root_token) == before


def test_a_bad_token_request_changes_nothing(server: Server, root_token: str) -> None:
    before = job_count(server, root_token)
    tokens_before = [(t.name, t.last_used) for t in server.accounts().list_tokens()]
    error(call(server, "launch_job", "not-a-token", job={"name": "x", "command": "true"}), 401)
    error(call(server, "launch_job", None, job={"name": "x", "command": "true"}), 401)
    # Read before the count below: that call's own token may record its use (at most every 5 s).
    assert [(t.name, t.last_used) for t in server.accounts().list_tokens()] == tokens_before
    assert job_count(server, root_token) == before


def test_no_response_ever_contains_a_traceback(server: Server, root_token: str) -> None:
    """Odd inputs of every kind: each answer is an envelope (checked in call), never a stack trace."""
    odd: list[bytes] = [
        b"\x00" * 64,
        b"{" * 50,
        b'{"method": "stop_job", "kwparams": {"job_id": "\\ud800"}}',
        b'{"method": "stop_job", "kwparams": {"job_id": "x\\u0000y"}}',
        b'{"method": "stop_job", "kwparams": {"job_id": "' + b"x" * 100_000 + b'"}}',
        b'{"method": "stop_job", "kwparams": {"job_id": 1e999}}',
        b'{"method": "stop_job", "kwparams": {"job_id": NaN}}',
        b'{"method": {"a": 1}, "kwparams": {}}',
        b'{"method": "stop_job", "kwparams": {"job_id": "x"}, "method": "version"}',
        '{"method": "stop_job", "kwparams": {"job_id": "é"}}'.encode("latin-1"),
    ]
    for content in odd:
        response = call(server, "stop_job", root_token, content=content)
        assert response.status_code in (200, 400), response.text
    for job in ({"name": "x", "command": "true", "environment": {"A": 1}},
                {"name": "x", "command": "true", "resource_limits": [{"type": "memory", "value": None}]},
                {"name": "x", "command": "true", "working_directory": "/nonexistent/dir"},
                {"name": "x" * 10_000, "command": "true"}):
        response = call(server, "launch_job", root_token, job=job)
        assert response.status_code in (200, 400), response.text
    for user in ("\x00", "../../etc", "x" * 5000, "root'; drop table users; --"):
        call(server, "get_session", root_token, user=user, include_all_jobs=True)
        call(server, "get_compute_envs", root_token, user=user)


def test_an_empty_user_means_oneself_everywhere(server: Server, root_token: str) -> None:
    """``user=""`` is the caller: the caller's own data comes back, never another user's nor everyone's."""
    job = result(call(server, "launch_job", root_token, job={"name": "mine", "command": "echo mine"}))["job"]
    server.wait_job(root_token, job["id"])
    other_token = server.token(f"other{secrets.token_hex(3)}")  # a plain user token: it may read only itself
    for token, sees_job in ((root_token, True), (other_token, False)):
        own = server.rpc("get_session", token, include_all_jobs=True)
        empty = server.rpc("get_session", token, include_all_jobs=True, user="")
        assert empty.pop("timestamp") >= own.pop("timestamp")  # the server's clock at each answer
        assert empty == own
        assert (job["id"] in [j["id"] for j in empty["jobs"]]) is sees_job
        assert server.rpc("get_compute_envs", token, user="") == server.rpc("get_compute_envs", token)
    output = call(server, "get_job_output", root_token, job_id=job["id"], user="")
    assert output.status_code == 200 and "mine" in output.text, output.text
    # Another user's empty `user` is that user, not the job's owner: refused as for any job not theirs.
    refused = call(server, "get_job_output", other_token, job_id=job["id"], user="").json()
    assert "error" in refused and "mine" not in json.dumps(refused)


# -- the browser sign-in (docs/security.md "The sign-in cookie") -----------------------------------------------


def browser_sign_in(browser: httpx.Client, server: Server, token: str, next_url: str) -> httpx.Response:
    """Sign in as a browser does: load the form, post it back with its hidden fields (and our ``next``)."""
    form = browser.get(f"{server.url}/auth/sign-in", params={"next": next_url})
    assert form.status_code == 200
    fields = {name: html.unescape(value)
              for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text)}
    fields.update(token=token, next=next_url)  # `next` as a crafted link would post it
    return browser.post(f"{server.url}/auth/sign-in", data=fields, headers={"Origin": server.url})


def test_sign_in_keeps_next_on_this_site(server: Server, root_token: str) -> None:
    cases = {"https://evil.example/x": "/", "//evil.example/x": "/", "/\\evil.example": "/",
             "javascript:alert(1)": "/", "/s/abc/lab?x=1": "/s/abc/lab?x=1"}
    for next_url, expected in cases.items():
        with httpx.Client(timeout=30) as browser:
            signed_in = browser_sign_in(browser, server, root_token, next_url)
            assert signed_in.status_code == 303 and signed_in.headers["location"] == expected, next_url


def test_sign_in_cookie_lasts_its_lifetime_and_only_opens_the_proxy(server: Server, root_token: str) -> None:
    with httpx.Client(timeout=30) as browser:
        signed_in = browser_sign_in(browser, server, root_token, "/")
        attributes = [part.strip().lower() for part in signed_in.headers["set-cookie"].split(";")]
        assert attributes[0].startswith(f"{COOKIE_NAME}=")
        assert f"max-age={int(LIFETIME.total_seconds())}" in attributes and LIFETIME.days == 7
        assert {"httponly", "path=/", "samesite=lax"} <= set(attributes)
        cookie = browser.cookies[COOKIE_NAME]
        assert browser.get(f"{server.url}/s/00000nope/").status_code == 404  # signed in: past the 401
        # The API methods ignore the cookie: without the Authorization header they refuse.
        for method in ("get_session", "version"):
            refused = browser.post(f"{server.url}/api/{method}", json={"method": method, "kwparams": {}})
            assert refused.status_code == 401, refused.text
        # Its lifetime over (the stored expiry moved to the past), the cookie no longer signs in.
        store = server.accounts().store
        with store.engine.begin() as conn:
            conn.execute(sa.update(BrowserSession).where(BrowserSession.cookie_hash == hash_token(cookie))
                         .values(expires=utcnow() - timedelta(seconds=1)))
        expired = browser.get(f"{server.url}/s/00000nope/")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]

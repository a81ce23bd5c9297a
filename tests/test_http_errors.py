"""The one renderer of error bodies (http_errors.py): every error class, the log line of a 5xx, and no error body
built anywhere else in the package."""

from __future__ import annotations

import ast
import inspect
import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa
from starlette.responses import Response

from openworkbench import errors, http_errors
from openworkbench.errors import InternalError, WorkbenchError
from tests.conftest import PG_URL, Server, make_pg_database

PACKAGE = Path(http_errors.__file__).parent
CLASSES = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
           if issubclass(cls, WorkbenchError) and cls.__module__ == errors.__name__]
SERVED = [cls for cls in CLASSES if cls.http_status >= 100]  # the client's own errors (0) never reach a server
TRACEBACK_MARKS = ("Traceback", 'File "', "sqlite3", "sqlalchemy", ".py")


def body(response: Response) -> dict[str, dict[str, object]]:
    return dict(json.loads(bytes(response.body)))


@pytest.mark.parametrize("cls", SERVED, ids=lambda cls: cls.__name__)
def test_every_error_class_is_answered_with_its_declared_status_and_code(cls: type[WorkbenchError]) -> None:
    exc = cls(f"a {cls.__name__} happened")
    response = http_errors.api_error(exc)
    assert response.status_code == cls.http_status
    assert body(response) == {"error": {"code": cls.code, "message": f"a {cls.__name__} happened"}}
    proxied = http_errors.proxy_error(exc)  # the proxy: real HTTP statuses, the code equal to the status
    expected = (cls.http_status if cls.http_status >= 400 else 404 if issubclass(cls, errors.NotFound)
                else 503 if issubclass(cls, errors.InvalidState) else 500)
    assert proxied.status_code == expected and body(proxied)["error"]["code"] == expected
    page = http_errors.page_error(exc)  # a browser: an HTML page with the message, escaped
    assert page.status_code == (cls.http_status if cls.http_status >= 400 else 400)
    assert page.media_type == "text/html" and f"a {cls.__name__} happened" in bytes(page.body).decode()


def test_a_class_added_to_the_tree_later_is_rendered_by_what_it_declares() -> None:
    class StoreGone(WorkbenchError):  # as a StoreUnavailable of another branch would declare itself
        code, http_status = 9, 503

    response = http_errors.api_error(StoreGone("the database is gone"))
    assert response.status_code == 503
    assert body(response) == {"error": {"code": 9, "message": "the database is gone"}}


def test_a_5xx_is_logged_once_with_its_cause_and_its_body_has_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        try:
            {}["missing"]
        except KeyError as cause:
            raise errors.StoreError("database error: the disk is gone") from cause
    except errors.StoreError as exc:
        with caplog.at_level(logging.INFO, logger="openworkbench.http"):
            response = http_errors.api_error(exc, where="POST /api/get_users")
    assert response.status_code == 500
    assert body(response) == {"error": {"code": 7, "message": "database error: the disk is gone"}}
    [record] = caplog.records
    assert record.levelno == logging.ERROR and "POST /api/get_users" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)  # the cause, with its traceback
    assert "Traceback" in caplog.text and "KeyError" in caplog.text


def test_a_bug_is_logged_with_its_traceback_and_answered_as_a_plain_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="openworkbench.http"):
        try:
            raise ZeroDivisionError("secret detail /etc/shadow")
        except ZeroDivisionError as bug:
            response = http_errors.api_error(http_errors.unexpected(bug, "GET /"))
    assert response.status_code == 500
    assert body(response) == {"error": {"code": 500, "message": "Internal server error"}}
    [record] = caplog.records  # once: the 500 rendered after it is not logged again
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    assert "secret detail" not in bytes(response.body).decode()


def test_a_4xx_and_application_errors_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="openworkbench.http"):
        http_errors.api_error(errors.BadRequest("bad"))
        http_errors.api_error(errors.NotFound("no such job"))
        http_errors.proxy_error(errors.Unauthenticated("who?"))
    assert caplog.records == []


def _builds_an_error_body(node: ast.AST) -> bool:
    """A dict ``{"error": {"code"/"message": ...}}``, or a string holding that JSON: an error body."""
    if isinstance(node, ast.Dict):
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Dict):
                inner = {k.value for k in value.keys if isinstance(k, ast.Constant)}
                if inner & {"code", "message"}:
                    return True
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes):
        text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
        return '{"error":{"code":' in text.replace(" ", "")
    return False


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def test_no_error_body_is_built_outside_the_renderer() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(http_errors.__file__):
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        offenders += [f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}" for node in ast.walk(tree)
                      if id(node) not in docs and _builds_an_error_body(node)]
    assert offenders == [], f"error bodies built outside http_errors.py: {offenders}"


def test_the_check_finds_an_error_body(tmp_path: Path) -> None:
    """The check above, against the ways an error body was built before the renderer."""
    for source in ('JSONResponse({"error": {"code": 404, "message": "x"}}, 404)',
                   'body = json.dumps({"error": {"code": exc.code, "message": exc.message}})',
                   "raw = b'{\"error\":{\"code\":500,\"message\":\"x\"}}'"):
        assert any(_builds_an_error_body(node) for node in ast.walk(ast.parse(source))), source


def test_a_store_gone_away_is_a_5xx_envelope_and_one_log_line_with_its_cause(tmp_path: Path) -> None:
    """The real thing: PostgreSQL refuses the server's connections under it; an RPC that reads the store gets
    the envelope, and the log (only the log) gets the cause."""
    url = make_pg_database()
    name = sa.engine.make_url(url).database
    server = Server(tmp_path / "data", database_url=url).start()
    admin_engine = sa.create_engine(PG_URL or "", isolation_level="AUTOCOMMIT")
    try:
        admin = server.token("root", kind="admin")
        assert server.post("get_users", admin).status_code == 200
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                         {"name": name})
        response = server.post("get_users", admin)
        assert response.status_code >= 500, response.text
        assert set(response.json()) == {"error"} and set(response.json()["error"]) == {"code", "message"}
        assert not any(mark in response.text for mark in TRACEBACK_MARKS), response.text
        log = server.log()
        # An outage is the store's to log, once, with its cause (store/availability.py); not once per request.
        assert len([line for line in log.splitlines() if "is unavailable: OperationalError" in line]) == 1, log[-3000:]
        assert not [line for line in log.splitlines() if "/api/get_users -> 5" in line], log[-3000:]
    finally:
        server.stop()
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin_engine.dispose()


def test_internal_error_is_the_catch_all() -> None:
    assert http_errors.unexpected(RuntimeError("x"), "test").message == http_errors.INTERNAL
    assert isinstance(http_errors.unexpected(RuntimeError("x"), "test"), InternalError)

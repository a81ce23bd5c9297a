"""Sessions' state machine: the table (pure), the one writer (on SQLite and PostgreSQL), and that nothing
else in the package writes a session's state."""

from __future__ import annotations

import ast
import itertools
import logging
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from openworkbench.errors import IllegalTransition, InternalError
from openworkbench.sessions import transitions
from openworkbench.sessions.states import (
    ALLOWED,
    ENDED,
    FINAL,
    INITIAL,
    LIVE,
    ON_RESTART,
    Adoption,
    SessionState,
    adoption_of,
    allowed,
    check,
)
from openworkbench.sessions.transitions import Transitions
from openworkbench.store import Store
from openworkbench.store.schema import Session, SessionTransition, User

SRC = Path(__file__).resolve().parent.parent / "src" / "openworkbench"
DOCS = Path(__file__).resolve().parent.parent / "docs"
S = SessionState

# -- the table, pure --------------------------------------------------------------------------------------


def test_every_allowed_pair_passes_and_every_other_is_refused() -> None:
    assert set(ALLOWED) == set(SessionState)  # every state has its row, even an empty one
    passed = refused = 0
    for current, to in itertools.product(SessionState, SessionState):
        if to in ALLOWED[current]:
            assert allowed(current, to)
            assert check("abcd1234", current.value, to) is current
            passed += 1
        else:
            assert not allowed(current, to)
            with pytest.raises(IllegalTransition, match=f"from {current.value} to {to.value}"):
                check("abcd1234", current.value, to)
            refused += 1
    assert passed == sum(map(len, ALLOWED.values())) and passed + refused == len(SessionState) ** 2


def test_a_new_session_starts_launching_and_nothing_else() -> None:
    for to in SessionState:
        assert allowed(None, to) == (to is INITIAL)
    assert check("abcd1234", None, S.LAUNCHING) is None
    with pytest.raises(IllegalTransition, match="from nothing to running"):
        check("abcd1234", None, S.RUNNING)


def test_an_unknown_stored_state_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="unknown state 'stopping'"):
        check("abcd1234", "stopping", S.FAILED)


def test_the_state_sets_follow_the_table() -> None:
    assert LIVE == {state for state in SessionState if ALLOWED[state] - {S.FINISHED}} - {S.SUSPENDED}
    assert ENDED == {state for state in SessionState if not ALLOWED[state]}  # nothing leaves an end
    assert FINAL == ENDED | {S.SUSPENDED}
    # Every live state can fail (a bug or a dead IDE must never leave a session in it forever).
    assert all(S.FAILED in ALLOWED[state] for state in LIVE)
    # Every state is reachable from a launch.
    seen, todo = {INITIAL}, [INITIAL]
    while todo:
        for to in ALLOWED[todo.pop()] - seen:
            seen.add(to)
            todo.append(to)
    assert seen == set(SessionState)


def test_a_restart_adopts_every_state_through_the_table() -> None:
    assert set(ON_RESTART) == set(SessionState)
    for state, adoption in ON_RESTART.items():
        if adoption is Adoption.NOTHING:
            assert state in FINAL
        elif adoption in (Adoption.FAIL, Adoption.CHECK_JOB):
            assert S.FAILED in ALLOWED[state]
        elif adoption is Adoption.FOLLOW_START:
            assert ALLOWED[state] & {S.STARTING, S.RUNNING}
        else:  # FINISH_STOP: the stop can end the ways a stop ends
            assert adoption is Adoption.FINISH_STOP and S.FAILED in ALLOWED[state]
            assert ALLOWED[state] & {S.SUSPENDED, S.FINISHED}


def test_a_restart_starts_again_only_a_start_that_never_began() -> None:
    """``adoption_of``: a queued launch or resume, or a resume whose recorded job is the last run's, starts
    again; everything else is what ``ON_RESTART`` says (a start without a job cannot be followed: failed)."""
    for state in SessionState:
        for has_job, queued, earlier in itertools.product((False, True), repeat=3):
            got = adoption_of(state, has_job, queued, earlier)
            again = state in (S.LAUNCHING, S.RESUMING) and (queued or (state is S.RESUMING and earlier))
            if again:
                assert got is Adoption.START_AGAIN
            elif ON_RESTART[state] is Adoption.FOLLOW_START and not has_job:
                assert got is Adoption.FAIL
            else:
                assert got is ON_RESTART[state]


def test_the_docs_draw_the_same_table() -> None:
    """docs/sessions.md's diagram has exactly the allowed transitions."""
    text = (DOCS / "sessions.md").read_text()
    drawn = {(a, b) for a, b in re.findall(r"^\s*(\w+) --> (\w+)", text, re.M) if a != "[*]"}
    table = {(current.value, to.value) for current, targets in ALLOWED.items() for to in targets}
    assert drawn == table


# -- the one writer, on both databases ------------------------------------------------------------------


def _new_session(store: Store) -> str:
    with store.session() as db:
        user = User(username="alice")
        db.add(user)
        db.flush()
        transitions.create(db, "a test", id="abcd1234", user_id=user.id, workbench="JupyterLab", name="n",
                           project_id="p", url="/s/abcd1234/", status_detail="", cluster="Local", request={},
                           working_dir="/", socket_path="/s", state_dir="/d", secret="x", suspend_manifest={},
                           executing=False)
    return "abcd1234"


def _history(store: Store, session_id: str) -> list[tuple[str | None, str, str]]:
    return [(t.from_state, t.to_state, t.reason) for t in Transitions(store).history(session_id)]


def test_transition_writes_the_state_its_time_and_reason(store: Store) -> None:
    session_id = _new_session(store)
    with store.session() as db:
        launched = db.get(Session, session_id)
        assert launched is not None and launched.state == "launching"
    row, owner = Transitions(store).transition(session_id, S.PENDING, "job 42 launched", job_id="42")
    assert (row.state, row.job_id, owner) == ("pending", "42", "alice")
    with store.session() as db:
        stored = db.get(Session, session_id)
        assert stored is not None and (stored.state, stored.job_id) == ("pending", "42")
        assert stored.last_state_updated > launched.last_state_updated
        [latest] = db.scalars(sa.select(SessionTransition).where(SessionTransition.to_state == "pending"))
        assert latest.at == stored.last_state_updated  # the row's time and the history's are one
    assert _history(store, session_id) == [(None, "launching", "a test"), ("launching", "pending", "job 42 launched")]


def test_an_illegal_transition_is_logged_and_writes_nothing(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    session_id = _new_session(store)
    with caplog.at_level(logging.ERROR, logger="openworkbench.sessions.transitions"), \
            pytest.raises(IllegalTransition) as raised:
        Transitions(store).transition(session_id, S.RUNNING, "skipping the queue", status_detail="no")
    assert isinstance(raised.value, InternalError)
    assert "cannot go from launching to running (reason: skipping the queue)" in caplog.text
    with store.session() as db:
        stored = db.get(Session, session_id)
        assert stored is not None and (stored.state, stored.status_detail) == ("launching", "")
    assert _history(store, session_id) == [(None, "launching", "a test")]


# -- nothing else writes a session's state --------------------------------------------------------------

WRITER = "sessions/transitions.py"
# (module, what) -> why it is not a session's state; anything new writes through transitions.py or is listed.
NOT_SESSIONS = {
    ("cli/client_commands.py", "maps 'state'"): "the CLI's output of a session it read",
    ("clusters/slurm/parse.py", "passes state="): "a Slurm job's state",
    ("proxy/routes.py", "maps 'state'"): "a route's copy of its session's state, written in the transition's "
                                         "transaction (transitions.transition(..., then=runner.remember))",
    ("services/job_events.py", "sets .state"): "a followed job's newest change, in memory",
}


def package_sources() -> list[tuple[str, str]]:
    return [(str(path.relative_to(SRC)), path.read_text()) for path in sorted(SRC.rglob("*.py"))]


def state_writes(sources: list[tuple[str, str]]) -> list[str]:
    """Every place that sets a ``state`` attribute, passes ``state=``, builds a mapping with a "state" key
    (what ``update(**fields)`` and ``.values()`` would take), or updates the sessions table in SQL."""
    found = []
    for module, source in sources:
        if module == WRITER or module.startswith("store/migrations/"):
            continue
        for node in ast.walk(ast.parse(source)):
            where = f"{module}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for item in ast.walk(target):
                        if isinstance(item, ast.Attribute) and item.attr == "state" \
                                and isinstance(item.ctx, ast.Store):
                            found.append(f"{where} sets .state")
            elif isinstance(node, ast.Call):
                if any(keyword.arg == "state" for keyword in node.keywords):
                    found.append(f"{where} passes state=")
                if ast.unparse(node.func).endswith("setattr") and len(node.args) > 1 \
                        and isinstance(node.args[1], ast.Constant) and node.args[1].value == "state":
                    found.append(f"{where} setattr(..., 'state')")
            elif isinstance(node, ast.Dict):
                if any(isinstance(key, ast.Constant) and key.value == "state" for key in node.keys):
                    found.append(f"{where} maps 'state'")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.search(r"(?i)update\s+sessions\b.*\bset\b", node.value):
                found.append(f"{where} SQL updates sessions")
    return found


def test_only_transitions_writes_a_session_state() -> None:
    found = {(item.split(":")[0], item.split(" ", 1)[1]): item for item in state_writes(package_sources())}
    unlisted = sorted(where for key, where in found.items() if key not in NOT_SESSIONS)
    assert not unlisted, f"write a session's state through sessions/transitions.py, or list why not: {unlisted}"
    assert set(NOT_SESSIONS) <= set(found), "NOT_SESSIONS lists writes that are gone: drop them"


def test_the_state_write_check_sees_a_write() -> None:
    """The check above cannot pass by seeing nothing: each form it looks for is found in a sample."""
    sample = ('row.state = "running"\nrow.state, x = "a", 1\nupdate(row, state="x")\n'
              'update_sync(i, {"state": "x"})\nsetattr(row, "state", "x")\ntext("UPDATE sessions SET state = 1")\n')
    found = state_writes([("sessions/runner.py", sample), (WRITER, sample)])  # the writer itself may
    assert sorted(item.split(" ", 1)[1] for item in found) == sorted([
        "sets .state", "sets .state", "passes state=", "maps 'state'", "setattr(..., 'state')",
        "SQL updates sessions"])

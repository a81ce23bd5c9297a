"""A session's states and the transitions allowed between them: the whole state machine, pure.

``transitions.py`` is the one module that writes a state, and it asks ``check`` first. A restart's
re-adoption of what the previous server left in flight is part of the same machine: ``ON_RESTART`` says,
for every state, what the new server does with a session found in it, and the transitions that takes are
in ``ALLOWED`` like any other.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from openworkbench.errors import IllegalTransition


class SessionState(enum.StrEnum):
    """``activity_state`` as the API shows it (docs/api-notes: the product's names)."""

    LAUNCHING = "launching"  # the request is taken, the URL allocated; start hooks run
    PENDING = "pending"  # the IDE's job is queued
    STARTING = "starting"  # the job runs; the IDE does not answer yet
    RUNNING = "running"
    RESUMING = "resuming"  # a suspended session is started again (stays so until it answers)
    SUSPENDING = "suspending"
    SHUTTING_DOWN = "shutting_down"
    SUSPENDED = "suspended"  # ended, but can resume
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    CANCELED = "canceled"  # stopped while its job was still queued


S = SessionState
INITIAL = S.LAUNCHING  # the state a new session is stored in
FINAL = frozenset({S.SUSPENDED, S.FAILED, S.KILLED, S.FINISHED, S.CANCELED})  # no IDE runs
ENDED = FINAL - {S.SUSPENDED}  # cannot come back
LIVE = frozenset(S) - FINAL  # counted against sessions.max_per_user; followed after a restart
RUNNING = frozenset({S.RUNNING})  # routed by the proxy; the API's ``running``

_STOPS = frozenset({S.SUSPENDING, S.SHUTTING_DOWN, S.FAILED})  # any start may be stopped, or fail
ALLOWED: Mapping[SessionState, frozenset[SessionState]] = {
    # A stop while it waits in the start queue (services/start_queue.py): nothing of it ran.
    S.LAUNCHING: _STOPS | {S.PENDING, S.CANCELED},
    S.PENDING: _STOPS | {S.STARTING},
    S.STARTING: _STOPS | {S.RUNNING},
    S.RESUMING: _STOPS | {S.RUNNING, S.SUSPENDED},  # suspended again: stopped while queued to resume
    # The watch sees the IDE's job end: finished when it exited 0, failed otherwise.
    S.RUNNING: _STOPS | {S.FINISHED},
    S.SUSPENDING: frozenset({S.SUSPENDED, S.CANCELED, S.FAILED}),
    S.SHUTTING_DOWN: frozenset({S.FINISHED, S.KILLED, S.CANCELED, S.FAILED}),
    # resume_session; or stop_session, which discards what it kept.
    S.SUSPENDED: frozenset({S.RESUMING, S.FINISHED}),
    S.FINISHED: frozenset(),
    S.FAILED: frozenset(),
    S.KILLED: frozenset(),
    S.CANCELED: frozenset(),
}


class Adoption(enum.Enum):
    """What a server starting up does with a session the previous process left in a state."""

    NOTHING = "nothing"  # ended: nothing runs
    FAIL = "fail"  # nothing can carry on from here: failed, with the reason
    FOLLOW_START = "follow start"  # its job was launched: wait for the IDE to answer, as the start did
    CHECK_JOB = "check job"  # running: failed if its job ended while the server was down, else watched
    FINISH_STOP = "finish stop"  # a stop or suspend was under way: do it again (each step is idempotent)
    # Its start runs again from the beginning, in the same state: it waited in the start queue (nothing of it
    # ran), or a resume was cut before its new IDE job was recorded (the job named is the last run's).
    START_AGAIN = "start again"


ON_RESTART: Mapping[SessionState, Adoption] = {
    S.LAUNCHING: Adoption.FAIL,  # its start hooks or job launch were cut: their outcome is unknown
    S.PENDING: Adoption.FOLLOW_START,
    S.STARTING: Adoption.FOLLOW_START,
    S.RESUMING: Adoption.FOLLOW_START,
    S.RUNNING: Adoption.CHECK_JOB,
    S.SUSPENDING: Adoption.FINISH_STOP,
    S.SHUTTING_DOWN: Adoption.FINISH_STOP,
    **{state: Adoption.NOTHING for state in FINAL},
}

def adoption_of(state: SessionState, has_job: bool, queued: bool, job_of_earlier_run: bool) -> Adoption:
    """``ON_RESTART[state]``, refined by what the row says: ``queued`` (its status_detail is a start queue
    place), ``has_job`` (an IDE job is recorded), ``job_of_earlier_run`` (that job ended before the resume)."""
    if state in (S.LAUNCHING, S.RESUMING) and (queued or (state is S.RESUMING and job_of_earlier_run)):
        return Adoption.START_AGAIN
    adoption = ON_RESTART[state]
    if adoption is Adoption.FOLLOW_START and not has_job:
        return Adoption.FAIL  # cannot happen (the job id is written with "pending"), but must not hang
    return adoption


def allowed(current: SessionState | None, to: SessionState) -> bool:
    """May a session in ``current`` (None: not stored yet) move to ``to``?"""
    if current is None:
        return to is INITIAL
    return to in ALLOWED[current]


def check(session_id: str, current: str | None, to: SessionState) -> SessionState | None:
    """``current`` as a state (None for a new session), if the move to ``to`` is allowed; else
    ``IllegalTransition`` naming both (a stored state this code does not know is illegal too)."""
    try:
        known = None if current is None else SessionState(current)
    except ValueError:
        raise IllegalTransition(f"session '{session_id}' is in an unknown state '{current}'; it cannot become "
                                f"{to}") from None
    if not allowed(known, to):
        raise IllegalTransition(f"session '{session_id}' cannot go from {current or 'nothing'} to {to}")
    return known

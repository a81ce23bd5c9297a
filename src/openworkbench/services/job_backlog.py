"""Job states the monitor saw but could not store because the database was away.

A cluster reports a change once (Local reads a job's state file only when it changed), so a poll whose write
fails must not drop what it saw: the states wait here, merged with later polls', and the next poll that finds
the store answering writes them, each with the time it was seen (a job's end time is when it ended, not when
the database came back).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from datetime import datetime

from openworkbench.clusters.base import FINAL_STATUSES, JobState
from openworkbench.store.schema import utcnow

# Launches whose row may or may not have been committed when the database went away (the commit's answer was
# lost): the job was never started, so a row left behind ends with this once the store answers again.
NEVER_STARTED = JobState("Failed", "the database became unavailable while the job was being launched; it was not "
                                   "started (the launch was answered with 503)")
_KEPT_FIELDS = ("exit_code", "pid", "host", "stdout_file", "stderr_file", "cluster_state")


@dataclass(frozen=True)
class Seen:
    state: JobState
    at: datetime


class Backlog:
    def __init__(self) -> None:
        self._held: dict[str, Seen] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, seen: dict[str, Seen]) -> None:
        """Keep states that could not be stored, for the next write."""
        with self._lock:
            for job_id, item in seen.items():
                self._held[job_id] = _merged(self._held.get(job_id), item)

    def hold_now(self, job_id: str, state: JobState) -> None:
        self.hold({job_id: Seen(state, utcnow())})

    def take(self, fresh: dict[str, JobState]) -> dict[str, Seen]:
        """What to write now: the held states, brought up to date with a poll's ``fresh`` ones."""
        now = utcnow()
        with self._lock:
            held, self._held = self._held, {}
        for job_id, state in fresh.items():
            held[job_id] = _merged(held.get(job_id), Seen(state, now))
        return held


def _merged(old: Seen | None, new: Seen) -> Seen:
    """The later state, keeping what the earlier one reported and the later one left unsaid (None fields mean
    "unchanged"); a final state is final, as in the store."""
    if old is None:
        return new
    if old.state.status in FINAL_STATUSES:
        return old
    kept = {name: getattr(old.state, name) for name in _KEPT_FIELDS if getattr(new.state, name) is None}
    return Seen(dataclasses.replace(new.state, **kept), new.at)

"""The active job list of ``get_session``, kept in memory as each job's JSON bytes.

The active list holds the jobs not yet final and the final jobs that ended within ``jobs.expiry_hours``;
a job that ended earlier has rotated out (``get_historical_session`` lists it). Each job is rendered once
and kept until a commit writes it: the store tells ``written`` (ORM commits through its hook, the launch
path's Core writes through ``Store.wrote``), the job is marked stale, and the next read reloads the stale
jobs alone, in one query. A poller's ``timestamp`` delta needs, per job, the server time of its last write
(``changed``) and, per job that rotated out, when it left (kept for ``DEPARTED_HORIZON``, and at most the
newest ``DEPARTED_MAX``; older departures are computed from the store: a job leaves at its end time plus the
expiry).
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import or_, select

from openworkbench.services.job_json import job_json
from openworkbench.services.readthrough import store_allowed
from openworkbench.sessions.views import encode
from openworkbench.store import Store
from openworkbench.store.schema import Job, User

DEPARTED_HORIZON = 3600.0  # seconds a departure is remembered; older ones are asked of the store
# ... and at most this many (~250 B each): a server that ends more jobs an hour keeps only the newest, and a
# ``since`` older than those is answered from the store, as one older than the hour is.
DEPARTED_MAX = 50_000
# Jobs written and not read since: a server whose get_session nobody asks for jobs would note every job it ever
# wrote (the soak's find). Past this many, the next read reloads the whole list instead (one query).
STALE_MAX = 10_000
READ_BATCH = 500  # ids per reload query: well below any database's limit of bound parameters


@dataclass(frozen=True)
class JobView:
    id: str
    owner: str
    session_id: str | None
    submitted: float
    ends: float | None  # end time (epoch seconds) of a final job
    changed: float  # server time of the write this rendering reflects
    raw: bytes


@dataclass(frozen=True)
class JobList:
    """One user's active jobs: oldest first (and their joined JSON), and in the order they changed."""

    views: tuple[JobView, ...]
    raw: bytes
    by_change: tuple[JobView, ...]
    changes: tuple[float, ...]

    @classmethod
    def of(cls, views: Sequence[JobView]) -> JobList:
        ordered = tuple(sorted(views, key=lambda view: (view.submitted, view.id)))
        by_change = tuple(sorted(views, key=lambda view: view.changed))
        return cls(ordered, join(ordered), by_change, tuple(view.changed for view in by_change))


@dataclass(frozen=True)
class JobAnswer:
    raw: bytes  # a JSON array of WorkbenchJob
    left: list[str]  # ids that left the list since ``since``


def join(views: Sequence[JobView]) -> bytes:
    return b"[" + b",".join(view.raw for view in views) + b"]"


def epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class JobViews:
    def __init__(self, store: Store, expiry_hours: float, departed_max: int = DEPARTED_MAX,
                 stale_max: int = STALE_MAX) -> None:
        self.store = store
        self.expiry = expiry_hours * 3600
        self.departed_max = departed_max
        self.stale_max = stale_max
        self._views: dict[str, JobView] = {}
        self._by_owner: dict[str, dict[str, JobView]] = {}
        self._lists: dict[str, JobList] = {}
        self._ending: list[tuple[float, str]] = []  # heap of (end time, id) of final jobs in the list
        self._departed: list[tuple[float, str, str]] = []  # (left at, id, owner), by time
        self._horizon = float("inf")  # departures before this are not in memory
        self._stale: dict[str, tuple[int, float]] = {}  # id -> (write sequence number, server time)
        self._seq = 0
        self._loaded = False
        self._reload_after = 0  # a whole read that began before this write sequence number is not current
        self._lock = threading.Lock()

    # -- what commits wrote ------------------------------------------------------------------------
    def written(self, objects: list[Any]) -> None:
        """The store's commit hook: the jobs written are stale until the next read reloads them."""
        touched = [obj for obj in objects if obj is Job or isinstance(obj, Job)]
        if not touched:
            return
        now = time.time()
        with self._lock:
            self._seq += 1
            for obj in touched:
                if not isinstance(obj, Job):  # a bulk UPDATE or DELETE of unknown rows: load everything again
                    self._loaded = False
                    self._reload_after = self._seq
                    return
                self._stale[obj.id] = (self._seq, now)
            if len(self._stale) > self.stale_max:
                self._stale_all()

    def _stale_all(self) -> None:
        """Everything stale, as after a bulk write: the next read reloads the whole list; a read under way
        (begun before ``_seq``) must not count as that reload."""
        self._stale.clear()
        self._loaded = False
        self._reload_after = self._seq

    # -- reading -----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Bring memory up to date with the store (a store read: not on the event loop)."""
        with self._lock:
            seq, whole, stale = self._seq, not self._loaded, list(self._stale)
        if not whole and not stale:
            return
        now = time.time()
        rows = self._read_all(now - self.expiry) if whole else self._read(stale)
        with self._lock:
            self._install(rows, set(stale), seq, now, whole)

    def answer(self, username: str, session_ids: list[str] | None, since: float | None, now: float) -> JobAnswer:
        """The user's active jobs (those of ``session_ids`` only, if given; those changed after ``since``
        only, if given), read through: from memory when it is current, else after reloading what the store
        wrote since (``store_allowed``: inside ``readthrough.memory_only`` that raises ``NeedsStore``)."""
        with self._lock:
            behind = not self._loaded or bool(self._stale)
        if behind:
            store_allowed()
            self.refresh()
        raw, left = self._answer(username, session_ids, since, now)
        if left is None:  # departures older than memory
            assert since is not None
            store_allowed()
            left = self.departed_in_store(username, since, now)
        return JobAnswer(raw, left)

    def _answer(self, username: str, session_ids: list[str] | None, since: float | None,
                now: float) -> tuple[bytes, list[str] | None]:
        with self._lock:
            self._rotate(now)
            listed = self._lists.get(username)
            if listed is None:
                listed = self._lists[username] = JobList.of(list(self._by_owner.get(username, {}).values()))
            if since is None and session_ids is None:
                return listed.raw, []
            views: Sequence[JobView] = listed.views
            if since is not None:
                changed = listed.by_change[bisect.bisect_right(listed.changes, since):]
                views = sorted(changed, key=lambda view: (view.submitted, view.id))
            if session_ids is not None:
                wanted = set(session_ids)
                views = [view for view in views if view.session_id in wanted]
            return join(views), self._left(username, since)

    def departed_in_store(self, username: str, since: float, now: float) -> list[str]:
        """Ids of the user's jobs that rotated out in (since, now]: those that ended expiry earlier."""
        begin = datetime.fromtimestamp(since - self.expiry, UTC)
        end = datetime.fromtimestamp(now - self.expiry, UTC)
        query = (select(Job.id).join(User).where(User.username == username)
                 .where(Job.end_time > begin, Job.end_time <= end))
        with self.store.session() as db:
            return list(db.scalars(query))

    def held(self) -> dict[str, int]:
        """What memory holds, by count: jobs listed (bound: the expiry), departures (``departed_max`` and
        ``DEPARTED_HORIZON``), jobs written and not read since (``stale_max``)."""
        with self._lock:
            return {"listed": len(self._views), "departed": len(self._departed), "stale": len(self._stale)}

    # -- inside the lock -----------------------------------------------------------------------------
    def _left(self, username: str, since: float | None) -> list[str] | None:
        if since is None:
            return []
        if since < self._horizon:
            return None
        start = bisect.bisect_right(self._departed, since, key=lambda item: item[0])
        return [job_id for _, job_id, owner in self._departed[start:] if owner == username]

    def _install(self, rows: list[JobView], asked: set[str], seq: int, now: float, whole: bool) -> None:
        if whole:
            loaded = {row.id for row in rows}
            gone = [view for view in self._views.values() if view.id not in loaded]
            self._views, self._by_owner, self._lists, self._ending = {}, {}, {}, []
            for view in gone:
                self._depart(now, view)
            self._horizon = min(self._horizon, now)
            self._loaded = seq >= self._reload_after
        found = set()
        for row in rows:
            found.add(row.id)
            stale = self._stale.get(row.id)
            if stale is not None and stale[0] > seq:
                # Written again while we read: this version is listed (a job must never drop out of the list
                # for one answer), and it stays stale, so the next read reloads it.
                self._put(replace(row, changed=stale[1]))
                continue
            self._stale.pop(row.id, None)
            self._put(replace(row, changed=now if whole or stale is None else stale[1]))
        for job_id in asked - found:  # no longer in the store
            if self._stale.get(job_id, (seq + 1,))[0] <= seq:
                del self._stale[job_id]
                if (old := self._views.get(job_id)) is not None:
                    self._remove(old)
                    self._depart(now, old)
        if whole:
            self._stale = {job_id: mark for job_id, mark in self._stale.items() if mark[0] > seq}
        self._rotate(now)

    def _put(self, view: JobView) -> None:
        old = self._views.get(view.id)
        if old is not None:
            self._remove(old)
        self._views[view.id] = view
        self._by_owner.setdefault(view.owner, {})[view.id] = view
        self._lists.pop(view.owner, None)
        if view.ends is not None:
            heapq.heappush(self._ending, (view.ends, view.id))

    def _remove(self, view: JobView) -> None:
        del self._views[view.id]
        self._by_owner[view.owner].pop(view.id, None)
        self._lists.pop(view.owner, None)

    def _depart(self, when: float, view: JobView) -> None:
        bisect.insort(self._departed, (when, view.id, view.owner))

    def _rotate(self, now: float) -> None:
        """Final jobs that ended more than the expiry ago leave the list; old departures are forgotten."""
        limit = now - self.expiry
        while self._ending and self._ending[0][0] < limit:
            ends, job_id = heapq.heappop(self._ending)
            view = self._views.get(job_id)
            if view is not None and view.ends == ends:
                self._remove(view)
                self._depart(ends + self.expiry, view)
        forget = now - DEPARTED_HORIZON
        if self._departed and self._departed[0][0] < forget:
            del self._departed[:bisect.bisect_left(self._departed, forget, key=lambda item: item[0])]
        if self._loaded:
            self._horizon = max(self._horizon, forget)
        if (excess := len(self._departed) - self.departed_max) > 0:
            # Departures up to the last one dropped are the store's to tell from now on.
            self._horizon = max(self._horizon, self._departed[excess - 1][0])
            del self._departed[:excess]

    # -- the store -----------------------------------------------------------------------------------
    def _read_all(self, cutoff: float) -> list[JobView]:
        active = or_(Job.end_time.is_(None), Job.end_time >= datetime.fromtimestamp(cutoff, UTC))
        with self.store.session() as db:
            return [_view(job, owner) for job, owner in db.execute(_QUERY.where(active))]

    def _read(self, ids: list[str]) -> list[JobView]:
        views: list[JobView] = []
        with self.store.session() as db:
            for start in range(0, len(ids), READ_BATCH):
                query = _QUERY.where(Job.id.in_(ids[start:start + READ_BATCH]))
                views += [_view(job, owner) for job, owner in db.execute(query)]
        return views


_QUERY = select(Job, User.username).join(User)


def _view(job: Job, owner: str) -> JobView:
    return JobView(job.id, owner, job.session_id, job.submission_time.timestamp(), epoch(job.end_time), 0.0,
                   encode(job_json(job, owner)))

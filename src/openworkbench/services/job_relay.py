"""Job events and cached rows across replicas: PostgreSQL NOTIFY in the committing transaction, LISTEN in every
replica.

A transaction that writes jobs or sessions sends ``NOTIFY owb_jobs, '<replica> j:<job id> s:<session id>:<user id>
...'`` (the ORM's after-flush hook, and the launch path's Core writes by ``notify``); PostgreSQL
delivers it when (and only if) the transaction commits, in commit order, to every listening connection. Each
replica's ``Relay`` thread listens on a connection of its own, skips its own notifications (its changes reached its
hub when it committed them), tells its caches that these rows changed (``Store.wrote``: the job list, the
history, the sessions' JSON drop them, as for a commit of its own), reads the named jobs (one query per batch)
and publishes them into its hub (services/job_events.py). Consumers read the store once after subscribing and
after ``EventsLost``, so a duplicate is harmless; a notification missed while the listening connection was down
is made good by telling
every subscriber ``EventsLost`` once it is back (``JobEvents.lost``): each reads the store again.

SQLite: one server, nothing to relay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from openworkbench.services.job_events import JobChange, JobEvents
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session

log = logging.getLogger(__name__)
CHANNEL = "owb_jobs"
PAYLOAD_IDS = 200  # items per notification: PostgreSQL's payload limit is 8000 bytes, an item at most ~30
RECONNECT_S = 1.0
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def notify(store: Store, conn: Any, replica_id: str, job_ids: Iterable[str]) -> None:
    """In the open transaction ``conn`` (a Connection or an ORM Session): tell the other replicas, on commit,
    that these jobs changed (the payload's first word: who changed them). Nothing on SQLite."""
    if store.is_sqlite:
        return
    send(conn, replica_id, [f"j:{job_id}" for job_id in job_ids])


def send(conn: Any, replica_id: str, items: list[str]) -> None:
    ids = items
    for start in range(0, len(ids), PAYLOAD_IDS):
        payload = " ".join([replica_id, *ids[start:start + PAYLOAD_IDS]])
        conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


class Relay:
    """The listener of one replica: other replicas' job changes into this replica's hub."""

    def __init__(self, store: Store, replica_id: str, hub: JobEvents,
                 read: Callable[[list[str]], list[JobChange]]) -> None:
        self.replica_id = replica_id
        self.store = store
        self.hub = hub
        self._read = read
        self._conninfo = make_url(store.url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-relay", daemon=True)
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self.relayed = 0  # changes published from other replicas (tests, docs)
        self.listeners: list[Callable[[list[JobChange]], None]] = []  # told of them too (the job monitor)
        if not store.is_sqlite:  # one server: nobody to tell (and SQLite has no pg_notify)
            store.after_flush(self._flushed)

    def _flushed(self, session: Any, objects: list[Any]) -> None:
        """Inside an ORM transaction: its written jobs and sessions, told to the other replicas on commit."""
        items = [f"j:{obj.id}" for obj in objects if isinstance(obj, Job)]
        items += [f"s:{obj.id}:{obj.user_id}" for obj in objects if isinstance(obj, Session)]
        if items:
            send(session.connection(), self.replica_id, items)

    def start(self) -> None:
        if self.store.is_sqlite:
            return
        self._connect()  # listening before the first request: nothing committed after start-up is missed
        self._thread.start()

    def _connect(self) -> bool:
        try:
            self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=2,
                                         application_name=f"openworkbench relay {self.replica_id}")
            self._conn.execute(f"LISTEN {CHANNEL}")
            return True
        except psycopg.Error as exc:
            log.warning("job relay: cannot listen for other replicas' job changes: %s", str(exc).strip())
            self._conn = None
            return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._conn is None:
                if self._stop.wait(RECONNECT_S) or not self._connect():
                    continue
                self.hub.lost()  # changes committed while away were not heard: every subscriber reads again
            try:
                assert self._conn is not None
                self._relay_some(self._conn)
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    log.warning("job relay: listening connection lost: %s", str(exc).strip())
                self._close()
            except Exception:  # the store failing to read the jobs, say: what was missed is made good as above
                log.exception("job relay failed; subscribers read the store again")
                self.hub.lost()

    def _relay_some(self, conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        """Wait up to 1 s for notifications, then take every one already there, and publish them together."""
        items: dict[str, None] = {}
        for note in conn.notifies(timeout=1.0, stop_after=1):
            self._take(note.payload, items)
        if not items:
            return
        for note in conn.notifies(timeout=0):  # the rest of a burst: one read for all of them
            self._take(note.payload, items)
        jobs = [item[2:] for item in items if item.startswith("j:")]
        sessions = [item[2:].split(":") for item in items if item.startswith("s:")]
        # The caches first: a reader woken by the event below must not find the row's old JSON.
        self.store.wrote([*(Job(id=job_id) for job_id in jobs),
                          *(Session(id=sid, user_id=int(uid)) for sid, uid in sessions)])
        if jobs:
            changes = self._read(jobs)
            self.relayed += len(changes)
            self.hub.publish(changes)
            for listener in self.listeners:
                listener(changes)

    def _take(self, payload: str, items: dict[str, None]) -> None:
        replica, _, rest = payload.partition(" ")
        if replica != self.replica_id:
            items.update(dict.fromkeys(rest.split()))

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3)
        self._close()

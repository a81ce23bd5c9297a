"""Sessions as ``get_session`` renders them, kept in memory so a read needs no store and no thread.

Only this server writes sessions, and every write it commits reaches ``written`` (the store's commit
hook), which drops what it touched. A reader fills the cache only if nothing was dropped while it read
the store (``generation``), so a fill can never bring back what a concurrent commit replaced.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openworkbench.sessions.api_json import session_json
from openworkbench.store.schema import Session

# Seconds an ended session stays in memory after it left the plain list (``sessions.expiry_hours`` after it
# ended), for ``removed_session_ids``; a list read loads no session that left longer ago (else every session
# a user ever had: the soak's find), and a poller's older ``timestamp`` is answered from the store.
REMOVED_HORIZON = 3600.0


@dataclass(frozen=True)
class View:
    owner: str
    created: float
    data: dict[str, Any]
    raw: bytes  # ``data`` as JSON, so a list is a join of bytes


def parse_ids(session_ids: str | None) -> list[str] | None:
    """``get_session``'s comma-separated ids; None when it asks for all the user's sessions."""
    return [item.strip() for item in session_ids.split(",")] if session_ids else None


def encode(value: Any) -> bytes:
    # The separators and escaping of Starlette's JSONResponse, so both paths answer the same bytes.
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


class SessionViews:
    def __init__(self, public_url: Callable[[str], str] = str) -> None:
        self.public_url = public_url
        self._views: dict[str, View] = {}
        self._lists: dict[str, tuple[str, ...]] = {}  # username -> all their session ids, oldest first
        self._listed: set[str] = set()  # ids in some list
        self._usernames: dict[int, str] = {}  # user id -> username, learnt from filled rows
        self._generation = 0
        self._lock = threading.Lock()
        # Server time of each session's last write, for get_session's ``timestamp`` deltas; a session not
        # written since the server started counts as changed when it started.
        self._changed: dict[str, float] = {}
        self._started = time.time()
        # Told what each commit wrote once its views are dropped (sessions/live.py: the homepage's long-poll).
        self.listeners: list[Callable[[list[Any]], None]] = []

    def held(self) -> int:
        """How many sessions memory holds (bound: those in their owners' lists, and ``REMOVED_HORIZON``)."""
        return len(self._views)

    def changed_at(self, session_id: str) -> float:
        return self._changed.get(session_id, self._started)

    def generation(self) -> int:
        """Read before a store read whose rows will be handed to ``fill``."""
        return self._generation

    def listing(self, username: str, ids: list[str] | None) -> list[View] | None:
        """The user's sessions (all, or those of ``ids``) oldest first, or None if any is not in memory."""
        wanted = self._lists.get(username) if ids is None else ids
        if wanted is None:
            return None
        found: dict[str, View] = {}
        for session_id in wanted:
            view = self._views.get(session_id)
            if view is None:
                return None
            if view.owner == username:  # another user's id is left out, as the store's query does
                found[session_id] = view
        if ids is None:
            return list(found.values())  # a whole list is kept oldest first already
        return sorted(found.values(), key=lambda view: view.created)

    def read(self, username: str, ids: list[str] | None,
             load: Callable[[], Sequence[tuple[Session, str]]] | None) -> list[View] | None:
        """Read-through: from memory, else the rows ``load`` reads from the store, kept for the next read
        (None on a miss without ``load``)."""
        found = self.listing(username, ids)
        if found is not None or load is None:
            return found
        generation = self._generation  # before the store is read: a commit meanwhile forbids keeping the rows
        return self.fill(username, load(), whole=ids is None, generation=generation)

    def fill(self, username: str, rows: Sequence[tuple[Session, str]], whole: bool, generation: int) -> list[View]:
        """Render the rows a store read returned; keep them unless a commit came in since ``generation``."""
        views = [_view(row, owner, self.public_url(row.url)) for row, owner in rows]
        with self._lock:
            if generation == self._generation:
                self._views.update((view.data["id"], view) for view in views)
                self._usernames.update((row.user_id, owner) for row, owner in rows)
                if whole:
                    self._lists[username] = ids = tuple(view.data["id"] for view in views)
                    self._listed.update(ids)
                    self._forget_others(username, set(ids))
        return views

    def _forget_others(self, username: str, kept: set[str]) -> None:
        """The user's sessions no longer in their list (they left it long ago) leave memory too."""
        gone = [key for key, view in self._views.items() if view.owner == username and key not in kept]
        for key in gone:
            del self._views[key]
            self._listed.discard(key)
            self._changed.pop(key, None)

    def written(self, objects: list[Any]) -> None:
        """The store's commit hook: forget every session a commit wrote, and the list a new one joins."""
        touched = [obj for obj in objects if obj is Session or isinstance(obj, Session)]
        if not touched:
            return
        self._drop(touched)
        for listener in self.listeners:  # after the drop: a woken reader must not find the replaced view
            listener(touched)

    def _drop(self, touched: list[Any]) -> None:
        now = time.time()
        with self._lock:
            self._generation += 1
            for obj in touched:
                if not isinstance(obj, Session):  # the class: a bulk UPDATE or DELETE of unknown rows
                    self._views, self._lists, self._listed = {}, {}, set()
                    self._changed, self._started = {}, now
                    return
                self._changed[obj.id] = now
                self._views.pop(obj.id, None)
                if obj.id not in self._listed:  # new: it joins its owner's list
                    owner = self._usernames.get(obj.user_id)
                    self._lists = {user: ids for user, ids in self._lists.items() if owner not in (None, user)}


def _view(row: Session, owner: str, url: str) -> View:
    data = session_json(row, owner, url)
    return View(owner, row.created.timestamp(), data, encode(data))

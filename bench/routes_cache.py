"""µs per proxied request spent on its two cache checks on the event loop: the sign-in's epoch and the route.

In-process, no HTTP, both databases (PostgreSQL: the throwaway server of scripts/with-postgres.sh). Three ways:
"before" (main before routes moved to the store: the auth epoch read and a dict look-up), "shared" (what the
proxy does: one read of both epochs, the route check reusing it, store/epochs.py) and "two reads" (the route
check reading the routes epoch on its own).

Usage: scripts/with-postgres.sh env PYTHONPATH=. .venv/bin/python -m bench.routes_cache
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from bench.auth_cache import on_each_store, per_call_us
from openworkbench.proxy import ProxyTarget, Route, RouteTable, Upstream
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.epoch import open_epoch
from openworkbench.store.epochs import open_epochs
from openworkbench.store.schema import Session


def _session(store: Store) -> str:
    user_id, session_id = Accounts(store).ensure_user("benchuser"), secrets.token_hex(4)
    with store.session() as db:
        db.add(Session(id=session_id, user_id=user_id, workbench="JupyterLab", name="s", project_id="p",
                       url=f"/s/p{session_id}/", state="running", status_detail="", cluster="Local", request={},
                       working_dir="/tmp", socket_path="/tmp/x.sock", state_dir="/tmp/x", secret="s",
                       suspend_manifest={}, executing=False))
    return session_id


def measure(url: str) -> dict[str, float]:
    store = Store(url)
    store.migrate()
    session_id, part = (sid := _session(store)), f"p{sid}"
    epochs = open_epochs(url)
    table = RouteTable(store, epochs.counter(1))
    table.add(Route(session_id, "benchuser", "running",
                    ProxyTarget(Upstream.unix("/tmp/x.sock", 0), f"/s/{part}/", False, {}, session_id)))
    assert table.get(part) is not None
    auth, old_routes = open_epoch(url), {f"/s/{part}/": object()}

    def shared() -> object:
        began = time.perf_counter()
        epochs.counter(0).current()
        return table.known_target(part, "benchuser", began)

    ways: dict[str, Callable[[], object]] = {
        "before": lambda: (auth.current(), old_routes.get(f"/s/{part}/")),
        "shared": shared,
        "two reads": lambda: (epochs.counter(0).current(), table.known_target(part, "benchuser")),
    }
    figures = {name: per_call_us(way, 2000) for name, way in ways.items()}
    auth.close()
    epochs.close()
    store.dispose()
    return figures


def main() -> None:
    on_each_store(measure)


if __name__ == "__main__":
    main()

"""µs per sign-in answered from the cache (its epoch check included) and per sign-in looked up in the store.

In-process, no HTTP: the two costs the auth cache trades. Both databases; PostgreSQL is the throwaway
server of scripts/with-postgres.sh (WORKBENCH_TEST_PG_URL).

Usage: scripts/with-postgres.sh env PYTHONPATH=. .venv/bin/python -m bench.auth_cache
"""

from __future__ import annotations

import os
import statistics
import tempfile
import timeit
from collections.abc import Callable

from openworkbench.auth.cache import PrincipalCache
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.epoch import open_epoch

ROUNDS = 5


def per_call_us(call: Callable[[], object], number: int) -> float:
    """The median over ROUNDS of the mean µs per call (timeit's own way, repeated)."""
    return statistics.median(t / number * 1e6 for t in timeit.repeat(call, number=number, repeat=ROUNDS))


def measure(url: str) -> dict[str, float]:
    store = Store(url)
    store.migrate()
    epoch = open_epoch(url)
    cached = Accounts(store, PrincipalCache(epoch))
    uncached = Accounts(store)
    header = f"Bearer {cached.generate_token('user', 'bench', 'benchuser')}"
    cached.authenticate(header)  # the cache is warm and last_used recent: no writes below
    assert cached.cached(header) is not None, "the cache did not keep the sign-in"
    figures = {
        "epoch check": per_call_us(epoch.current, 5000),
        "cache hit": per_call_us(lambda: cached.cached(header), 5000),
        "store look-up": per_call_us(lambda: uncached.authenticate(header), 500),
    }
    epoch.close()
    store.dispose()
    return figures


def on_each_store(measure: Callable[[str], dict[str, float]]) -> None:
    """``measure`` on a fresh SQLite store, and on PostgreSQL when WORKBENCH_TEST_PG_URL names one; printed."""
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/bench.db"}
        if os.environ.get("WORKBENCH_TEST_PG_URL"):
            urls["postgresql"] = os.environ["WORKBENCH_TEST_PG_URL"]
        for name, url in urls.items():
            figures = measure(url)
            print(f"{name:>10}: " + ", ".join(f"{k} {v:.1f} µs" for k, v in figures.items()))


def main() -> None:
    on_each_store(measure)


if __name__ == "__main__":
    main()

"""A server's real services and job monitor inside the test's own process, where what they hold can be seen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from openworkbench.api.app import Monitor
from openworkbench.config import Settings
from openworkbench.services.container import Services, build_services


@contextmanager
def running_services(data_dir: Path) -> Iterator[Services]:
    built = build_services(Settings(data_dir=data_dir, auth={"allowed_system_users": ["root"]}))
    monitor = Monitor(built)
    monitor.start()
    try:
        yield built
    finally:
        monitor.stop()
        built.close()

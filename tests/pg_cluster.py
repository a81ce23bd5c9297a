"""A PostgreSQL cluster of a test's own, which the test may stop and start (scripts/with-postgres.sh's shared
one must stay up for the other tests). On a Unix socket in a temp dir; as the postgres user when run as root.

    with PgCluster.create() as pg:      # initdb + start
        url = pg.url                    # SQLAlchemy URL of the postgres superuser's database
        pg.stop()                       # pg_ctl stop -m fast (or mode="immediate")
        pg.start()
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in p.split("/")[4].split(".")])
    if not found:
        pytest.skip("PostgreSQL's binaries are not installed (make system-deps)")
    return Path(found[-1])


@dataclass
class PgCluster:
    dir: Path
    bin: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@/postgres?host={self.dir}"

    @property
    def log_file(self) -> Path:
        return self.dir / "server.log"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        # The postgres user may not be able to enter the caller's working directory: run from /.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], cwd="/", capture_output=True, text=True, check=False)

    def _pg_ctl(self, *args: str) -> None:
        done = self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), *args)
        if done.returncode != 0:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed: {done.stdout}{done.stderr}{log[-2000:]}")

    def start(self) -> None:
        options = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c max_connections=100"
        self._pg_ctl("-w", "-l", str(self.log_file), "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def running(self) -> bool:
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "status").returncode == 0

    @classmethod
    @contextmanager
    def create(cls) -> Iterator[PgCluster]:
        """initdb and start a cluster; stopped (immediate) and removed after."""
        pg = cls(Path(tempfile.mkdtemp(prefix="owb-pg-own.")), pg_bin())
        pg.dir.chmod(0o755)
        if os.geteuid() == 0:
            shutil.chown(pg.dir, "postgres", "postgres")  # initdb refuses to run as root
        try:
            done = pg._run(str(pg.bin / "initdb"), "-D", str(pg.dir / "data"), "-U", "postgres", "-A", "trust",
                           "--no-sync")
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
            pg.start()
            yield pg
        finally:
            if pg.running():
                pg._run(str(pg.bin / "pg_ctl"), "-D", str(pg.dir / "data"), "-m", "immediate", "-w", "stop")
            shutil.rmtree(pg.dir, ignore_errors=True)

"""Retention of job output: a final job's output files are removed ``jobs.output_retention_days`` after it
ended. The store keeps the job's row (its history) and notes when the files went, so ``get_job_output``
can say so instead of streaming nothing.

The files sit in job directories the server created and owns (Local: under the data dir; Slurm: under the
cluster's ``output_dir``, mode 0711), while the files themselves may be the user's. A file is unlinked
through its directory's descriptor, opened without following a symlink and checked to be the server's,
so a user cannot point the removal elsewhere; unlink never follows the name's own symlink.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, select, update

from openworkbench.config import JobSettings
from openworkbench.errors import FileSystemError, InvalidState, PathMissing, StoreUnavailable
from openworkbench.safefs import paths
from openworkbench.store import Store
from openworkbench.store.schema import Job, utcnow

log = logging.getLogger(__name__)
BATCH = 500  # jobs per transaction of a purge
_JOBS = cast(Table, Job.__table__)


class Retention:
    def __init__(self, store: Store, settings: JobSettings) -> None:
        self.store = store
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="output-retention", daemon=True)

    def purge_once(self, now: datetime | None = None) -> int:
        """Remove the output of every job that ended more than the retention ago; return how many."""
        now = now or utcnow()
        cutoff = now - timedelta(days=self.settings.output_retention_days)
        query = (select(_JOBS.c.id, _JOBS.c.stdout_file, _JOBS.c.stderr_file)
                 .where(_JOBS.c.end_time < cutoff, _JOBS.c.output_purged.is_(None)))
        with self.store.transaction() as conn:
            rows = conn.execute(query).all()
        purged = 0
        for start in range(0, len(rows), BATCH):
            # A file that cannot go keeps its job unmarked: it is tried again at the next interval.
            done = [row.id for row in rows[start:start + BATCH]
                    if all(_remove(path) for path in (row.stdout_file, row.stderr_file) if path)]
            if done:
                with self.store.transaction() as conn:
                    conn.execute(update(_JOBS).where(_JOBS.c.id.in_(done)).values(output_purged=now))
                purged += len(done)
        return purged

    def require_output(self, job_id: str) -> None:
        """Refuse, saying why, to stream the output of a job whose files were removed."""
        with self.store.transaction() as conn:
            row = conn.execute(select(_JOBS.c.output_purged, _JOBS.c.end_time).where(_JOBS.c.id == job_id)).first()
        if row is None or row.output_purged is None:
            return
        raise InvalidState(
            f"the output of job '{job_id}' was removed on {row.output_purged:%Y-%m-%d %H:%M UTC}: output is kept "
            f"{self.settings.output_retention_days:g} days after a job ends (jobs.output_retention_days); "
            "the job itself is still listed by get_historical_session")

    # -- the background purge ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                if count := self.purge_once():
                    log.info("removed the output of %d job(s) older than %g days", count,
                             self.settings.output_retention_days)
            except StoreUnavailable:  # logged once by the store; the next interval tries again
                pass
            except Exception:  # one failed pass must not end retention
                log.exception("purging old job output failed")
            if self._stop.wait(self.settings.purge_interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _remove(path: str) -> bool:
    """Unlink ``path`` if its directory is the server's; True when the file is gone. The job's directory is
    opened without following a link (safefs), below its parent (the server's jobs directory)."""
    directory = os.path.dirname(path)
    try:
        with paths.opened_dir(directory, os.path.dirname(directory)) as fd:
            if os.fstat(fd).st_uid != os.geteuid():
                log.warning("not removing old output %s: its directory is not the server's", path)
                return False
        paths.remove_file(path, directory)
    except PathMissing:
        return True
    except FileSystemError as exc:
        log.warning("cannot remove old output %s: %s", path, exc.message)
        return False
    return True

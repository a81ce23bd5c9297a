"""Rows written straight into a store, for the API and scale measures (launching 10,000 jobs would take
minutes and measure launching, not reading). Jobs and sessions are in final states, as most rows of a
long-lived server are; their fields are those the services write."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from pathlib import Path

from openworkbench.models import JobSpec
from openworkbench.services.accounts import Accounts
from openworkbench.store import Store
from openworkbench.store.schema import Job, Session, utcnow

JUPYTERLAB = "21f2ed72"


def store_url(data_dir: Path) -> str:
    """The store ``workbench serve --data-dir`` opens."""
    return f"sqlite:///{data_dir / 'workbench.db'}"


def seed(data_dir: Path, users: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Create the store; give each user (name -> (sessions, jobs)) its rows. Returns session ids per user."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = Store(store_url(data_dir))
    store.migrate()
    accounts = Accounts(store)
    ids: dict[str, list[str]] = {}
    base = utcnow() - timedelta(days=30)
    for name, (sessions, jobs) in users.items():
        user_id = accounts.ensure_user(name)
        code = hashlib.sha256(name.encode()).hexdigest()[:5]
        ids[name] = [secrets.token_hex(4) for _ in range(sessions)]
        with store.session() as db:
            for n, session_id in enumerate(ids[name]):
                when = base + timedelta(minutes=n)
                db.add(Session(
                    id=session_id, user_id=user_id, workbench="JupyterLab", name=f"lab {n}", project_id=JUPYTERLAB,
                    url=f"/s/{code}{JUPYTERLAB}{session_id}/", state="finished", status_detail="", cluster="Local",
                    request={"workbench": "JupyterLab", "open_file": None, "launch_parameters": {},
                             "start_hooks": [], "stop_hooks": [], "environment": []},
                    working_dir=f"/home/{name}", socket_path=f"/tmp/openworkbench-sessions/1001/{session_id}.sock",
                    state_dir=f"/home/{name}/.local/share/openworkbench/sessions/{session_id}",
                    secret=secrets.token_urlsafe(32), suspend_manifest={}, executing=False,
                    created=when, last_state_updated=when, last_used=when))
            for n in range(jobs):
                when = base + timedelta(seconds=n)
                spec = JobSpec.model_validate({"name": f"job {n}", "exe": "/bin/true", "user": name,
                                               "cluster": "Local", "tags": ["bench"]})
                job_id = secrets.token_hex(8)
                db.add(Job(
                    id=job_id, user_id=user_id, session_id=ids[name][n] if n < sessions else None, cluster="Local",
                    name=spec.name, spec=spec.model_dump(mode="json"), status="Finished", status_message="",
                    exit_code=0, pid=10000 + n, host="localhost", stdout_file=f"/tmp/jobs/{job_id}.stdout",
                    stderr_file=f"/tmp/jobs/{job_id}.stderr", cluster_state={}, submission_time=when,
                    last_update_time=when))
    store.dispose()
    return ids


# The seeded sessions ended long ago; a server keeps them in the plain get_session list as a long-lived
# server's users would see theirs (sessions.expiry_hours), so the measures list what they seeded.
KEEP_LISTED = "expiry_hours = 876000\n"
LISTED_CONFIG = "[sessions]\n" + KEEP_LISTED

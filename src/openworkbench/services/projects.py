"""A user's projects, as the product's WorkbenchProject: a session's working directory is its project.

Nothing is stored for them: a project is the directory one or more of the user's sessions worked in,
its id a short hash of the owner and the path (stable across restarts and databases).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from sqlalchemy import select

from openworkbench.errors import InvalidParameter
from openworkbench.sessions.api_json import millis
from openworkbench.store import Store
from openworkbench.store.schema import Session, User

# What clients send for "no project" (the product's "none", and the fixed ids of each IDE's none-project).
NO_PROJECT = frozenset({"", "none"})


def project_id(owner: str, path: str) -> str:
    return hashlib.sha256(f"{owner}\0{path}".encode()).hexdigest()[:8]


def list_projects(store: Store, owner: str) -> list[dict[str, Any]]:
    """The owner's projects, most recently used first."""
    query = select(Session).join(User).where(User.username == owner).order_by(Session.created)
    with store.session() as db:
        rows = list(db.scalars(query))
    projects: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = projects.setdefault(row.working_dir, _new(owner, row))
        entry["editors"] = sorted({*entry["editors"], row.workbench})
        if millis(row.last_used) >= entry["last_used"]:
            entry.update(last_used=millis(row.last_used), last_session_id=row.id, last_editor=row.workbench)
    return sorted(projects.values(), key=lambda item: item["last_used"], reverse=True)


def _new(owner: str, row: Session) -> dict[str, Any]:
    name = os.path.basename(row.working_dir.rstrip("/")) or "/"
    return {
        "id": project_id(owner, row.working_dir), "name": name, "path": row.working_dir,
        "project_paths": [row.working_dir], "canonical_path": row.working_dir, "display_name": name,
        "last_session_id": row.id, "last_editor": row.workbench, "editors": [row.workbench],
        "last_used": millis(row.last_used), "created": millis(row.created), "owner": owner,
    }


def project_path(store: Store, owner: str, wanted: str) -> str:
    """The directory of the owner's project ``wanted``, or InvalidParameter naming it."""
    for project in list_projects(store, owner):
        if project["id"] == wanted:
            return str(project["path"])
    raise InvalidParameter(f"project_id '{wanted}': user '{owner}' has no such project (get_session with "
                           "include_projects lists them)")

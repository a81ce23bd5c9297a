"""A stored session as the API's WorkbenchSession (snake_case, times in epoch milliseconds)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from openworkbench.sessions.states import RUNNING, SessionState
from openworkbench.store.schema import Session


def millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def session_json(row: Session, owner: str, url: str | None = None) -> dict[str, Any]:
    """``url``: the public URL when it is not the stored prefix (per-session origins)."""
    request = row.request
    params = request.get("launch_parameters") or {}
    return {
        "id": row.id,
        "name": row.name,
        "url": url or row.url,
        "user": owner,
        "workbench": row.workbench,
        "label": row.name,
        "display_name": row.name,
        "activity_state": row.state,
        "status_detail": row.status_detail,
        "created": millis(row.created),
        "last_state_updated": millis(row.last_state_updated),
        "last_used": millis(row.last_used),
        "project": None,
        "project_id": row.project_id,
        "running": row.state in RUNNING,
        "executing": row.executing and row.state in RUNNING,
        "working_dir": row.working_dir,
        "save_prompt_required": False,
        "suspend_size": row.suspend_size if row.state == SessionState.SUSPENDED else 0,
        "r_version": "",
        "r_version_label": "",
        "r_version_home": "",
        "job_id": row.job_id,
        "launch_parameters": {
            "name": params.get("name") or row.name,
            "cluster": row.cluster,
            "placement_constraints": params.get("placement_constraints", []),
            "resource_limits": params.get("resource_limits", []),
            "queues": params.get("queues", []),
            "container_image": params.get("container_image", ""),
            "default_image": params.get("default_image", ""),
            "container_images": params.get("container_images", [""]),
        },
    }


def select_fields(session: dict[str, Any], fields: list[str] | None) -> dict[str, Any]:
    if not fields:
        return session
    return {key: value for key, value in session.items() if key in fields}

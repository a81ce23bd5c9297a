"""A stored job as the API's WorkbenchJob (camelCase, as the Job Launcher writes it)."""

from __future__ import annotations

from typing import Any

from openworkbench.services.accounts import isoformat
from openworkbench.store.schema import Job


def job_json(job: Job, owner: str) -> dict[str, Any]:
    spec = job.spec
    return {
        "id": job.id,
        "name": job.name,
        "cluster": job.cluster,
        "user": owner,
        "status": job.status,
        "statusMessage": job.status_message,
        "statusCode": _status_code(job),
        "exitCode": job.exit_code,
        "pid": job.pid,
        "host": job.host,
        "exe": spec.get("exe") or "",
        "command": spec.get("command") or "",
        "args": spec.get("args", []),
        "stdin": spec.get("stdin", ""),
        "stdoutFile": job.stdout_file,
        "stderrFile": job.stderr_file,
        "workingDirectory": spec.get("working_directory") or "",
        "environment": _redacted(spec.get("environment", []), spec.get("metadata", {}).get("redact", [])),
        "tags": spec.get("tags", []),
        "queues": spec.get("queues", []),
        "placementConstraints": spec.get("placement_constraints", []),
        "resourceLimits": [
            {"type": item["type"], "value": item["value"]} for item in spec.get("resource_limits", [])
        ],
        "config": spec.get("config", []),
        "mounts": spec.get("mounts", []),
        "exposedPorts": spec.get("exposed_ports", []),
        "container": _container(spec),
        "metadata": spec.get("metadata", {}),
        "resourceProfile": spec.get("resource_profile") or "custom",
        "group": spec.get("group") or "",
        "sessionId": job.session_id,
        "submissionTime": isoformat(job.submission_time),
        "lastUpdateTime": isoformat(job.last_update_time),
        **({"runningTimestamp": isoformat(job.running_time)} if job.running_time else {}),
        **({"terminatedTime": isoformat(job.end_time)} if job.end_time else {}),
    }


def _container(spec: dict[str, Any]) -> dict[str, Any] | None:
    given = dict(spec.get("container") or {})
    image = given.get("image") or spec.get("container_image")
    if image:
        given["image"] = image
    return {k: v for k, v in given.items() if v is not None} or None


def _status_code(job: Job) -> str:
    """The exit code as the product's string statusCode, once known."""
    return "" if job.exit_code is None else str(job.exit_code)


def _redacted(environment: list[dict[str, str]], secret_names: list[str]) -> list[dict[str, str]]:
    """A session's secret stays with the proxy: its value is never shown, even to the owner."""
    return [{**item, "value": "********"} if item.get("name") in secret_names else item for item in environment]


def outcome(job: dict[str, Any]) -> str:
    """A job's end in words, for a session's status_detail and the log: 'Failed with exit code 1: ...'."""
    status, code, message = job.get("status", "?"), job.get("exitCode"), job.get("statusMessage") or ""
    text = str(status) + (f" with exit code {code}" if code is not None else "")
    return text + (f": {message}" if message else "")

"""``workbench jobs launch|list|show|output|stop``: jobs on a server, over the HTTP API."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from openworkbench.cli.client_support import Ended, Output, client_command, key_values, when

if TYPE_CHECKING:
    from openworkbench.client import Client

JOB_COLUMNS = ("id", "name", "status", "exit", "cluster", "user", "submitted")
DETAIL = ("id", "name", "status", "statusMessage", "exitCode", "cluster", "user", "host", "pid", "exe", "command",
          "args", "workingDirectory", "tags", "queues", "resourceLimits", "stdoutFile", "stderrFile",
          "submissionTime", "lastUpdateTime", "sessionId")


def job_row(item: dict[str, Any]) -> list[Any]:
    return [item["id"], item["name"], item["status"], item["exitCode"], item["cluster"], item["user"],
            when(item["submissionTime"])]


def _compact(value: Any) -> Any:
    # Lists of {type, value} or {name, value} read best as type=value.
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [f"{v.get('type', v.get('name'))}={v.get('value')}" for v in value]
    return value


@click.group()
def jobs() -> None:
    """Jobs on a server: launch, list, show, output, stop."""


@jobs.command("launch", context_settings={"ignore_unknown_options": True})
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
@click.option("--command", "shell_command", help="Run this with /bin/sh -c instead of EXE ARGS")
@click.option("--name", help="The job's name (default: the program's name)")
@click.option("--cluster", help="The cluster (default: the server's first)")
@click.option("--user", help="Launch for another user (a super-admin token)")
@click.option("--workdir", help="Working directory (default: the home directory)")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable; repeatable")
@click.option("--limit", "limits", multiple=True, metavar="TYPE=VALUE",
              help="A resource limit: cpuCount, memory (MB), cpuTime (s); repeatable")
@click.option("--queue", "queues", multiple=True, help="A queue; repeatable")
@click.option("--tag", "tags", multiple=True, help="A tag; repeatable")
@click.option("--wait", is_flag=True, help="Block until the job ends; exit 5 unless it finished with status 0")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after this many seconds (exit 6)")
@client_command
def jobs_launch(client: Client, out: Output, argv: tuple[str, ...], shell_command: str | None, name: str | None,
                cluster: str | None, user: str | None, workdir: str | None, env: tuple[str, ...],
                limits: tuple[str, ...], queues: tuple[str, ...], tags: tuple[str, ...], wait: bool,
                timeout: float | None) -> None:
    """Launch a job: EXE [ARGS]... (put -- before them), or --command "shell text"."""
    if bool(argv) == bool(shell_command):
        raise click.UsageError("give either EXE [ARGS]... or --command, not both and not neither")
    spec: dict[str, Any] = {"name": name or (os.path.basename(argv[0]) if argv else "command")}
    spec.update({"exe": argv[0], "args": list(argv[1:])} if argv else {"command": shell_command})
    optional = {"cluster": cluster, "user": user, "working_directory": workdir, "queues": list(queues),
                "tags": list(tags), "environment": key_values(env, "--env"),
                "resource_limits": [{"type": k, "value": v} for k, v in key_values(limits, "--limit").items()]}
    spec.update({key: value for key, value in optional.items() if value})
    job = client.launch_job(spec)
    if wait:
        job = client.wait_job(job["id"], user=user, timeout=timeout)
    if out.json:
        out.data(job)
    else:
        out.table(JOB_COLUMNS, [job_row(job)])
    if wait and (job["status"] != "Finished" or job["exitCode"] != 0):
        why = f": {job['statusMessage']}" if job["statusMessage"] else ""
        raise Ended(f"job {job['id']} ended {job['status']} (exit code {job['exitCode']}){why}")


@jobs.command("list")
@click.option("--user", help="Another user's jobs (an admin-level token)")
@client_command
def jobs_list(client: Client, out: Output, user: str | None) -> None:
    """List jobs, oldest first (sessions' own jobs included)."""
    items = client.get_session(user=user, include_all_jobs=True).get("jobs", [])
    if out.json:
        out.data(items)
    else:
        out.table(JOB_COLUMNS, [job_row(item) for item in items])


@jobs.command("show")
@click.argument("job_id")
@click.option("--user", help="Another user's job (an admin-level token)")
@client_command
def jobs_show(client: Client, out: Output, job_id: str, user: str | None) -> None:
    """Show one job in full."""
    job = client.job(job_id, user)
    if out.json:
        out.data(job)
    else:
        out.table(("field", "value"), [[key, _compact(job.get(key))] for key in DETAIL])


@jobs.command("output")
@click.argument("job_id")
@click.option("--user", help="Another user's job (an admin-level token)")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends")
@client_command
def jobs_output(client: Client, out: Output, job_id: str, user: str | None, follow: bool) -> None:
    """Print a job's output: its stdout on stdout, its stderr on stderr (--json: the NDJSON chunks).

    Without --follow, what the job has written so far."""
    for chunk in client.get_job_output(job_id, user, follow=follow):
        if out.json:
            click.echo(json.dumps(chunk))
            continue
        stream = sys.stderr if chunk.get("outputType") == "stderr" else sys.stdout
        stream.write(chunk.get("output", ""))
        stream.flush()


@jobs.command("stop")
@click.argument("job_id")
@click.option("--force", is_flag=True, help="Kill (SIGKILL) instead of SIGTERM")
@client_command
def jobs_stop(client: Client, out: Output, job_id: str, force: bool) -> None:
    """Stop a job (SIGTERM, or SIGKILL with --force; a pending job is canceled)."""
    client.stop_job(job_id, force_quit=force)
    if out.json:
        out.data({"id": job_id, "stopped": True})
    else:
        out.line(f"job {job_id}: asked to {'kill' if force else 'stop'}")

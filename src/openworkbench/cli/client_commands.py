"""The client commands of ``workbench``: sessions, jobs, compute-envs, whoami, version, over the HTTP API.

They reach a server as any user does (``WORKBENCH_SERVER`` / ``WORKBENCH_API_KEY``, or ``--server`` /
``--api-key``), through ``openworkbench.client``; the exit codes are in cli/client_support.py and docs/cli.md.
"""

from __future__ import annotations

import contextlib
import os
import webbrowser
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from openworkbench import __version__
from openworkbench.cli.client_jobs import jobs
from openworkbench.cli.client_support import SERVER_ENV, Ended, Output, client_command, key_values, when

if TYPE_CHECKING:
    from openworkbench.client import Client

IDE_ALIASES = {"jupyterlab": "JupyterLab", "jupyter": "JupyterLab", "lab": "JupyterLab",
               "notebook": "Jupyter Notebook", "jupyternotebook": "Jupyter Notebook",
               "vscode": "VS Code", "code": "VS Code", "rstudio": "RStudio"}
SESSION_COLUMNS = ("id", "name", "ide", "state", "user", "created", "url")
wait_option = click.option("--wait", is_flag=True, help="Block until running (or ended); exit 5 if it ended")
timeout_option = click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after this many "
                              "seconds (exit 6)")


def session_row(client: Client, item: dict[str, Any]) -> list[Any]:
    return [item["id"], item["name"], item["workbench"], item["activity_state"], item["user"],
            when(item["created"]), client.url(item["url"])]


@contextlib.contextmanager
def progress(out: Output, what: str) -> Iterator[Any]:
    """A live spinner naming the state on a terminal; elsewhere one line per new state, on stderr."""
    seen: list[str] = []

    def show(state: str, detail: str = "") -> None:
        text = f"{what}: {state}" + (f" ({detail})" if detail else "")
        if status is not None:
            status.update(text)
        elif not seen or seen[-1] != text:
            out.note(text)
        seen.append(text)

    if out.progress.is_terminal:
        with out.progress.status(f"{what}: ...") as status:
            yield show
    else:
        status = None
        yield show


def wait_session(client: Client, out: Output, session_id: str, want: str, timeout: float | None,
                 user: str | None = None) -> dict[str, Any]:
    with progress(out, f"session {session_id}") as show:
        session = client.wait_session(session_id, (want,), user=user, timeout=timeout,
                                      on_state=lambda s: show(s["activity_state"], s["status_detail"]))
    if session["activity_state"] != want:
        detail = f": {session['status_detail']}" if session["status_detail"] else ""
        raise Ended(f"session {session_id} ended {session['activity_state']}{detail}")
    return session


def show_session(client: Client, out: Output, session: dict[str, Any]) -> None:
    if out.json:
        out.data({**session, "address": client.url(session["url"])})
    else:
        out.table(SESSION_COLUMNS, [session_row(client, session)])


@click.group()
def sessions() -> None:
    """IDE sessions on a server: list, launch, stop, suspend, resume, open."""


@sessions.command("list")
@click.option("--user", help="Another user's sessions (an admin-level token)")
@client_command
def sessions_list(client: Client, out: Output, user: str | None) -> None:
    """List sessions, newest last."""
    items = client.get_session(user=user)["sessions"]
    if out.json:
        out.data(items)
    else:
        out.table(SESSION_COLUMNS, [session_row(client, item) for item in items])


@sessions.command("launch")
@click.argument("ide")
@click.option("--name", help="The session's name")
@click.option("--cluster", help="The cluster to run on (default: the IDE's default cluster)")
@click.option("--working-dir", help="The directory to start in (default: the home directory)")
@click.option("--user", help="Launch for another user (a super-admin token)")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="An environment variable; repeatable")
@click.option("--limit", "limits", multiple=True, metavar="TYPE=VALUE", help="A resource limit: cpuCount, memory "
              "(MB), cpuTime (s); repeatable")
@wait_option
@timeout_option
@client_command
def sessions_launch(client: Client, out: Output, ide: str, name: str | None, cluster: str | None,
                    working_dir: str | None, user: str | None, env: tuple[str, ...], limits: tuple[str, ...],
                    wait: bool, timeout: float | None) -> None:
    """Launch an IDE session: JupyterLab, "Jupyter Notebook", "VS Code" or RStudio (jupyterlab, notebook,
    vscode, rstudio also work). Prints its id and address at once, or once running with --wait."""
    params: dict[str, Any] = {}
    if cluster or limits:
        params = {"cluster": cluster or "",
                  "resource_limits": [{"type": k, "value": v} for k, v in key_values(limits, "--limit").items()]}
    workbench = IDE_ALIASES.get(ide.lower().replace(" ", "").replace("-", ""), ide)
    address = client.launch_session(workbench, username=user, name=name, working_directory=working_dir,
                                    launch_parameters=params or None, environment=key_values(env, "--env") or None)
    if wait:
        show_session(client, out, wait_session(client, out, address["id"], "running", timeout, user))
    elif out.json:
        out.data({**address, "address": client.url(address["url"])})
    else:
        out.line(f"launched session {address['id']} ({workbench}): {client.url(address['url'])}")


def _stop(client: Client, out: Output, ids: tuple[str, ...], force: bool, suspend: bool, wait: bool,
          timeout: float | None) -> None:
    client.stop_session(ids, force_quit=force, suspend_session=suspend)
    want, verb = ("suspended", "suspend") if suspend else (("killed", "kill") if force else ("finished", "stop"))
    ended = {sid: wait_session(client, out, sid, want, timeout) for sid in ids} if wait else {}
    if out.json:
        out.data({sid: ended[sid]["activity_state"] if wait else ("suspending" if suspend else "shutting_down")
                  for sid in ids})
    else:
        for sid in ids:
            out.line(f"session {sid}: {ended[sid]['activity_state'] if wait else 'asked to ' + verb}")


@sessions.command("stop")
@click.argument("session_ids", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Kill at once instead of shutting down cleanly")
@wait_option
@timeout_option
@client_command
def sessions_stop(client: Client, out: Output, session_ids: tuple[str, ...], force: bool, wait: bool,
                  timeout: float | None) -> None:
    """Stop sessions (their stop hooks run)."""
    _stop(client, out, session_ids, force, False, wait, timeout)


@sessions.command("suspend")
@click.argument("session_ids", nargs=-1, required=True)
@wait_option
@timeout_option
@client_command
def sessions_suspend(client: Client, out: Output, session_ids: tuple[str, ...], wait: bool,
                     timeout: float | None) -> None:
    """Suspend sessions: their state is kept for `sessions resume`."""
    _stop(client, out, session_ids, False, True, wait, timeout)


@sessions.command("resume")
@click.argument("session_id")
@click.option("--user", help="The owner, when it is another user (a super-admin token)")
@wait_option
@timeout_option
@client_command
def sessions_resume(client: Client, out: Output, session_id: str, user: str | None, wait: bool,
                    timeout: float | None) -> None:
    """Resume a suspended session."""
    address = client.resume_session(session_id, username=user)
    if wait:
        show_session(client, out, wait_session(client, out, session_id, "running", timeout, user))
    elif out.json:
        out.data({**address, "address": client.url(address["url"])})
    else:
        out.line(f"resuming session {session_id}: {client.url(address['url'])}")


@sessions.command("open")
@click.argument("session_id")
@click.option("--user", help="Another user's session (an admin-level token)")
@click.option("--browser", is_flag=True, help="Also open it in the web browser, if there is one")
@client_command
def sessions_open(client: Client, out: Output, session_id: str, user: str | None, browser: bool) -> None:
    """Print the session's address (the browser signs in with your API token there)."""
    session = client.session(session_id, user)
    address = client.url(session["url"])
    if session["activity_state"] in ("suspended", "failed", "killed", "finished", "canceled"):
        out.note(f"note: session {session_id} is {session['activity_state']}: "
                 + ("resume it first" if session["activity_state"] == "suspended" else "it cannot be opened"))
    if out.json:
        out.data({"id": session_id, "address": address, "state": session["activity_state"]})
    else:
        out.line(address)
    if browser and not webbrowser.open(address):
        out.note("no web browser found here: open the address above yourself")


@click.command("compute-envs")
@click.option("--user", help="For another user (an admin-level token)")
@client_command
def compute_envs(client: Client, out: Output, user: str | None) -> None:
    """Clusters (limits, queues, constraints) and IDEs of the server."""
    envs = client.get_compute_envs(user)
    if out.json:
        out.data(envs)
        return
    clusters = [[c["name"], c["type"], c.get("queues", []), c.get("placementConstraints", []),
                 [f"{lim['type']}<={lim['maxValue']}" for lim in c.get("resourceLimits", []) if lim.get("maxValue")]]
                for c in envs["clusters"]]
    out.table(("cluster", "type", "queues", "constraints", "limits"), clusters, title="Clusters")
    ides = [[name, ide.get("lang", {}).get("available"), ide.get("default_cluster")]
            for name, ide in envs["workbenches"].items()]
    out.table(("IDE", "available", "default cluster"), ides, title="IDEs")


@click.command()
@client_command
def whoami(client: Client, out: Output) -> None:
    """The user and token kind your credentials stand for."""
    me = client.whoami()
    if out.json:
        out.data({**me, "server": client.server})
    else:
        out.line(f"{me['username']} ({me['kind']} token) on {client.server}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts")
@click.option("--api-key", envvar="WORKBENCH_API_KEY", metavar="TOKEN", help="API token [env WORKBENCH_API_KEY]")
@click.option("--server", envvar=SERVER_ENV, metavar="URL", help=f"Server URL [env {SERVER_ENV}]")
@click.pass_context
def version(ctx: click.Context, server: str | None, api_key: str | None, as_json: bool) -> None:
    """This program's version, and the server's when one is given."""
    if not (server or os.environ.get(SERVER_ENV)):
        click.echo(f'{{"client": "{__version__}"}}' if as_json else f"workbench {__version__}")
        return
    ctx.invoke(_server_version, server=server, api_key=api_key, as_json=as_json)


@click.command()
@client_command
def _server_version(client: Client, out: Output) -> None:
    info = client.version()["version"]
    number = f"{info['major']}.{info['minor']}.{info['patch']}"
    if out.json:
        out.data({"client": __version__, "server": {**info, "version": number, "url": client.server}})
    else:
        out.line(f"workbench {__version__}\nserver {number} ({info.get('release_name', '')}) at {client.server}")


def register(main: click.Group) -> None:
    for command in (sessions, jobs, compute_envs, whoami, version):
        main.add_command(command)


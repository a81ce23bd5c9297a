"""``workbench``: serve the API, and manage users and API tokens on the server host.

Token and user commands work on the store directly, like the product's root-only
``rstudio-server generate-api-token``: whoever can read the data directory is the operator.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from openworkbench.errors import InvalidParameter, WorkbenchError

# The settings and the store (pydantic, SQLAlchemy, alembic, aiohttp: ~1 s of imports) are imported by the commands
# that use them: a client command (`workbench sessions list`) talks HTTP only and starts in a fraction of that.
if TYPE_CHECKING:
    from openworkbench.config import Settings
    from openworkbench.services.accounts import Accounts

F = TypeVar("F", bound=Callable[..., Any])


def store_options(func: F) -> F:
    """--data-dir and --config, shared by every command that opens the store."""
    func = click.option("--config", "config_file", type=click.Path(dir_okay=False), help="workbench.toml")(func)
    func = click.option("--data-dir", type=click.Path(file_okay=False), help="Where the server keeps its state")(func)
    return func


def fail_cleanly(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WorkbenchError as exc:
            click.echo(f"workbench: error: {exc.message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _settings(data_dir: str | None, config_file: str | None, **server: Any) -> Settings:
    from openworkbench.config import load_settings

    return load_settings(config_file, data_dir=data_dir, **server)


def _accounts(data_dir: str | None, config_file: str | None) -> Accounts:
    from openworkbench.services.accounts import Accounts
    from openworkbench.services.container import open_store

    return Accounts(open_store(_settings(data_dir, config_file)))


@click.group()
def main() -> None:
    """Open Workbench: the Posit Workbench API for IDE sessions and jobs."""


@main.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="Port to listen on (default 8787)")
@store_options
@fail_cleanly
def serve(host: str | None, port: int | None, data_dir: str | None, config_file: str | None) -> None:
    """Run the API server."""
    import uvicorn

    from openworkbench import allocator, memtrace
    from openworkbench.api.app import create_app
    from openworkbench.api.http_protocol import protocol_class
    from openworkbench.logs import announcer, log_config
    from openworkbench.store.serve_lock import hold_serve_lock

    server: dict[str, Any] = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    # Flags override single keys of [server]; settings sources are deep-merged.
    settings = _settings(data_dir, config_file, server=server or None)
    hold_serve_lock(settings.database_url)  # SQLite: a second server on the store exits here (store/serve_lock.py)
    allocator.limit_arenas(settings.server.malloc_arena_max)  # before any thread starts
    memtrace.install(settings.data_dir)  # OWB_TRACEMALLOC only: off by default (docs/reliability.md)
    app = create_app(settings)
    address = f"http://{settings.server.host}:{settings.server.port}"
    say = announcer(settings.server.log_format)  # with JSON logs, these lines are JSON too
    say(f"Open Workbench serving on {address} (data in {settings.data_dir.resolve()})")
    say(
        "Create a token with: workbench generate-api-token user <token-name> <username>"
        + (f" --data-dir {data_dir}" if data_dir else ""),
    )
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level="info",
        log_config=log_config(settings.server.log_format),
        access_log=False,
        # Output followers of long jobs must not hold a shutdown hostage.
        timeout_graceful_shutdown=3,
        # Limits on what any client, signed in or not, can hold (docs/security.md, "Limits before work").
        http=protocol_class(settings.server),
        timeout_keep_alive=settings.server.keep_alive_s,
        limit_concurrency=settings.server.max_connections,
        proxy_headers=False,  # the app believes X-Forwarded-* from server.trusted_proxies only (api/forwarded.py)
    )


@main.command("generate-api-token")
@click.argument("kind")
@click.argument("name")
@click.argument("username")
@store_options
@fail_cleanly
def generate_api_token(kind: str, name: str, username: str, data_dir: str | None, config_file: str | None) -> None:
    """Create an API token of KIND named NAME for USERNAME and print it (only this once).

    KIND is user, admin, admin-readonly, super-admin or super-admin-readonly.
    """
    click.echo(_accounts(data_dir, config_file).generate_token(kind, name, username))


@main.command("revoke-api-token")
@click.argument("name")
@store_options
@fail_cleanly
def revoke_api_token(name: str, data_dir: str | None, config_file: str | None) -> None:
    """Revoke the token named NAME; it stops working at once."""
    _accounts(data_dir, config_file).revoke_token(name)
    click.echo(f"revoked token '{name}'", err=True)


@main.command("list-api-tokens")
@store_options
@fail_cleanly
def list_api_tokens(data_dir: str | None, config_file: str | None) -> None:
    """List tokens: name, kind, user, created, last used (never the token)."""
    from openworkbench.services.accounts import isoformat

    rows = [
        [t.name, t.kind, t.username, isoformat(t.created) or "", isoformat(t.last_used) or "never"]
        for t in _accounts(data_dir, config_file).list_tokens()
    ]
    _print_table(["name", "kind", "user", "created", "last used"], rows)


@main.group()
def user() -> None:
    """Manage Workbench users."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May use admin tokens")
@click.option("--super-admin", is_flag=True, help="May use super-admin tokens (act on behalf of others)")
@store_options
@fail_cleanly
def user_add(name: str, admin: bool, super_admin: bool, data_dir: str | None, config_file: str | None) -> None:
    """Register user NAME."""
    _accounts(data_dir, config_file).add_user(name, admin=admin, super_admin=super_admin)
    click.echo(f"added user '{name}'", err=True)


@user.command("list")
@store_options
@fail_cleanly
def user_list(data_dir: str | None, config_file: str | None) -> None:
    """List users."""
    headers = ["username", "status", "admin", "super-admin", "uid", "created", "last sign-in"]
    rows = [
        [
            row["username"], row["status"], _yes(row["isAdmin"]), _yes(row["isSuperAdmin"]),
            str(row["uid"]) if row["uid"] is not None else "-", row["created"], row["lastSignIn"] or "never",
        ]
        for row in _accounts(data_dir, config_file).list_users()
    ]
    _print_table(headers, rows)


@user.command("disable")
@click.argument("name")
@store_options
@fail_cleanly
def user_disable(name: str, data_dir: str | None, config_file: str | None) -> None:
    """Disable user NAME: their tokens stop working at once."""
    _accounts(data_dir, config_file).disable_user(name)
    click.echo(f"disabled user '{name}'", err=True)


@user.command("passwd")
@click.argument("name")
@store_options
@fail_cleanly
def user_passwd(name: str, data_dir: str | None, config_file: str | None) -> None:
    """Set the local password of user NAME (registering NAME if new), for the sign-in page.

    Typed twice at the terminal; from a pipe, the first line of standard input. Never an argument: the command
    line of every process is visible to every user. Stored as an argon2id hash; NAME's password sign-ins end.
    """
    from openworkbench.services.accounts import Accounts, check_username
    from openworkbench.services.container import open_store
    from openworkbench.services.run_as import RunAsPolicy

    settings = _settings(data_dir, config_file)
    check_username(name)
    RunAsPolicy.load(settings.auth.allowed_system_users).check(name)  # no web password for root or daemon
    from openworkbench.auth.passwords import hash_password  # argon2: only this command needs it

    password = _read_password()
    Accounts(open_store(settings)).set_password_hash(name, hash_password(password))
    click.echo(f"set the local password of '{name}'", err=True)
    if "local" not in settings.auth.backends():
        click.echo('warning: the server does not check local passwords: add "local" to auth.password_backends',
                   err=True)


@main.group()
def store() -> None:
    """Look after the server's database."""


@store.command("check")
@click.option("--settle-s", type=float, default=60.0, show_default=True,
              help="Rows a running server holds in-between count once this old")
@store_options
@fail_cleanly
def store_check(settle_s: float, data_dir: str | None, config_file: str | None) -> None:
    """Check the store's integrity: the database's own checks, then the server's invariants.

    Prints each problem on a line and exits 1 if there is any; prints "store ok" and exits 0 otherwise.
    """
    from openworkbench.services.container import open_store
    from openworkbench.store.check import check_store

    problems = check_store(open_store(_settings(data_dir, config_file)), settle_s)
    for problem in problems:
        click.echo(problem)
    if problems:
        click.echo(f"workbench: store check found {len(problems)} problem(s)", err=True)
        sys.exit(1)
    click.echo("store ok")


def _read_password() -> str:
    if sys.stdin.isatty():
        entered: str = click.prompt("New password", hide_input=True, confirmation_prompt="Repeat the password")
        return entered
    line = sys.stdin.readline()
    if not line:
        raise InvalidParameter("no password on standard input (the first line is the password)")
    return line.removesuffix("\n").removesuffix("\r")


def _print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Names exactly as stored: Text cells are never read as markup, and nothing is cut."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(*headers, box=None)
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    Console(width=100_000, soft_wrap=True).print(table)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# The client commands (sessions, jobs, compute-envs, whoami, version) talk to a server over HTTP.
from openworkbench.cli.client_commands import register  # noqa: E402  (they are added to `main` above)

register(main)

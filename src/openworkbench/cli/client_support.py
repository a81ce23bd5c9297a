"""What every client command shares: its options, the exit codes, one clear line per error, output.

Exit codes (docs/cli.md), for scripts:

====  ===========================================================================
0     done
1     the server refused the request (unknown session, bad parameter, wrong state, ...)
2     usage: a bad option or argument, no server or no API key given
3     the server cannot be reached or is overloaded (503), or what answered is not an Open Workbench server
4     the credentials were refused (401) or lack the permission (403)
5     ``--wait``: the session or job ended without getting where it was waited for
6     ``--wait --timeout``: still not there when the time ran out
====  ===========================================================================
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from openworkbench.errors import (
    ConfigError,
    Overloaded,
    PermissionDenied,
    RequestTimeout,
    ServerUnreachable,
    Unauthenticated,
    UnexpectedResponse,
    WorkbenchError,
)

# The posit-sdk's names. openworkbench.client (httpx) is imported when a client command runs: the operator's
# commands (serve, generate-api-token, ...) start without it.
SERVER_ENV, API_KEY_ENV = "WORKBENCH_SERVER", "WORKBENCH_API_KEY"
EXIT_API, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_ENDED, EXIT_TIMEOUT = 1, 2, 3, 4, 5, 6
F = TypeVar("F", bound=Callable[..., Any])


class Ended(Exception):
    """A waited-for session or job ended elsewhere than where it was waited for (exit 5)."""


def fail(message: str, status: int) -> NoReturn:
    click.echo(f"workbench: error: {message}", err=True)
    sys.exit(status)


def exit_status(exc: BaseException) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, ServerUnreachable | UnexpectedResponse | Overloaded | RequestTimeout):
        return EXIT_UNREACHABLE
    if isinstance(exc, Unauthenticated | PermissionDenied):
        return EXIT_AUTH
    return EXIT_API


def client_command(func: F) -> F:
    """--server, --api-key and --json, a Client built from them, and errors turned into one line and a status."""

    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables")
    @click.option("--api-key", envvar=API_KEY_ENV, metavar="TOKEN", help=f"API token [env {API_KEY_ENV}]")
    @click.option("--server", envvar=SERVER_ENV, metavar="URL", help=f"Server URL [env {SERVER_ENV}]")
    @functools.wraps(func)
    def wrapper(*args: Any, server: str | None, api_key: str | None, as_json: bool, **kwargs: Any) -> Any:
        from openworkbench.client import Client

        try:
            with Client(server, api_key) as client:
                return func(client, Output(as_json), *args, **kwargs)
        except WorkbenchError as exc:
            fail(exc.message, exit_status(exc))
        except Ended as exc:
            fail(str(exc), EXIT_ENDED)
        except TimeoutError as exc:
            fail(str(exc), EXIT_TIMEOUT)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


class Output:
    """Tables and lines for people on stdout, or JSON for scripts; progress always on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.console = Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)
        self.progress = Console(stderr=True)

    def data(self, value: Any) -> None:
        click.echo(json.dumps(value, indent=2))

    def line(self, text: str) -> None:
        click.echo(text)

    def note(self, text: str) -> None:
        click.echo(text, err=True)

    def table(self, headers: Iterable[str], rows: Iterable[Iterable[Any]], title: str | None = None) -> None:
        """Cells are Text, never read as markup: a name with brackets prints as it is."""
        table = Table(*headers, box=None, title=title, title_justify="left")
        for row in rows:
            table.add_row(*(Text(cell_text(cell)) for cell in row))
        self.console.print(table)


def cell_text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell_text(item) for item in value) or "-"
    return str(value)


def when(value: Any) -> str:
    """Epoch milliseconds (sessions) or ISO text (jobs) as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value or "")[:19].replace("T", " ")


def key_values(pairs: tuple[str, ...], what: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a mapping; a malformed one is a usage error."""
    result = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint=what)
        result[name] = value
    return result

"""The CLI contract, by running the real ``workbench`` executable against a data directory.

Token and user commands work on the store directly while a server runs on the same data directory:
what they do must show on that running server at once.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import WORKBENCH, Server, clean_env, free_port
from openworkbench.services.accounts import Accounts, isoformat
from openworkbench.store import Store

KINDS = ("user", "admin", "admin-readonly", "super-admin", "super-admin-readonly")
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43,}")


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # A `serve` that should have refused its config would run forever: the timeout ends it (and the test).
    proc = subprocess.run(
        [WORKBENCH, *args], capture_output=True, text=True, env=env or clean_env(), cwd=cwd, timeout=timeout
    )
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc


def wb(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """A CLI command on the running server's data directory."""
    return run(*args, "--data-dir", str(server.data_dir), cwd=server.data_dir.parent)


def fails(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    """A clean failure: non-zero exit, nothing on stdout, a message on stderr naming ``words``."""
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.strip()
    for word in words:
        assert word in proc.stderr, proc.stderr
    return proc.stderr


def table(stdout: str) -> tuple[str, dict[str, list[str]]]:
    """The header line and the rows (keyed by their first column) of a table the CLI printed."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return lines[0], {line.split()[0]: line.split() for line in lines[1:]}


def status(server: Server, token: str, method: str = "get_session", client: Any = None) -> int:
    requester: Any = client or httpx
    response = requester.post(
        f"{server.url}/api/{method}",
        json={"method": method, "kwparams": {}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    return int(response.status_code)


@dataclass
class Generated:
    kind: str
    name: str
    username: str
    proc: subprocess.CompletedProcess[str]

    @property
    def token(self) -> str:
        return self.proc.stdout.strip()


@pytest.fixture(scope="module")
def generated(server: Server) -> dict[str, Generated]:
    """One token of each kind, made by the CLI while the server runs; `root` owns the user one."""
    out = {}
    for kind in KINDS:
        name = f"cli-{kind}-{secrets.token_hex(3)}"
        username = "root" if kind == "user" else f"cli-{kind}-{secrets.token_hex(3)}"
        out[kind] = Generated(kind, name, username, wb(server, "generate-api-token", kind, name, username))
    return out


@pytest.fixture(scope="module")
def user_list(server: Server, generated: dict[str, Generated]) -> str:
    proc = wb(server, "user", "list")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# -- generate-api-token --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generate_prints_the_token_alone(generated: dict[str, Generated], kind: str) -> None:
    proc = generated[kind].proc
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") == 1 and proc.stdout.endswith("\n"), repr(proc.stdout)
    assert TOKEN_RE.fullmatch(proc.stdout.rstrip("\n")), repr(proc.stdout)
    assert len({g.token for g in generated.values()}) == len(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_token_works_on_the_running_server(
    server: Server, generated: dict[str, Generated], kind: str
) -> None:
    token = generated[kind].token
    assert status(server, token, "version") == 200
    assert status(server, token, "get_session") == 200
    # The kind is what it says: only the admin kinds may list users.
    assert status(server, token, "get_users") == (403 if kind == "user" else 200)
    with httpx.Client() as client:
        response = client.post(f"{server.url}/api/get_session", headers={"Authorization": f"Key {token}"},
                               json={"method": "get_session", "kwparams": {"include_all_jobs": True}})
    result = response.json()["result"]
    assert isinstance(result.pop("timestamp"), float)  # the server's clock, for a later timestamp poll
    assert result == {"sessions": [], "jobs": []}


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_grants_its_standing(
    server: Server, generated: dict[str, Generated], user_list: str, kind: str
) -> None:
    header, rows = table(user_list)
    assert header.split()[:5] == ["username", "status", "admin", "super-admin", "uid"]
    username = generated[kind].username
    admin = "no" if kind == "user" else "yes"
    super_admin = "yes" if kind.startswith("super-admin") else "no"
    assert rows[username][1:4] == ["Active", admin, super_admin]
    # The uid column comes from the POSIX account: root has one, the invented users have none.
    assert rows[username][4] == ("0" if username == "root" else "-")
    # The API agrees with the CLI.
    users = {u["username"]: u for u in httpx.post(
        f"{server.url}/api/get_users", json={"method": "get_users", "kwparams": {}},
        headers={"Authorization": f"Bearer {generated['admin'].token}"}, timeout=30).json()["result"]}
    assert users[username]["isAdmin"] is (admin == "yes")
    assert users[username]["isSuperAdmin"] is (super_admin == "yes")


def test_bad_kind_is_refused_and_creates_nothing(server: Server) -> None:
    name, username = f"bad-{secrets.token_hex(3)}", f"nobody-{secrets.token_hex(3)}"
    message = fails(wb(server, "generate-api-token", "superuser", name, username), "superuser")
    assert "super-admin" in message  # the valid kinds are listed
    accounts = server.accounts()
    assert name not in [t.name for t in accounts.list_tokens()]
    assert accounts.user_id(username) is None


def test_duplicate_token_name_is_refused(server: Server) -> None:
    tag = secrets.token_hex(3)
    name, first, second = f"dup-{tag}", f"first-{tag}", f"second-{tag}"
    token = server.accounts().generate_token("user", name, first)
    fails(wb(server, "generate-api-token", "admin", name, second), name)
    accounts = server.accounts()
    assert [(t.name, t.kind, t.username) for t in accounts.list_tokens() if t.name == name] == [(name, "user", first)]
    assert accounts.user_id(second) is None
    assert status(server, token) == 200


# -- list-api-tokens -------------------------------------------------------------------------------------


def test_list_api_tokens_shows_everything_but_the_token(server: Server, generated: dict[str, Generated]) -> None:
    used_name, unused_name = f"used-{secrets.token_hex(3)}", f"unused-{secrets.token_hex(3)}"
    used = server.accounts().generate_token("admin", used_name, f"lister-{secrets.token_hex(3)}")
    unused = server.accounts().generate_token("user", unused_name, f"lister-{secrets.token_hex(3)}")
    assert status(server, used) == 200
    proc = wb(server, "list-api-tokens")
    assert proc.returncode == 0, proc.stderr
    header, rows = table(proc.stdout)
    assert header.split() == ["name", "kind", "user", "created", "last", "used"]
    infos = server.accounts().list_tokens()
    assert set(rows) == {t.name for t in infos}
    for info in infos:
        assert rows[info.name] == [info.name, info.kind, info.username, isoformat(info.created),
                                   isoformat(info.last_used) or "never"]
    assert rows[unused_name][4] == "never"
    assert rows[used_name][4] != "never"
    # Never the token, nor its hash (nor a recognisable part of either).
    for token in (used, unused, *(g.token for g in generated.values())):
        digest = hashlib.sha256(token.encode()).hexdigest()
        for secret in (token, token[:16], digest, digest[:16]):
            assert secret not in proc.stdout + proc.stderr


def test_listings_show_names_verbatim(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(f"sqlite:///{data / 'workbench.db'}")
    store.migrate()
    try:
        accounts = Accounts(store)
        odd = {"[bold]tok[/bold]": "[red]mallory", "t" * 190: "longuser"}
        for name, username in odd.items():
            accounts.generate_token("user", name, username)
    finally:
        store.dispose()
    tokens = run("list-api-tokens", "--data-dir", str(data), cwd=tmp_path)
    users = run("user", "list", "--data-dir", str(data), cwd=tmp_path)
    for name, username in odd.items():
        assert name in table(tokens.stdout)[1]
        assert username in table(users.stdout)[1]


# -- revoke-api-token --------------------------------------------------------------------------------------


def test_revoke_stops_the_token_at_once_on_a_running_server(server: Server) -> None:
    name, username = f"rev-{secrets.token_hex(3)}", f"rev-{secrets.token_hex(3)}"
    token = server.accounts().generate_token("admin", name, username)
    spare = server.accounts().generate_token("user", f"{name}-spare", username)
    with httpx.Client() as client:
        assert status(server, token, client=client) == 200
        proc = wb(server, "revoke-api-token", name)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""
        assert status(server, token, client=client) == 401
        assert status(server, token, "version", client=client) == 401
    assert status(server, spare) == 200
    assert name not in [t.name for t in server.accounts().list_tokens()]
    # Revoking again, or a name that never existed, is an error naming it.
    fails(wb(server, "revoke-api-token", name), name)


# -- users --------------------------------------------------------------------------------------------------


def test_user_add_list_disable(server: Server) -> None:
    tag = secrets.token_hex(3)
    plain, admin, boss = f"plain-{tag}", f"admin-{tag}", f"boss-{tag}"
    for args in ((plain,), (admin, "--admin"), (boss, "--super-admin")):
        proc = wb(server, "user", "add", *args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == ""
    fails(wb(server, "user", "add", plain), plain)  # already exists

    token = server.accounts().generate_token("user", f"tok-{tag}", plain)
    other_token = server.accounts().generate_token("admin", f"tok2-{tag}", admin)
    with httpx.Client() as client:
        assert status(server, token, client=client) == 200
        proc = wb(server, "user", "disable", plain)
        assert proc.returncode == 0, proc.stderr
        assert status(server, token, client=client) == 401
        assert status(server, token, "version", client=client) == 401
    assert status(server, other_token) == 200  # only that user's tokens
    fails(wb(server, "user", "disable", f"ghost-{tag}"), f"ghost-{tag}")

    proc = wb(server, "user", "list")
    assert proc.returncode == 0, proc.stderr
    _, rows = table(proc.stdout)
    assert rows[plain][1:4] == ["Inactive", "no", "no"]
    assert rows[admin][1:4] == ["Active", "yes", "no"]
    assert rows[boss][1:4] == ["Active", "yes", "yes"]  # super-admin implies admin
    assert rows[admin][-1] != "never" and rows[boss][-1] == "never"  # last sign-in


# -- the store keeps only a hash ----------------------------------------------------------------------------


def test_database_stores_only_a_hash(server: Server, generated: dict[str, Generated]) -> None:
    tokens = [g.token for g in generated.values()]
    db = server.data_dir / "workbench.db"
    assert db.exists()
    # Every byte the store has written, including the write-ahead log of the running server.
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for token in tokens:
                assert token.encode() not in data, path
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        dump = "\n".join(conn.iterdump())
        hashes = {row[0] for row in conn.execute("SELECT token_hash FROM api_tokens")}
    for token in tokens:
        assert token not in dump
        assert hashlib.sha256(token.encode()).hexdigest() in hashes


# -- serve with a bad config ------------------------------------------------------------------------------


# Each case: (config text, words the error must contain, pass --port?). The config file's path is
# substituted for {config}. A --port flag replaces the file's port (see the report), so the cases about
# server.port go without it; elsewhere it keeps a wrongly started server off the default port.
BAD_CONFIGS = {
    "port-type": ('[server]\nport = "eighty"\n', ["server.port"], False),
    "port-range": ("[server]\nport = 70000\n", ["server.port"], False),
    "unknown-key": ("[server]\nprot = 8787\n", ["server.prot"], True),
    "url-type": ("[database]\nurl = 5\n", ["database.url"], True),
    "cluster-type": ('[clusters.Local]\ntype = "Mainframe"\n', ["clusters.Local.type"], True),
    "poll-range": ("[local]\npoll_interval_ms = 1\n", ["local.poll_interval_ms"], True),
    "unknown-top-level": ("colour = true\n", ["colour"], True),
    "unreadable-toml": ("[server\nport = 8787\n", ["{config}", "TOML"], True),
}


@pytest.fixture(scope="module")
def bad_config_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every `serve` with a bad config, run side by side (each is a fresh Python process)."""
    procs = {}
    for case, (text, _, port_flag) in BAD_CONFIGS.items():
        tmp = tmp_path_factory.mktemp(case)
        config = tmp / "workbench.toml"
        config.write_text(text)
        args = [WORKBENCH, "serve", "--config", str(config), "--data-dir", str(tmp / "data")]
        args += ["--port", str(free_port())] if port_flag else []
        procs[case] = (args, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              env=clean_env(), cwd=tmp))
    runs = {}
    deadline = time.monotonic() + 120  # eight Python start-ups at once on a loaded 2-core machine
    for case, (args, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # it started serving instead of refusing the config
            proc.kill()
            out, err = proc.communicate()
        runs[case] = subprocess.CompletedProcess(args, proc.returncode, out, err)
    return runs


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_serve_with_invalid_config_names_the_key(
    bad_config_runs: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    proc = bad_config_runs[case]
    config = proc.args[proc.args.index("--config") + 1]
    message = fails(proc, *(word.format(config=config) for word in BAD_CONFIGS[case][1]))
    assert "Traceback" not in message
    assert message.startswith("workbench: error:")
    assert not (Path(config).parent / "data").exists()  # refused before touching any state


def test_workbench_config_env_is_honoured(tmp_path: Path) -> None:
    config = tmp_path / "env.toml"
    config.write_text("[server]\nport = -1\n")
    env = {**clean_env(), "WORKBENCH_CONFIG": str(config), "WORKBENCH_DATA_DIR": str(tmp_path / "data")}
    # run()'s 60 s: a Python start-up took over 20 s beside the suite's other workers on a shared 2-core machine.
    fails(run("serve", env=env, cwd=tmp_path), "server.port", str(config))


# -- WORKBENCH_DATA_DIR ---------------------------------------------------------------------------------------


def test_workbench_data_dir_env_is_honoured(tmp_path: Path) -> None:
    data, other, cwd = tmp_path / "env-data", tmp_path / "flag-data", tmp_path / "cwd"
    cwd.mkdir()
    env = {**clean_env(), "WORKBENCH_DATA_DIR": str(data)}
    proc = run("generate-api-token", "user", "envtok", "envuser", env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    # The store went to the directory the variable names, not to ./.workbench.
    assert (data / "workbench.db").exists()
    assert not (cwd / ".workbench").exists()
    store = Store(f"sqlite:///{data / 'workbench.db'}")
    try:
        assert Accounts(store).authenticate(f"Bearer {token}").username == "envuser"
    finally:
        store.dispose()
    listed = run("list-api-tokens", env=env, cwd=cwd)
    assert "envtok" in table(listed.stdout)[1]
    # A --data-dir flag wins over the variable.
    flagged = run("list-api-tokens", "--data-dir", str(other), env=env, cwd=cwd)
    assert flagged.returncode == 0, flagged.stderr
    assert "envtok" not in flagged.stdout
    assert (other / "workbench.db").exists()

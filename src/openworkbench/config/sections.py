"""The sections of the configuration file, one model each: ``[server]``, ``[database]``, ``[local]``,
``[sessions]``, ``[auth]``, ``[jobs]`` and ``[ides."<name>"]`` (the clusters' own are in ``clusters.py``).

Every section refuses unknown keys and NaN or infinite numbers (``Section``); docs/configuration.md explains
each key to operators.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

IDE_NAMES = ("RStudio", "JupyterLab", "Jupyter Notebook", "VS Code")


class Section(BaseModel):
    # No NaN or infinity in any number: a limit or a timeout of NaN compares false with everything.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    # The API's URL as a session's code reaches it (RS_SERVER_ADDRESS); empty: built from host and port.
    address: str = ""
    # Limits that bound what one client can make the server hold before it knows who is asking (docs/security.md).
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # an API request body
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)  # request line and headers together
    header_timeout_s: float = Field(default=10, gt=0)  # to send a request's line and headers
    keep_alive_s: int = Field(default=5, ge=1)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(default=1000, ge=2)  # open connections; beyond, requests get 503
    # The homepage's long-poll (web/live.py): how long one waits for a change, and how many may wait at once,
    # in all and per user (each holds a connection; a browser has 6 per server over HTTP/1.1). Beyond: answered
    # at once, and that tab polls instead.
    live_wait_s: float = Field(default=25, gt=0, le=300)
    live_max_waiters: int = Field(default=500, ge=0)
    live_max_waiters_per_user: int = Field(default=4, ge=0)
    # Per-session origins (JupyterHub's subdomain_host): "sessions.example.com" (https) or a URL such as
    # "http://owb.localhost:8787". Each session is then served at <id part>.<domain>; this host itself is the
    # main origin (sign-in). Empty: every session shares the server's origin under /s/<id part>/.
    session_domain: str = ""
    # Addresses or CIDRs of reverse proxies whose X-Forwarded-Host/-Proto/-For are believed. Empty: nobody's,
    # not even loopback's (a local user can connect to the port directly and forge them).
    trusted_proxies: list[str] = []
    # glibc malloc arenas of the process (allocator.py): 0 leaves glibc's default (8 per core); MALLOC_ARENA_MAX
    # in the environment wins.
    malloc_arena_max: int = Field(default=2, ge=0, le=1024)

    @field_validator("session_domain")
    @classmethod
    def _session_domain_url(cls, value: str) -> str:
        if not value:
            return value
        url = value if "://" in value else "https://" + value
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
            raise ValueError(f"'{value}' is not a domain or an http(s)://domain[:port] URL")
        return url.rstrip("/")

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"'{item}' is not an IP address or CIDR network") from None
        return value

    # A bearer token a Prometheus scraper may use for /metrics (besides admin-level API tokens); "": none.
    metrics_token: str = ""
    log_format: Literal["text", "json"] = "text"

    @field_validator("metrics_token")
    @classmethod
    def _long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("the metrics token must be empty or at least 16 characters")
        return value

    def session_address(self) -> str:
        if self.address:
            return self.address.rstrip("/")
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


class DatabaseSettings(Section):
    # Empty means SQLite at <data_dir>/workbench.db; otherwise any SQLAlchemy URL
    # (postgresql+psycopg://user@/db?host=/run/postgresql).
    url: str = ""
    # Replicas on PostgreSQL (services/leadership.py): how often a server tries to take the roles it does not
    # lead (a cluster's job monitor, the session watch); a dead leader is replaced within about this long.
    leader_check_interval_s: float = Field(default=1.0, gt=0, le=60)


class LocalSettings(Section):
    # The supervisor is stdlib-only and runs under a Python every user can execute.
    supervisor_python: str = "/usr/bin/python3"
    cgroups: bool = True
    cgroup_root: str = "/sys/fs/cgroup"
    poll_interval_ms: int = Field(default=100, ge=10, le=10_000)


class SessionSettings(Section):
    # Where scripts/install-ides.sh puts the IDEs: readable by every user (not under /root).
    ide_prefix: str = "/opt/openworkbench"
    # Per-user 0700 directories holding each session's Unix socket; only the owner (and the
    # server, as root) can reach a session except through the proxy. Created at start-up, the server's,
    # mode 0755; empty: /run/openworkbench/sessions as root, else see default_runtime_dir().
    runtime_dir: str = ""
    start_timeout_s: float = Field(default=90, gt=0)
    stop_grace_s: float = Field(default=5, ge=0)
    # A start or stop hook still running after this long is killed (and a start hook fails the session).
    hook_timeout_s: float = Field(default=300, gt=0)
    idle_check_interval_s: float = Field(default=30, gt=0)
    # Sessions of one user that have not ended (suspended ones do not count); 0: no cap.
    max_per_user: int = Field(default=10, ge=0)
    # Ended sessions (not suspended ones: they can resume) leave the plain get_session list this long after
    # they ended; get_historical_session and get_session(session_id) still return them. 0: at once.
    expiry_hours: float = Field(default=1, ge=0)
    # How long one RPC cookie (RS_SESSION_RPC_COOKIE, the rpc_cookie file) is valid; the server writes a new
    # one to the file once less than half of this remains. Never beyond the session's life either way.
    rpc_cookie_lifetime_s: float = Field(default=7 * 24 * 3600, ge=10, le=366 * 24 * 3600)
    # Sessions in their start phase (launching the IDE until it answers or fails) at once; the rest wait their
    # turn, first come first served, and show their place in status_detail (services/start_queue.py).
    # Default: one per CPU, at most 4. A JupyterLab start keeps a core busy for ~2 s; more starts than cores
    # only slow each other and the server (one 12-session storm on 2 cores: another user's get_session p50
    # 8.9 ms with 4 slots, 2.7 ms with 2).
    max_concurrent_starts: int = Field(default_factory=lambda: min(4, os.cpu_count() or 1), ge=1, le=1000)
    # Loopback ports (first, last) for IDEs that cannot listen on a socket (RStudio): one per live session on a
    # host, allocated in the store (proxy/ports.py).
    port_range: tuple[int, int] = (20000, 39999)

    @field_validator("port_range")
    @classmethod
    def _port_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1024 <= low <= high <= 65535:
            raise ValueError(f"must be [first, last] with 1024 <= first <= last <= 65535, got [{low}, {high}]")
        return value


class AuthSettings(Section):
    # Accounts with uid 0 or a uid below UID_MIN (/etc/login.defs) that jobs and sessions may still run as.
    allowed_system_users: list[str] = []
    # How the sign-in page checks a password, tried in this order: "pam" (the machine's accounts; needs root),
    # "local" (hashes set with `workbench user passwd`). None: ["pam"] as root, else ["local"]; []: tokens only.
    password_backends: list[Literal["pam", "local"]] | None = None
    pam_service: str = Field(default="login", min_length=1)  # the PAM service (/etc/pam.d/<name>)
    # A failed sign-in is answered after this delay, doubled for each further failure of the same username or
    # client address, up to the maximum; attempts during a delay are refused unchecked (429, Retry-After).
    failed_sign_in_delay_s: float = Field(default=1.0, gt=0, le=60)
    failed_sign_in_max_delay_s: float = Field(default=30.0, gt=0, le=3600)

    def backends(self) -> list[str]:
        if self.password_backends is not None:
            return list(dict.fromkeys(self.password_backends))
        return ["pam"] if os.geteuid() == 0 else ["local"]


class JobSettings(Section):
    # get_job_output reads at most this many bytes of a job's files per call, then ends with an error line.
    output_stream_max_bytes: int = Field(default=1 << 30, gt=0)
    # A final job stays in get_session(include_all_jobs) this long after it ended (the Job Launcher's
    # job-expiry-hours), then only get_historical_session lists it. 0: it leaves the list at once.
    expiry_hours: float = Field(default=1, ge=0)
    # A final job's output files are removed this long after it ended; the store keeps its row.
    output_retention_days: float = Field(default=30, gt=0)
    purge_interval_s: float = Field(default=3600, gt=0)  # how often the server looks for output to remove


class IdeSettings(Section):
    enabled: bool = True
    exe: str = ""  # absolute, or relative to sessions.ide_prefix, or a name on PATH
    args: list[str] = []
    default_cluster: str = ""  # empty: the first configured cluster
    default_image: str = ""
    idle_timeout_minutes: float = Field(default=0, ge=0)  # 0: never
    suspend_on_idle: bool = True  # else an idle session is stopped


DEFAULT_IDE_EXES = {
    "JupyterLab": "jupyter/bin/jupyter-lab",
    "Jupyter Notebook": "jupyter/bin/jupyter-notebook",
    "VS Code": "code-server/node_modules/.bin/code-server",
    "RStudio": "/usr/lib/rstudio-server/bin/rserver",
}


def default_ides() -> dict[str, IdeSettings]:
    return {name: IdeSettings(exe=exe) for name, exe in DEFAULT_IDE_EXES.items()}



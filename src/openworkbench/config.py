"""Configuration: one TOML file, overridden by ``WORKBENCH_*`` environment variables.

Precedence, highest first: command-line flags, environment (``WORKBENCH_DATA_DIR``,
``WORKBENCH_SERVER__PORT``, ``WORKBENCH_DATABASE__URL``, ...), the TOML file, built-in defaults.
Every error names the offending key, so ``serve`` can stop with a useful message.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from openworkbench.errors import ConfigError

LIMIT_TYPES = ("cpuCount", "cpuTime", "memory", "memorySwap")
IDE_NAMES = ("RStudio", "JupyterLab", "Jupyter Notebook", "VS Code")


class _Section(BaseModel):
    # No NaN or infinity in any number: a limit or a timeout of NaN compares false with everything.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerSettings(_Section):
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
    # Per-session origins (JupyterHub's subdomain_host): "sessions.example.com" (https) or a URL such as
    # "http://owb.localhost:8787". Each session is then served at <id part>.<domain>; this host itself is the
    # main origin (sign-in). Empty: every session shares the server's origin under /s/<id part>/.
    session_domain: str = ""
    # Addresses or CIDRs of reverse proxies whose X-Forwarded-Host/-Proto/-For are believed. Empty: nobody's,
    # not even loopback's (a local user can connect to the port directly and forge them).
    trusted_proxies: list[str] = []

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


class DatabaseSettings(_Section):
    # Empty means SQLite at <data_dir>/workbench.db; otherwise any SQLAlchemy URL
    # (postgresql+psycopg://user@/db?host=/run/postgresql).
    url: str = ""


class LimitSettings(_Section):
    max: float | None = Field(default=None, gt=0)
    default: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _default_within_max(self) -> LimitSettings:
        if self.max is not None and self.default is not None and self.default > self.max:
            raise ValueError(f"default {self.default:g} is larger than max {self.max:g}")
        return self


class ProfileSettings(_Section):
    """A resource profile (the product's ``resourceProfiles``): a named size a job or session asks for."""

    display_name: str = ""  # empty: the profile's name
    cpus: float | None = Field(default=None, gt=0, le=2**31 - 1)  # cpuCount; None: the cluster's default
    memory: float | None = Field(default=None, gt=0, le=2**31 - 1)  # MB; None: the cluster's default
    queue: str = ""  # a queue (Slurm partition) of the cluster; empty: the cluster's default
    constraints: list[str] = []  # placement constraints (Slurm features) of the cluster


DEFAULT_PROFILE = "default"


class ClusterSettings(_Section):
    type: Literal["Local", "Slurm"]
    queues: list[str] = []
    placement_constraints: list[str] = []
    limits: dict[str, LimitSettings] = {}
    # Slurm only. The server host is a submit host: Slurm's commands, munge and slurm.conf are there.
    slurm_conf: str = ""  # path to slurm.conf (SLURM_CONF for every command); empty: Slurm's default
    slurm_bin: str = ""  # directory holding sbatch, squeue, scontrol, scancel, sacct; empty: PATH
    output_dir: str = ""  # shared by the server host and every compute node: job scripts and output
    poll_interval_s: float = Field(default=2.0, gt=0, le=300)
    # RLIMIT_FSIZE of every job: no file it writes grows past this (MB); 0: no limit.
    max_file_size_mb: int = Field(default=10240, ge=0)
    # Local only, with cgroups: pids.max of every job (processes and threads); 0: no limit.
    max_pids: int = Field(default=4096, ge=0)
    # Local only, with cgroups: the memory default of a job that gives none, in percent of this machine's
    # memory (capped by limits.memory.max), unless limits.memory.default is set; 0: none.
    default_memory_percent: float = Field(default=50, ge=0, le=100)
    # Resource profiles, listed in this order; none configured: a single built-in "default" profile.
    profiles: dict[str, ProfileSettings] = {}

    @model_validator(mode="after")
    def _profiles_name_what_exists(self) -> ClusterSettings:
        for name, profile in self.profiles.items():
            if not name or name == "custom":
                raise ValueError(f"profiles.{name!r}: 'custom' and the empty name are reserved")
            if profile.queue and self.queues and profile.queue not in self.queues:
                raise ValueError(f"profiles.{name}.queue: '{profile.queue}' is not one of the queues {self.queues}")
            unknown = sorted(set(profile.constraints) - set(self.placement_constraints))
            if unknown and self.type == "Local":
                raise ValueError(f"profiles.{name}.constraints: {unknown} not in placement_constraints")
        return self

    @model_validator(mode="after")
    def _slurm_needs_output_dir(self) -> ClusterSettings:
        if self.type == "Slurm" and not self.output_dir:
            raise ValueError("a Slurm cluster needs output_dir, a directory shared with its compute nodes")
        return self

    @model_validator(mode="after")
    def _local_only_keys(self) -> ClusterSettings:
        # Slurm has no per-job process limit, and a node's memory default is Slurm's own (DefMemPerNode):
        # a key that would change nothing is refused rather than ignored.
        given = sorted({"max_pids", "default_memory_percent"} & self.model_fields_set)
        if self.type == "Slurm" and given:
            raise ValueError(f"{', '.join(given)}: Local clusters only (Slurm cannot apply it)")
        return self

    @field_validator("limits")
    @classmethod
    def _known_limits(cls, value: dict[str, LimitSettings]) -> dict[str, LimitSettings]:
        unknown = sorted(set(value) - set(LIMIT_TYPES))
        if unknown:
            raise ValueError(f"unknown limit type(s) {unknown}; expected one of {list(LIMIT_TYPES)}")
        return value


class LocalSettings(_Section):
    # The supervisor is stdlib-only and runs under a Python every user can execute.
    supervisor_python: str = "/usr/bin/python3"
    cgroups: bool = True
    cgroup_root: str = "/sys/fs/cgroup"
    poll_interval_ms: int = Field(default=100, ge=10, le=10_000)


class SessionSettings(_Section):
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


class AuthSettings(_Section):
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


class JobSettings(_Section):
    # get_job_output reads at most this many bytes of a job's files per call, then ends with an error line.
    output_stream_max_bytes: int = Field(default=1 << 30, gt=0)
    # A final job stays in get_session(include_all_jobs) this long after it ended (the Job Launcher's
    # job-expiry-hours), then only get_historical_session lists it. 0: it leaves the list at once.
    expiry_hours: float = Field(default=1, ge=0)
    # A final job's output files are removed this long after it ended; the store keeps its row.
    output_retention_days: float = Field(default=30, gt=0)
    purge_interval_s: float = Field(default=3600, gt=0)  # how often the server looks for output to remove


class IdeSettings(_Section):
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


def _default_ides() -> dict[str, IdeSettings]:
    return {name: IdeSettings(exe=exe) for name, exe in DEFAULT_IDE_EXES.items()}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WORKBENCH_", env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    data_dir: Path = Path(".workbench")
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    local: LocalSettings = LocalSettings()
    sessions: SessionSettings = SessionSettings()
    auth: AuthSettings = AuthSettings()
    jobs: JobSettings = JobSettings()
    clusters: dict[str, ClusterSettings] = {"Local": ClusterSettings(type="Local")}
    ides: dict[str, IdeSettings] = Field(default_factory=_default_ides)

    @field_validator("clusters")
    @classmethod
    def _one_cluster(cls, value: dict[str, ClusterSettings]) -> dict[str, ClusterSettings]:
        if not value:
            raise ValueError("at least one cluster must be configured")
        return value

    @field_validator("ides", mode="before")
    @classmethod
    def _known_ides(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        unknown = sorted(set(value) - set(IDE_NAMES))
        if unknown:
            raise ValueError(f"unknown IDE(s) {unknown}; expected one of {list(IDE_NAMES)}")
        # A partial [ides."X"] table keeps that IDE's other defaults (its executable above all).
        merged: dict[str, Any] = {name: {"exe": exe} for name, exe in DEFAULT_IDE_EXES.items()}
        for name, table in value.items():
            given = table.model_dump(exclude_unset=True) if isinstance(table, IdeSettings) else table
            merged[name] = {**merged[name], **given} if isinstance(given, dict) else given
        return merged

    @model_validator(mode="after")
    def _ide_clusters_exist(self) -> Settings:
        for name, ide in self.ides.items():
            if ide.default_cluster and ide.default_cluster not in self.clusters:
                raise ValueError(
                    f"ides.{name}.default_cluster: no cluster named '{ide.default_cluster}' "
                    f"(configured: {', '.join(self.clusters)})"
                )
        return self

    @model_validator(mode="after")
    def _runtime_dir(self) -> Settings:
        if not self.sessions.runtime_dir:
            self.sessions.runtime_dir = default_runtime_dir(self.data_dir)
        elif not os.path.isabs(self.sessions.runtime_dir):
            raise ValueError(f"sessions.runtime_dir: must be an absolute path, got '{self.sessions.runtime_dir}'")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir.resolve() / 'workbench.db'}"

    @property
    def default_cluster(self) -> str:
        return next(iter(self.clusters))


def default_runtime_dir(data_dir: Path) -> str:
    """/run (a tmpfs, emptied at boot) as root; otherwise the user's own $XDG_RUNTIME_DIR, else the data dir."""
    if os.geteuid() == 0:
        return "/run/openworkbench/sessions"
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, "openworkbench", "sessions")
    return str(data_dir.resolve() / "run")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; raise ConfigError naming the key or file at fault."""
    path = config_file or os.environ.get("WORKBENCH_CONFIG") or None
    if path is not None:
        _check_toml(Path(path))
    cls = type("FileSettings", (Settings,), {"model_config": {**Settings.model_config, "toml_file": path}})
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        settings: Settings = cls(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    return settings


def _check_toml(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    problems = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(top level)"
        problems.append(f"config key '{key}'{where}: {err['msg']}")
    return "; ".join(problems)

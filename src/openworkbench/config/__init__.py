"""Configuration: one TOML file, overridden by ``WORKBENCH_*`` environment variables.

Precedence, highest first: command-line flags, environment (``WORKBENCH_DATA_DIR``,
``WORKBENCH_SERVER__PORT``, ``WORKBENCH_DATABASE__URL``, ...), the TOML file, built-in defaults.
Every error names the offending key, so ``serve`` can stop with a useful message. The sections' models are in
``sections.py`` and, for the clusters, ``clusters.py``; this module puts them together and loads them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from openworkbench.config.clusters import (
    DEFAULT_PROFILE,
    LIMIT_TYPES,
    ClusterSettings,
    LimitSettings,
    ProfileSettings,
)
from openworkbench.config.sections import (
    DEFAULT_IDE_EXES,
    IDE_NAMES,
    AuthSettings,
    DatabaseSettings,
    IdeSettings,
    JobSettings,
    LocalSettings,
    ServerSettings,
    SessionSettings,
    default_ides,
)
from openworkbench.errors import ConfigError

__all__ = [
    "DEFAULT_IDE_EXES", "DEFAULT_PROFILE", "IDE_NAMES", "LIMIT_TYPES", "AuthSettings", "ClusterSettings",
    "DatabaseSettings", "IdeSettings", "JobSettings", "LimitSettings", "LocalSettings", "ProfileSettings",
    "ServerSettings", "SessionSettings", "Settings", "default_runtime_dir", "load_settings",
]


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
    ides: dict[str, IdeSettings] = Field(default_factory=default_ides)

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

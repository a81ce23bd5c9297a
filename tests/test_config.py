"""Configuration: defaults, overrides, and errors that name the key."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openworkbench.config import DEFAULT_IDE_EXES, load_settings
from openworkbench.errors import ConfigError
from openworkbench.services.container import build_clusters, open_store


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workbench.toml"
    path.write_text(text)
    return path


def test_defaults_are_sqlite_in_the_data_dir_and_one_local_cluster(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "d")
    assert settings.database_url == f"sqlite:///{tmp_path / 'd' / 'workbench.db'}"
    assert list(settings.clusters) == ["Local"] and settings.server.port == 8787


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, '[server]\nhost = "0.0.0.0"\nport = 1000\n')
    assert load_settings(path).server.port == 1000
    monkeypatch.setenv("WORKBENCH_SERVER__PORT", "2000")
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path / "envdir"))
    settings = load_settings(path)
    assert (settings.server.host, settings.server.port, settings.data_dir) == ("0.0.0.0", 2000, tmp_path / "envdir")
    assert load_settings(path, server={"port": 3000}).server.port == 3000
    monkeypatch.setenv("WORKBENCH_CONFIG", str(path))
    assert load_settings().server.host == "0.0.0.0"


def test_a_partial_ide_table_keeps_the_other_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[ides."VS Code"]\nenabled = false\n'))
    assert (settings.ides["VS Code"].enabled, settings.ides["VS Code"].exe) == (False, DEFAULT_IDE_EXES["VS Code"])
    assert settings.ides["JupyterLab"].exe == "jupyter/bin/jupyter-lab"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[server]\nport = "high"\n', "server.port"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[server]\nbogus = 1\n", "server.bogus"),
        ('[clusters.Main]\ntype = "Kubernetes"\n', "clusters.Main.type"),
        ("[clusters.Local]\ntype = 'Local'\nlimits.memory = {max=10, default=20}\n", "clusters.Local.limits.memory"),
        ('[clusters.Local]\ntype = "Local"\nlimits.gpus = {max = 1}\n', "clusters.Local.limits"),
        ('[ides.Emacs]\nexe = "emacs"\n', "ides"),
        ('[ides.JupyterLab]\ndefault_cluster = "Nope"\n', "ides.JupyterLab.default_cluster"),
        ("[local]\npoll_interval_ms = 1\n", "local.poll_interval_ms"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=f"'{named}'|{named}:"):
        load_settings(write(tmp_path, text))


def test_invalid_toml_and_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_the_data_dir_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    open_store(load_settings(data_dir=data)).dispose()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_default_limit_without_cgroups_stops_the_server(tmp_path: Path) -> None:
    text = "[local]\ncgroups = false\n[clusters.Local]\ntype = 'Local'\nlimits.memory = {default=100}\n"
    with pytest.raises(ConfigError, match=r"clusters\.Local\.limits\.memory\.default"):
        build_clusters(load_settings(write(tmp_path, text), data_dir=tmp_path))

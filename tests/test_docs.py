"""The docs keep up with the code: every config key, RPC method and error code is documented.

A key, method or error added without its documentation fails here, naming what is missing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from openworkbench import errors
from openworkbench.api.methods import METHODS
from openworkbench.config import Settings

DOCS = Path(__file__).parents[1] / "docs"
# A segment of a key that is a name the operator chooses (a cluster, an IDE, a limit type), as the docs write it:
# `clusters.<Name>.type`, `ides."<IDE>".exe`, `clusters.<Name>.limits.<type>.max`.
ANY_NAME = r'"?<[^>`.]+>"?'


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation can hold directly (``X``, ``X | None``)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    elif get_origin(annotation) in (Union, UnionType):
        for arg in get_args(annotation):
            yield from _models(arg)


def config_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf key of the settings, a dict's keys written as None (a name of the operator's choosing)."""
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        annotation = field.annotation
        if get_origin(annotation) is dict:
            path, annotation = (*path, None), get_args(annotation)[1]
        nested = list(_models(annotation))
        if nested:
            for sub in nested:
                yield from config_keys(sub, path)
        else:
            yield path


def key_pattern(path: tuple[str, ...]) -> re.Pattern[str]:
    parts = [ANY_NAME if part is None else re.escape(part) for part in path]
    return re.compile(r"`" + r"\.".join(parts) + r"`")


def test_the_walk_finds_nested_and_named_keys() -> None:
    keys = {".".join(part or "*" for part in path) for path in config_keys(Settings)}
    assert {"data_dir", "server.port", "clusters.*.limits.*.max", "ides.*.exe", "sessions.hook_timeout_s"} <= keys
    assert "clusters" not in keys and "server" not in keys  # sections are walked into, not reported


def test_every_config_key_is_in_configuration_md() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [".".join(part or "<name>" for part in path) for path in config_keys(Settings)
               if not key_pattern(path).search(text)]
    assert not missing, f"config keys not documented in docs/configuration.md (as `key`): {missing}"


def test_every_method_is_in_api_md() -> None:
    text = (DOCS / "api.md").read_text()
    missing = [name for name in METHODS
               if f"### {name}\n" not in text or f"| [{name}](#{name}) |" not in text]
    assert not missing, f"RPC methods without a section and a row of the method table in docs/api.md: {missing}"


def error_classes() -> list[type[errors.WorkbenchError]]:
    return [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
            if issubclass(cls, errors.WorkbenchError) and cls is not errors.WorkbenchError
            and cls.__module__ == errors.__name__]


def test_every_error_code_is_in_api_md() -> None:
    text = (DOCS / "api.md").read_text()
    table = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[2].startswith("`"):  # one class, or several of one row: `A`, `B`
            for name in cells[2].split(","):
                rows[name.strip().strip("`")] = (cells[0], cells[1])
    assert len(error_classes()) >= 12
    wrong = []
    for cls in error_classes():
        http, code = rows.get(cls.__name__, ("", ""))
        if code != str(cls.code) or http not in (str(cls.http_status), "—"):
            wrong.append(f"{cls.__name__} (HTTP {cls.http_status}, code {cls.code}): documented as {http!r}/{code!r}")
    assert not wrong, f"error classes missing or wrong in the table of docs/api.md: {wrong}"

"""The IDEs a session can run. Each is known by its Workbench name.

This issue needs only what ``get_compute_envs`` reports: the language label, the fixed project
id of the product, and whether the IDE's executable is present.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from openworkbench.config import IdeSettings


@dataclass(frozen=True)
class IdeInfo:
    name: str
    lang: str
    project_id: str


IDES: dict[str, IdeInfo] = {
    "RStudio": IdeInfo("RStudio", "R", "cfc78a31"),
    "JupyterLab": IdeInfo("JupyterLab", "Jupyter", "21f2ed72"),
    "Jupyter Notebook": IdeInfo("Jupyter Notebook", "Jupyter", "2cb256d2"),
    "VS Code": IdeInfo("VS Code", "code-server", "3c9ab5a7"),
}


def resolve_exe(settings: IdeSettings, ide_prefix: str) -> str | None:
    """The IDE's executable: absolute, relative to the IDE prefix, or found on PATH."""
    exe = settings.exe
    if not exe:
        return None
    if os.path.isabs(exe) or "/" in exe:
        path = exe if os.path.isabs(exe) else os.path.join(ide_prefix, exe)
        return path if os.access(path, os.X_OK) else None
    return shutil.which(exe)


def available(settings: IdeSettings, ide_prefix: str) -> bool:
    """An IDE is available when it is enabled and its executable is found."""
    return settings.enabled and resolve_exe(settings, ide_prefix) is not None

"""The IDEs a session can run: one module per IDE behind one contract (``base.Ide``).

See docs/sessions.md ("IDEs") for how each one is started, probed, stopped and suspended.
"""

from __future__ import annotations

from openworkbench.ides.base import PORT_PLACEHOLDER, Activity, Ide, LaunchContext, available, resolve_exe
from openworkbench.ides.client import IdeClient, IdeRequestError
from openworkbench.ides.jupyter import JupyterLab, JupyterNotebook
from openworkbench.ides.registry import IDES, ide_for
from openworkbench.ides.rstudio import RStudio
from openworkbench.ides.vscode import VSCode

__all__ = [
    "IDES",
    "PORT_PLACEHOLDER",
    "Activity",
    "Ide",
    "IdeClient",
    "IdeRequestError",
    "JupyterLab",
    "JupyterNotebook",
    "LaunchContext",
    "RStudio",
    "VSCode",
    "available",
    "ide_for",
    "resolve_exe",
]

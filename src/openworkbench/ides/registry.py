"""The IDEs a session can run, by their Workbench name, in the order the product lists them."""

from __future__ import annotations

from openworkbench.config import Settings
from openworkbench.errors import InvalidParameter
from openworkbench.ides.base import Ide
from openworkbench.ides.jupyter import JupyterLab, JupyterNotebook
from openworkbench.ides.rstudio import RStudio
from openworkbench.ides.vscode import VSCode

# name -> class; each class carries .name, .lang and .project_id (the product's fixed project id).
IDES: dict[str, type[Ide]] = {cls.name: cls for cls in (RStudio, JupyterLab, JupyterNotebook, VSCode)}


def ide_for(name: str, settings: Settings) -> Ide:
    """The IDE ``name`` configured by ``[ides."<name>"]`` and ``sessions.ide_prefix``."""
    cls = IDES.get(name)
    if cls is None:
        raise InvalidParameter(f"unknown workbench '{name}'; expected one of {', '.join(IDES)}")
    return cls(settings.ides[name], settings.sessions.ide_prefix)

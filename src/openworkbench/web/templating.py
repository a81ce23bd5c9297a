"""Jinja2 templates of the server's own pages (``web/templates``) and their static files (``web/static``).

``render`` gives every template ``csrf_token`` (web/csrf.py) and sets the browser's CSRF cookie if needed, so any
page can include ``_signout.html``, the sign-out button for its header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from openworkbench.web import csrf

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")  # autoescapes every .html template
STATIC_PATH = "/static"
# Pages hold a form's CSRF token and sometimes an error about the user: never kept in a shared cache.
NO_STORE = {"Cache-Control": "no-store"}


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
           headers: dict[str, str] | None = None) -> HTMLResponse:
    token = csrf.token(request)
    response = TEMPLATES.TemplateResponse(request, name, {**context, "csrf_token": token}, status_code=status,
                                          headers={**NO_STORE, **(headers or {})})
    csrf.remember(response, request, token)
    return response

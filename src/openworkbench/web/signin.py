"""``/auth/sign-in``: a browser trades an API token for a session cookie.

The cookie is HttpOnly and SameSite=Lax; the proxy removes it before traffic reaches an IDE.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from openworkbench.errors import WorkbenchError
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME, LIFETIME

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Open Workbench</title>
<style>body{{font-family:sans-serif;max-width:28em;margin:4em auto}}input{{width:100%;padding:.4em}}
.error{{color:#b00}}</style></head>
<body><h1>Open Workbench</h1>
<form method="post" action="/auth/sign-in">
<p><label for="token">API token</label><br>
<input id="token" name="token" type="password" autocomplete="off" autofocus required></p>
<input type="hidden" name="next" value="{next}">
{error}<p><button type="submit">Sign in</button></p>
</form>
<p>An operator creates tokens with <code>workbench generate-api-token user NAME USERNAME</code>.</p>
</body></html>
"""


def safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def page(next_url: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(PAGE.format(next=html.escape(safe_next(next_url)), error=message), status_code=status)


def router(services: Services) -> APIRouter:
    routes = APIRouter()

    @routes.get("/auth/sign-in")
    async def sign_in_page(next: str = "/") -> HTMLResponse:
        return page(next)

    @routes.post("/auth/sign-in")
    async def sign_in(request: Request) -> Response:
        form = parse_qs((await request.body()).decode(errors="replace"))
        token, next_url = form.get("token", [""])[0].strip(), safe_next(form.get("next", ["/"])[0])
        try:
            cookie = await run_in_threadpool(services.signin.sign_in, token)
        except WorkbenchError:
            return page(next_url, "That token is not valid (or was revoked).", status=401)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            COOKIE_NAME, cookie, max_age=int(LIFETIME.total_seconds()), httponly=True, samesite="lax",
            secure=request.url.scheme == "https", path="/",
        )
        return response

    @routes.post("/auth/sign-out")
    async def sign_out(request: Request) -> Response:
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            await run_in_threadpool(services.signin.sign_out, cookie)
        response = RedirectResponse("/auth/sign-in", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    return routes

"""``/auth/sign-in``: a browser trades an API token for a session cookie.

The cookie is HttpOnly and SameSite=Lax; the proxy removes it before traffic reaches an IDE. Sign-in and
sign-out are refused unless they come from this server's own page (web/csrf.py): another site's form must not
sign the browser in as someone else (login CSRF) nor out.
"""

from __future__ import annotations

import html
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from openworkbench.api.limits import read_body
from openworkbench.errors import PayloadTooLarge, PermissionDenied, WorkbenchError
from openworkbench.proxy.target import error_response
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME, LIFETIME
from openworkbench.web import csrf

# A token and a next URL: anything larger is not this form.
FORM_MAX_BYTES = 16 * 1024

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in - Open Workbench</title>
<style>
*{{box-sizing:border-box}}
body{{font:16px/1.5 system-ui,sans-serif;color:#1f2328;background:#f3f4f6;margin:0;padding:4em 1em}}
main{{max-width:30em;margin:0 auto;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:2em}}
h1{{font-size:1.5em;margin:0 0 .25em}}
.lead{{color:#57606a;margin:0 0 1.5em}}
label{{display:block;font-weight:600;margin-bottom:.3em}}
input{{width:100%;padding:.55em .7em;font:inherit;border:1px solid #8c959f;border-radius:6px}}
input:focus{{outline:2px solid #0969da;outline-offset:1px;border-color:#0969da}}
button{{width:100%;margin-top:1em;padding:.6em;font:inherit;font-weight:600;color:#fff;background:#0969da;
border:0;border-radius:6px;cursor:pointer}}
button:hover{{background:#0550ae}}
.error{{color:#82071e;background:#ffebe9;border:1px solid #ff8182;border-radius:6px;padding:.5em .75em;
margin:1em 0 0}}
.hint{{color:#57606a;font-size:.875em;margin:1.5em 0 0}}
code{{display:block;margin-top:.3em;white-space:nowrap;overflow-x:auto;background:#f6f8fa;padding:.3em .5em;
border-radius:4px}}
</style></head>
<body><main><h1>Open Workbench</h1>
<p class="lead">Sign in with your API token to open your sessions.</p>
<form method="post" action="/auth/sign-in">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="off" autofocus required>
<input type="hidden" name="next" value="{next}">
<input type="hidden" name="csrf_token" value="{csrf}">
{error}<button type="submit">Sign in</button>
</form>
<p class="hint">No token? An operator creates one with
<code>workbench generate-api-token user NAME USERNAME</code></p>
</main></body></html>
"""


def safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def page(request: Request, next_url: str, error: str = "", status: int = 200) -> HTMLResponse:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    token = csrf.token(request)
    body = PAGE.format(next=html.escape(safe_next(next_url)), error=message, csrf=html.escape(token))
    response = HTMLResponse(body, status_code=status)
    csrf.remember(response, request, token)
    return response


def refused(request: Request, exc: PermissionDenied, next_url: str) -> Response:
    """Another site's request gets the error alone; our own page with a stale token gets the form again."""
    if csrf.cross_site(request) is not None:
        return error_response(exc)
    return page(request, next_url, exc.message, status=403)


def router(services: Services) -> APIRouter:
    routes = APIRouter()

    @routes.get("/auth/sign-in")
    async def sign_in_page(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, next)

    @routes.post("/auth/sign-in")
    async def sign_in(request: Request) -> Response:
        try:
            raw = await read_body(request, FORM_MAX_BYTES)
        except PayloadTooLarge:
            return page(request, "/", "The form is too large.", status=413)
        form = parse_qs(raw.decode(errors="replace"))
        token, next_url = form.get("token", [""])[0].strip(), safe_next(form.get("next", ["/"])[0])
        try:
            csrf.check(request, form.get(csrf.FIELD, [""])[0])
        except PermissionDenied as exc:
            return refused(request, exc, next_url)
        try:
            cookie = await run_in_threadpool(services.signin.sign_in, token)
        except WorkbenchError:
            return page(request, next_url, "That token is not valid (or was revoked).", status=401)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            COOKIE_NAME, cookie, max_age=int(LIFETIME.total_seconds()), httponly=True, samesite="lax",
            secure=request.url.scheme == "https", path="/",
        )
        return response

    @routes.post("/auth/sign-out")
    async def sign_out(request: Request) -> Response:
        try:
            raw = await read_body(request, FORM_MAX_BYTES)
        except PayloadTooLarge as exc:
            return error_response(exc)
        form = parse_qs(raw.decode(errors="replace"))
        try:
            csrf.check(request, form[csrf.FIELD][0] if csrf.FIELD in form else None)
        except PermissionDenied as exc:
            return error_response(exc)
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            await run_in_threadpool(services.signin.sign_out, cookie)
        response = RedirectResponse("/auth/sign-in", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response

    return routes

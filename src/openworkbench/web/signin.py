"""``/auth/sign-in`` and ``/auth/sign-out``: a browser trades a password, or an API token, for a session cookie.

The cookie is HttpOnly and SameSite=Lax; the proxy removes it before traffic reaches an IDE. Sign-in and
sign-out are refused unless they come from this server's own page (web/csrf.py): another site's form must not
sign the browser in as someone else (login CSRF) nor out. Failed password sign-ins are slowed down and refused
alike whatever went wrong (services/password_signin.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from urllib.parse import parse_qs, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from openworkbench.api.limits import read_body
from openworkbench.auth.throttle import Attempt
from openworkbench.errors import PayloadTooLarge, PermissionDenied, StoreUnavailable, WorkbenchError
from openworkbench.http_errors import api_error
from openworkbench.services.container import Services
from openworkbench.services.password_signin import REFUSED
from openworkbench.services.signin import COOKIE_NAME, LIFETIME
from openworkbench.web import csrf
from openworkbench.web.templating import render

log = logging.getLogger(__name__)

# A username, a password (or a token) and a next URL: anything larger is not this form.
FORM_MAX_BYTES = 16 * 1024
# Password checks at once (PAM sleeps its fail delay in a thread; argon2 takes 64 MiB each): a flood of guesses
# waits here instead of taking every worker thread from the rest of the server.
MAX_CONCURRENT_CHECKS = 8


def safe_next(target: str | None) -> str:
    """Only a local path: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


class SignInPages:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.checks = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)

    def page(self, request: Request, next_url: str, error: str = "", status: int = 200, *, username: str = "",
             token_open: bool = False, notice: str = "", headers: dict[str, str] | None = None) -> HTMLResponse:
        context = {"next": safe_next(next_url), "error": error, "notice": notice, "username": username[:255],
                   "token_open": token_open, "passwords": self.services.passwords.enabled}
        return render(request, "signin.html", context, status, headers)

    def refused(self, request: Request, exc: PermissionDenied, next_url: str) -> Response:
        """Another site's request gets the error alone; our own page with a stale token gets the form again."""
        if csrf.cross_site(request) is not None:
            return api_error(exc)
        return self.page(request, next_url, exc.message, status=403)

    async def sign_in(self, request: Request) -> Response:
        try:
            raw = await read_body(request, FORM_MAX_BYTES)
        except PayloadTooLarge:
            return self.page(request, "/", "The form is too large.", status=413)
        form = parse_qs(raw.decode(errors="replace"), keep_blank_values=True)
        next_url = safe_next(form.get("next", ["/"])[0])
        try:
            csrf.check(request, form.get(csrf.FIELD, [""])[0])
        except PermissionDenied as exc:
            return self.refused(request, exc, next_url)
        if "token" in form:
            return await self.with_token(request, form["token"][0].strip(), next_url)
        if not self.services.passwords.enabled:
            return self.page(request, next_url, "Enter an API token.", status=400)
        username, password = form.get("username", [""])[0], form.get("password", [""])[0]
        return await self.with_password(request, username, password, next_url)

    async def with_token(self, request: Request, token: str, next_url: str) -> Response:
        try:
            cookie = await run_in_threadpool(self.services.signin.sign_in, token)
        except StoreUnavailable:
            raise  # not "the token is not valid": the app's handler answers 503
        except WorkbenchError:
            return self.page(request, next_url, "That token is not valid (or was revoked).", status=401,
                             token_open=True)
        return signed_in(request, next_url, cookie)

    async def with_password(self, request: Request, username: str, password: str, next_url: str) -> Response:
        passwords = self.services.passwords
        address = request.client.host if request.client else "unknown"
        attempt = passwords.begin(username, address)
        if not isinstance(attempt, Attempt):
            seconds = math.ceil(attempt)
            log.warning("sign-in for user %r from %s refused unchecked: too many attempts, %d s to wait",
                        username[:255], address, seconds)
            return self.page(request, next_url, f"Too many sign-in attempts. Try again in {seconds} s.",
                             status=429, username=username, headers={"Retry-After": str(seconds)})
        try:
            async with self.checks:
                outcome = await run_in_threadpool(passwords.sign_in, attempt, username, password, address)
        finally:  # the client gone or the store failing: the keys must not stay busy
            passwords.end(attempt)
        if outcome.cookie is None:
            await asyncio.sleep(outcome.delay_s)
            return self.page(request, next_url, REFUSED, status=401, username=username)
        return signed_in(request, next_url, outcome.cookie)

    async def sign_out(self, request: Request) -> Response:
        try:
            raw = await read_body(request, FORM_MAX_BYTES)
        except PayloadTooLarge as exc:
            return api_error(exc)
        form = parse_qs(raw.decode(errors="replace"))
        try:
            csrf.check(request, form[csrf.FIELD][0] if csrf.FIELD in form else None)
        except PermissionDenied as exc:
            return api_error(exc)
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie:
            await run_in_threadpool(self.services.signin.sign_out, cookie)
        response = RedirectResponse("/auth/sign-in?signed_out=1", status_code=303)
        response.delete_cookie(COOKIE_NAME, path="/")
        return response


def signed_in(request: Request, next_url: str, cookie: str) -> Response:
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        COOKIE_NAME, cookie, max_age=int(LIFETIME.total_seconds()), httponly=True, samesite="lax",
        secure=request.url.scheme == "https", path="/",
    )
    return response


def routes(services: Services) -> list[Route]:
    """The sign-in entries of the routing table (api/routes.py)."""
    pages = SignInPages(services)

    async def sign_in_page(request: Request) -> HTMLResponse:
        query = request.query_params
        return pages.page(request, query.get("next", "/"),
                          notice="You have signed out." if query.get("signed_out") else "")

    return [Route("/auth/sign-in", sign_in_page, methods=["GET"]),
            Route("/auth/sign-in", pages.sign_in, methods=["POST"]),
            Route("/auth/sign-out", pages.sign_out, methods=["POST"])]

"""The pages a signed-in person sees: ``/`` (sessions and jobs), ``/jobs/<id>``, ``/tokens`` and ``/admin``.

Server-rendered with Jinja2; the small script in static/app.js does the rest through the API itself
(``/api/...`` with the sign-in cookie and the CSRF header, api/rpc.py), so a page can never do more than the
caller's token could. The page-only forms (tokens, disabling users) go through ``csrf.check`` and call the
service layer, whose permission checks are those of auth/permissions.py.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from openworkbench.api.limits import read_body
from openworkbench.auth.permissions import Action, Principal, allowed
from openworkbench.config import LIMIT_TYPES
from openworkbench.errors import NotFound, PayloadTooLarge, PermissionDenied, Unauthenticated, WorkbenchError
from openworkbench.http_errors import api_error
from openworkbench.ides import IDES, available
from openworkbench.services import overview
from openworkbench.services.compute import compute_envs
from openworkbench.services.container import Services
from openworkbench.services.signin import COOKIE_NAME
from openworkbench.sessions.states import FINAL, SessionState
from openworkbench.sessions.views import View
from openworkbench.web import csrf
from openworkbench.web.templating import NO_STORE, TEMPLATES  # one template set for every page

FORM_MAX_BYTES = 16 * 1024  # a token's name, a username and a CSRF token: anything larger is not our form
JOBS_SHOWN = 100  # the newest of the user's jobs on the homepage
LIMIT_LABELS = {"cpuCount": "CPUs", "memory": "Memory (MB)", "cpuTime": "CPU time (s)", "memorySwap": "Swap (MB)",
                "pids": "Processes"}
ICONS = {"RStudio": "rstudio", "JupyterLab": "jupyterlab", "Jupyter Notebook": "jupyter-notebook", "VS Code": "vscode"}
SESSION_STATES = tuple(SessionState)  # the admin page's state filter


async def signed_in(services: Services, request: Request) -> Principal | None:
    """The signed-in caller of a page, or None. From memory when the sign-in was seen in the last minute."""
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie or "." in cookie:  # a session origin's sign-in is for that session only
        return None
    principal = services.signin.cached(None, cookie)
    if principal is not None:
        return principal
    try:
        return await run_in_threadpool(services.signin.authenticate, None, cookie)
    except Unauthenticated:
        return None


def to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/auth/sign-in?next={quote(target, safe='/')}", status_code=303)


def json_block(value: Any) -> str:
    """JSON for a ``<script type="application/json">`` block: no ``<``, ``>`` or ``&`` can end it early."""
    text = value.decode() if isinstance(value, bytes) else json.dumps(value, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(request: Request, template: str, principal: Principal, status: int = 200, **context: Any) -> Response:
    token = csrf.token(request)
    response = TEMPLATES.TemplateResponse(request, template, {
        "user": principal.username, "kind": principal.kind, "csrf": token,
        "is_admin": allowed(principal, Action.READ_ALL_USERS), "path": request.url.path, **context,
    }, status_code=status, headers=NO_STORE)
    csrf.remember(response, request, token)
    return response


def ide_choices(services: Services) -> list[dict[str, Any]]:
    """Every IDE, with whether it can be launched here and, if not, why (the New Session dialog)."""
    settings = services.settings
    choices = []
    for name in IDES:
        ide = settings.ides[name]
        ok = available(ide, settings.sessions.ide_prefix)
        why = "" if ok else ("disabled on this server" if not ide.enabled else "not installed on this server")
        choices.append({"name": name, "available": ok, "why": why, "icon": ICONS.get(name, "ide"),
                        "default_cluster": ide.default_cluster or settings.default_cluster})
    return choices


async def own_sessions(services: Services, principal: Principal) -> list[View]:
    views = services.sessions.read(principal, None, None, from_store=False)
    if views is None:
        views = await run_in_threadpool(services.sessions.read, principal, None, None)
    return views


def own_jobs(services: Services, principal: Principal) -> list[dict[str, Any]]:
    """The user's own jobs, newest first; a session's IDE job is shown as its session instead."""
    jobs = services.jobs.list_for(principal, principal.username, None)
    return [job for job in reversed(jobs) if not job["sessionId"]][:JOBS_SHOWN]


async def read_form(request: Request) -> dict[str, str]:
    """A page's POSTed form, after ``csrf.check`` (PermissionDenied when another site sent it)."""
    raw = await read_body(request, FORM_MAX_BYTES)
    form = {key: values[0] for key, values in parse_qs(raw.decode(errors="replace")).items()}
    csrf.check(request, form.get(csrf.FIELD, ""))
    return form


def refusal(exc: WorkbenchError) -> Response:
    """A refused page form: the error envelope, as every other refusal of this server."""
    return api_error(exc, status=exc.http_status if exc.http_status != 200 else 400, headers=NO_STORE)


class Pages:
    """The pages' handlers, one method each, over the services they call."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [Route("/", self.home, methods=["GET"]), Route("/jobs/{job_id}", self.job_page, methods=["GET"]),
                Route("/tokens", self.tokens_page, methods=["GET"]),
                Route("/tokens", self.token_action, methods=["POST"]),
                Route("/admin", self.admin_page, methods=["GET"]),
                Route("/admin/users", self.user_action, methods=["POST"])]

    async def home(self, request: Request) -> Response:
        services = self.services
        principal = await signed_in(services, request)
        if principal is None:
            return to_sign_in(request)
        live_version = services.live.version(principal.user_id)  # before the sessions: web/live.py
        views = await own_sessions(services, principal)
        jobs = await run_in_threadpool(own_jobs, services, principal)
        envs = compute_envs(services.settings, services.clusters)
        return render(request, "home.html", principal, jobs=jobs, live_version=live_version,
                      sessions_json=json_block(b"[" + b",".join(view.raw for view in views) + b"]"),
                      envs_json=json_block({"ides": ide_choices(services), "clusters": envs["clusters"],
                                            "default_cluster": services.settings.default_cluster,
                                            "limit_labels": LIMIT_LABELS, "limit_types": list(LIMIT_TYPES)}))

    async def job_page(self, request: Request) -> Response:
        job_id: str = request.path_params["job_id"]
        principal = await signed_in(self.services, request)
        if principal is None:
            return to_sign_in(request)
        try:
            job = await run_in_threadpool(self.services.jobs.get, principal, job_id)
        except (NotFound, PermissionDenied):  # another user's job is not told apart from a missing one
            return render(request, "missing.html", principal, status=404, what=f"job '{job_id}'")
        can_stop = allowed(principal, Action.WRITE, job["user"])
        return render(request, "job.html", principal, job=job, can_stop=can_stop, job_json=json_block(job))

    async def tokens_page(self, request: Request) -> Response:
        principal = await signed_in(self.services, request)
        if principal is None:
            return to_sign_in(request)
        return await self.tokens_view(request, principal)

    async def tokens_view(self, request: Request, principal: Principal, status: int = 200,
                          **context: Any) -> Response:
        tokens = await run_in_threadpool(self.services.accounts.own_tokens, principal)
        prefix = principal.username + ":"
        listed = [{"name": t.name, "label": t.name.removeprefix(prefix), "kind": t.kind, "created": t.created,
                   "last_used": t.last_used} for t in tokens]
        return render(request, "tokens.html", principal, status=status, tokens=listed, **context)

    async def posted(self, request: Request) -> tuple[Principal, dict[str, str]] | Response:
        """A page form's caller and fields, or the refusal: not signed in, cross-site, too large."""
        principal = await signed_in(self.services, request)
        if principal is None:
            return refusal(Unauthenticated("Not signed in, or the sign-in has expired"))
        try:
            return principal, await read_form(request)
        except (PermissionDenied, PayloadTooLarge) as exc:
            return refusal(exc)

    async def token_action(self, request: Request) -> Response:
        found = await self.posted(request)
        if isinstance(found, Response):
            return found
        principal, form = found
        accounts = self.services.accounts
        try:
            if form.get("action") == "revoke":
                name = form.get("name", "")
                await run_in_threadpool(accounts.revoke_own_token, principal, name)
                return await self.tokens_view(request, principal, notice=f"Token '{name}' revoked.")
            name, token = await run_in_threadpool(accounts.create_own_token, principal, form.get("label", ""))
        except WorkbenchError as exc:
            return await self.tokens_view(request, principal, status=400, error=exc.message,
                                          label=form.get("label", ""))
        return await self.tokens_view(request, principal, status=201, new_token=token, new_name=name)

    async def admin_page(self, request: Request) -> Response:
        user, state, ide = (request.query_params.get(name, "") for name in ("user", "state", "ide"))
        principal = await signed_in(self.services, request)
        if principal is None:
            return to_sign_in(request)
        if not allowed(principal, Action.READ_ALL_USERS):
            return render(request, "missing.html", principal, status=403, what="the Admin view",
                          why="It is for administrators.")
        return await self.admin_view(request, principal, overview.Filters(user.strip(), state.strip(), ide.strip()))

    async def admin_view(self, request: Request, principal: Principal, filters: overview.Filters,
                         status: int = 200, **context: Any) -> Response:
        services = self.services

        def read() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
            return (overview.all_sessions(services.store, principal, filters),
                    overview.all_jobs(services.store, principal, filters), services.accounts.list_users())

        sessions, jobs, users = await run_in_threadpool(read)
        return render(request, "admin.html", principal, status=status, sessions=sessions, jobs=jobs, users=users,
                      filters=filters, states=SESSION_STATES, final_states=FINAL, ides=list(IDES),
                      can_write=allowed(principal, Action.MANAGE_USERS), **context)

    async def user_action(self, request: Request) -> Response:
        found = await self.posted(request)
        if isinstance(found, Response):
            return found
        principal, form = found
        username, action = form.get("username", ""), form.get("action", "")
        try:
            if action not in ("disable", "enable"):
                raise NotFound(f"no user action {action[:20]!r}")
            await run_in_threadpool(self.services.accounts.set_disabled, principal, username, action == "disable")
        except PermissionDenied as exc:
            return refusal(exc)
        except WorkbenchError as exc:
            return await self.admin_view(request, principal, overview.Filters(), status=400, error=exc.message)
        return await self.admin_view(request, principal, overview.Filters(), notice=f"User '{username}' {action}d.")


def routes(services: Services) -> list[Route]:
    """The pages' entries of the routing table (api/routes.py)."""
    return Pages(services).routes()

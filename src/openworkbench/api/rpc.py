"""The RPC envelope: ``POST /api/<method>`` with ``{"method", "kwparams"}``, ``GET`` for methods
without parameters, results as ``{"result": ...}`` and every failure as ``{"error": {code, message}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from openworkbench import metrics
from openworkbench.api.limits import check_depth, has_body, nested_too_deeply, read_body
from openworkbench.api.params import Params
from openworkbench.auth.permissions import Principal
from openworkbench.auth.tokens import parse_authorization
from openworkbench.errors import BadRequest, InternalError, UnknownMethod, WorkbenchError
from openworkbench.http_errors import api_error, unexpected
from openworkbench.services.container import Services
from openworkbench.services.readthrough import NeedsStore, memory_only
from openworkbench.services.signin import COOKIE_NAME, RPC_COOKIE_HEADER, session_rpc_cookie
from openworkbench.web import csrf

_CLOSE = {"connection": "close"}
Handler = Callable[[Services, Principal, Any], Awaitable[Any]]
Blocking = Callable[[Services, Principal, Any], Any]


@dataclass(frozen=True)
class Method:
    """A method's parameters and its handler: ``blocking`` (store work, run in the request's one thread
    hop) or ``handler`` (async: streams, background work in the event loop). ``memory_first``: ``blocking``
    reads through caches (services/readthrough.py), so it is tried first on the event loop once the caller
    is known from memory, and runs in the thread only when a cache needs the store."""

    params: type[Params]
    handler: Handler | None = None
    blocking: Blocking | None = None
    allow_get: bool = False
    memory_first: bool = False


@dataclass(frozen=True)
class Credentials:
    """Who may be calling: the Authorization header, a session's RPC cookie, or our own page's sign-in cookie."""

    authorization: str | None
    rpc_cookie: str | None = None
    page_cookie: str | None = None  # set only when the request passed the CSRF check (``credentials``)

    def cached(self, services: Services) -> Principal | None:
        """The caller from memory alone, or None: ask ``caller`` (a session's RPC cookie always asks)."""
        if self.rpc_cookie and parse_authorization(self.authorization) is None:
            return None
        return services.signin.cached(self.authorization, self.page_cookie)

    def caller(self, services: Services) -> Principal:
        return services.signin.rpc_caller(self.authorization, self.rpc_cookie, self.page_cookie)

    def expiry_check_at(self, services: Services) -> float | None:
        """For a page's sign-in (the only credential that expires): when its cached entry goes stale
        (``time.monotonic()``), by the sign-in's expiry at the latest. None for anything else, or if not cached."""
        if not self.page_cookie or self.rpc_cookie or parse_authorization(self.authorization) is not None:
            return None
        return services.signin.cookie_fresh_until(self.page_cookie)


def credentials(request: Request) -> Credentials:
    """The request's credentials. The sign-in cookie counts only for a call of one of our pages: one that
    sends ``X-OWB-CSRF`` (which only our page can know) and passes ``csrf.check`` (that header equals the
    ``owb_csrf`` cookie, and the request is same-origin). Without that header the cookie is ignored, as it
    always was: another site's form or ``fetch()`` gets the 401 of a call without credentials."""
    headers = request.headers
    authorization, rpc_cookie = headers.get("authorization"), _rpc_cookie(headers)
    if parse_authorization(authorization) is not None or rpc_cookie or csrf.HEADER not in headers:
        return Credentials(authorization, rpc_cookie)  # the API's own clients, and sessions' code
    cookie = request.cookies.get(COOKIE_NAME)
    if not cookie or "." in cookie:  # a session origin's own sign-in (``<part>.<random>``) never opens the API
        return Credentials(authorization, rpc_cookie)
    csrf.check(request, None)  # PermissionDenied: a header that is wrong, or another site's request
    return Credentials(authorization, None, cookie)


def describe_validation(exc: ValidationError, prefix: str = "kwparams") -> str:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in (prefix, *err["loc"]))
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown parameter '{where}'")
        elif err["type"] == "missing":
            problems.append(f"missing required parameter '{where}'")
        else:
            problems.append(f"invalid '{where}': {err['msg']}")
    return "; ".join(problems)


def _drop_nulls(value: Any) -> Any:
    # Clients drop kwparams whose value is null, so null and absent mean the same.
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    return value


def parse_kwparams(http_method: str, raw: bytes, name: str, method: Method) -> dict[str, Any]:
    if http_method == "GET":
        if not method.allow_get:
            raise BadRequest(f"method '{name}' takes parameters: use POST /api/{name}")
        return {}
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise nested_too_deeply() from None
    check_depth(raw, body)  # before anything recursive (pydantic, _drop_nulls) walks it
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object with 'method' and 'kwparams'")
    if body.get("method") is not None and body["method"] != name:
        raise BadRequest(f"'method' in the body ({body['method']!r}) does not match the URL ({name!r})")
    unknown = sorted(set(body) - {"method", "kwparams"})
    if unknown:
        raise BadRequest(f"unknown field(s) in the request body: {', '.join(unknown)}")
    kwparams = body.get("kwparams")
    if kwparams is None:
        return {}
    if not isinstance(kwparams, dict):
        raise BadRequest("'kwparams' must be a JSON object")
    return dict(_drop_nulls(kwparams))


def prepare(services: Services, methods: dict[str, Method], name: str, http_method: str, raw: bytes,
            creds: Credentials) -> tuple[Method, Principal, Params, Any]:
    """Everything up to the handler, in the order clients see errors: credentials, method, parameters.

    A blocking handler runs here too, so a call costs one thread hop, not one per step.
    """
    principal = creds.caller(services)
    method = methods.get(name)
    if method is None:
        raise UnknownMethod(f"unknown method '{name}'")
    try:
        params = method.params.model_validate(parse_kwparams(http_method, raw, name, method))
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from None
    result = method.blocking(services, principal, params) if method.blocking else None
    return method, principal, params, result


def from_memory(services: Services, methods: dict[str, Method], name: str, http_method: str, raw: bytes,
                creds: Credentials) -> Any:
    """``prepare`` and the handler without the store or a thread, when memory can answer; else None."""
    method = methods.get(name)
    if method is None or not method.memory_first or method.blocking is None:
        return None
    principal = creds.cached(services)
    if principal is None:
        return None
    try:
        params = method.params.model_validate(parse_kwparams(http_method, raw, name, method))
    except ValidationError as exc:
        raise BadRequest(describe_validation(exc)) from None
    try:
        with memory_only():
            return method.blocking(services, principal, params)
    except NeedsStore:
        return None


async def dispatch(services: Services, methods: dict[str, Method], name: str, request: Request,
                   max_body: int) -> Response:
    unread = request.method != "GET" and has_body(request.headers)
    try:
        creds = credentials(request)
        if unread:
            # Credentials first, then the body: a caller the server does not know never makes it hold one.
            # (Asked again below, once the body is in: a revocation may land while it arrives.)
            if creds.cached(services) is None:
                await run_in_threadpool(creds.caller, services)
            raw = await read_body(request, max_body)
            unread = False
        else:
            raw = b""
        result = from_memory(services, methods, name, request.method, raw, creds)
        if result is None:
            method, caller, params, result = await run_in_threadpool(
                prepare, services, methods, name, request.method, raw, creds,
            )
            if method.handler is not None:
                result = await method.handler(services, caller, params)
    except WorkbenchError as exc:
        metrics.count_api(name if name in methods else metrics.UNKNOWN_METHOD, type(exc))
        # Refused before its body was read: close rather than let the server drain the rest.
        return api_error(exc, headers=_CLOSE if unread else None, where=f"{request.method} /api/{name}")
    metrics.count_api(name)
    if isinstance(result, Response):
        return result
    return JSONResponse({"result": result})


class RpcEndpoint:
    """The endpoint of ``GET``/``POST /api/{method}`` (api/routes.py): an ASGI app, so that no per-request
    wrapper of Starlette's runs on the API's hot path."""

    def __init__(self, services: Services, methods: dict[str, Method]) -> None:
        self.services = services
        self.methods = methods
        self.max_body = services.settings.server.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name: str = scope["path_params"]["method"]
        request = Request(scope, receive)
        if request.method == "HEAD":  # the route's GET would let it in; a call has a body to answer with
            raise HTTPException(405, headers={"Allow": "GET, POST"})
        try:
            response = await dispatch(self.services, self.methods, name, request, self.max_body)
        except Exception as exc:  # a bug or a failing store: the error body of every other failure, and a log line
            metrics.count_api(name if name in self.methods else metrics.UNKNOWN_METHOD, InternalError)
            response = api_error(unexpected(exc, f"{request.method} {request.url.path}"))
        await response(scope, receive, send)


def _rpc_cookie(headers: Any) -> str | None:
    return session_rpc_cookie(headers.get(RPC_COOKIE_HEADER), headers.get("cookie"))

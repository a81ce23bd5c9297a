"""``/api/openapi.json`` and ``/docs``: the RPC methods described as OpenAPI 3.1, browsable in Swagger UI.

Each method's kwparams schema is generated from its model in ``api/params.py`` (pydantic's JSON schema), so
the document follows the models. Result shapes come from ``models.py`` where a result type exists there and
are otherwise loose objects naming the fields docs/api.md describes. Swagger UI's assets are served from the
``fastapi_offline`` package (FastAPI's "self-hosting JavaScript and CSS for docs"): no CDN is needed.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from openworkbench import __version__, models
from openworkbench.api.rpc import Method

OPENAPI_PATH, DOCS_PATH, ASSETS_PATH = "/api/openapi.json", "/docs", "/docs/assets"
# FastAPI's Swagger UI page, with its start-up script as a file (web/static/swagger-init.js): the CSP of our
# pages (web/headers.py) allows no inline script.
DOCS_PAGE = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Open Workbench API</title>
<link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css"><link rel="icon" href="{ASSETS_PATH}/favicon.png">
</head><body><div id="swagger-ui"></div>
<script src="{ASSETS_PATH}/swagger-ui-bundle.js"></script><script src="/static/swagger-init.js"></script>
</body></html>
"""
REF = "#/components/schemas/{model}"

SUMMARIES = {
    "version": "The server's version and the features it serves.",
    "whoami": "The caller: username and effective token kind (Open Workbench only, not in the product).",
    "get_users": "Every registered user (admin-level token).",
    "get_compute_envs": "The clusters, their limits, queues and constraints, and the IDEs.",
    "launch_job": "Launch a job on a cluster.",
    "get_job_output": "Stream a job's output as NDJSON until it ends.",
    "stop_job": "Stop (SIGTERM) or kill a job.",
    "get_session": "List sessions (and jobs).",
    "launch_session": "Launch an IDE session; it starts in the background.",
    "resume_session": "Resume a suspended session.",
    "stop_session": "Stop or suspend sessions.",
}

_JOB_FIELDS = ("id", "name", "cluster", "user", "status", "statusMessage", "statusCode", "exitCode", "pid", "host",
               "exe", "command", "args", "stdin", "stdoutFile", "stderrFile", "workingDirectory", "environment",
               "tags", "queues", "placementConstraints", "resourceLimits", "config", "mounts", "exposedPorts",
               "container", "metadata", "resourceProfile", "sessionId", "submissionTime", "lastUpdateTime")
_SESSION_FIELDS = ("id", "name", "label", "display_name", "url", "user", "workbench", "activity_state",
                   "status_detail", "created", "last_state_updated", "last_used", "project", "project_id", "running",
                   "executing", "working_dir", "save_prompt_required", "suspend_size", "job_id", "launch_parameters")
_USER_FIELDS = ("username", "status", "isAdmin", "isSuperAdmin", "uid", "lastSignIn", "created")


def _loose(description: str, fields: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    """An object that may carry more than it names: the result shapes have no model yet."""
    named = {name: {} for name in fields} | properties
    return {"type": "object", "description": description, "properties": named, "additionalProperties": True}


def _component(name: str, fallback: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``models.<name>``'s schema when models.py has that result type; ``fallback`` until it does."""
    model = getattr(models, name, None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        schema = model.model_json_schema(mode="serialization", ref_template=REF)
        defs.update(schema.pop("$defs", {}))
        defs[name] = schema
    else:
        defs[name] = fallback
    return {"$ref": REF.format(model=name)}


def _results(defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    job = _component("WorkbenchJob", _loose("A job (docs/api.md#workbenchjob).", _JOB_FIELDS), defs)
    session = _component("WorkbenchSession", _loose("A session (docs/api.md#workbenchsession).", _SESSION_FIELDS),
                         defs)
    user = _component("WorkbenchUser", _loose("A registered user.", _USER_FIELDS), defs)
    address = _loose("The session's address.", ("id", "url", "project_id"))
    strings = {"type": "array", "items": {"type": "string"}}
    return {
        "version": _loose("Version and features.", version={"type": "object"}, features=strings),
        "whoami": _loose("The caller.", username={"type": "string"}, kind={"type": "string"}),
        "get_users": {"type": "array", "items": user},
        "get_compute_envs": _loose("Compute environments.", clusters={"type": "array", "items": {"type": "object"}},
                                   workbenches={"type": "object"}),
        "launch_job": _loose("The stored job.", job=job),
        "stop_job": _loose("Empty."),
        "get_session": _loose("Sessions, and jobs when asked for.", sessions={"type": "array", "items": session},
                              jobs={"type": "array", "items": job}),
        "launch_session": address,
        "resume_session": address,
        "stop_session": _loose("Empty."),
    }


_ERROR = {
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "integer"}, "message": {"type": "string"}}}},
}
_OUTPUT_CHUNK = {
    "type": "object",
    "description": "One line of the stream; an error in mid-stream is one more line with the error envelope.",
    "properties": {"jobId": {"type": "string"}, "outputType": {"enum": ["stdout", "stderr"]},
                   "output": {"type": "string"}},
}
_FAILURES = {
    "400": "Unreadable body; unknown, missing or mistyped kwparams (named in the message).",
    "401": "No, bad or revoked credentials, or a disabled user.",
    "403": "The token lacks the permission the call needs.",
    "404": "No such method.",
    "500": "Internal error.",
}


def _operation(name: str, method: Method, kwparams: dict[str, Any], result: dict[str, Any] | None,
               http: str) -> dict[str, Any]:
    envelope = {"type": "object", "required": ["result"], "properties": {"result": result or {}}}
    ok: dict[str, Any] = {"application/json": {"schema": {"oneOf": [envelope, {"$ref": REF.format(model="Error")}]}}}
    if result is None:  # get_job_output: a stream, or the error envelope before it starts
        ok = {"application/x-ndjson": {"schema": {"$ref": REF.format(model="OutputChunk")}},
              "application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    error = {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}
    operation: dict[str, Any] = {
        "operationId": name if http == "post" else f"{name}_get",
        "summary": SUMMARIES.get(name, name),
        "tags": ["RPC"],
        "responses": {"200": {"description": "The result; application errors also come as HTTP 200 with the "
                                              "error envelope (codes 1-5, docs/api.md#error-codes).", "content": ok},
                      **{code: {"description": text, "content": error} for code, text in _FAILURES.items()}},
    }
    if http == "post":
        body = {"type": "object", "additionalProperties": False, "properties": {
            "method": {"type": "string", "const": name, "description": "Optional; must equal the path's method."},
            "kwparams": kwparams}}
        operation["requestBody"] = {"required": False, "content": {"application/json": {
            "schema": body, "example": {"method": name, "kwparams": {}}}}}
    return operation


def build_document(methods: dict[str, Method]) -> dict[str, Any]:
    """The OpenAPI document of ``methods``."""
    params = sorted({method.params for method in methods.values()}, key=lambda model: model.__name__)
    refs, top = models_json_schema([(model, "validation") for model in params], ref_template=REF)
    defs: dict[str, Any] = dict(top.get("$defs", {}))
    results = _results(defs)
    defs.update(Error=_ERROR, OutputChunk=_OUTPUT_CHUNK)
    paths: dict[str, Any] = {}
    for name, method in methods.items():
        kwparams = refs[(method.params, "validation")]
        result = None if name == "get_job_output" else results.get(name, _loose("The method's result."))
        item = {"post": _operation(name, method, kwparams, result, "post")}
        if method.allow_get:
            item["get"] = _operation(name, method, kwparams, result, "get")
        paths[f"/api/{name}"] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "Open Workbench API", "version": __version__,
                 "description": "The Posit Workbench API as Open Workbench serves it: every method is "
                                "`POST /api/<method>` with `{\"method\", \"kwparams\"}`; results come as "
                                "`{\"result\": ...}`, failures as `{\"error\": {\"code\", \"message\"}}`."},
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {
            "apiToken": {"type": "http", "scheme": "bearer", "description": "An API token (`Key <token>` works too)."},
            "sessionRpcCookie": {"type": "apiKey", "in": "header", "name": "X-RS-Session-Server-RPC-Cookie",
                                 "description": "Inside a session: $RS_SESSION_RPC_COOKIE."}}},
        "security": [{"apiToken": []}, {"sessionRpcCookie": []}],
    }


def routes(methods: dict[str, Method]) -> list[BaseRoute]:
    """The document and the docs page. Both are public: they describe the API and hold no data."""
    body = json.dumps(build_document(methods)).encode()

    async def openapi_document(request: Request) -> Response:
        return Response(body, media_type="application/json")

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(DOCS_PAGE)

    assets = StaticFiles(directory=str(resources.files("fastapi_offline") / "static"))
    return [Route(OPENAPI_PATH, openapi_document, methods=["GET"]), Route(DOCS_PATH, docs_page, methods=["GET"]),
            Mount(ASSETS_PATH, assets, name="docs-assets")]

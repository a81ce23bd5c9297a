"""/api/openapi.json, /docs (real Chromium, no network beyond this machine), /metrics and JSON logs, against a
real server: the document covers every method and documented kwparam, /metrics lets in only admin-level
tokens and the metrics token, and shows a launched job and a real JupyterLab session."""

from __future__ import annotations

import json
import pwd
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from openworkbench.api.methods import METHODS
from tests.conftest import WORKBENCH, Server, clean_env
from tests.sessions_helpers import launch, session_server, wait_state

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"
CHROMIUM = Path("/usr/bin/chromium")
JUPYTER_LAB = Path("/opt/openworkbench/jupyter/bin/jupyter-lab")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRICS_TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    extra = f'[server]\nmetrics_token = "{METRICS_TOKEN}"\n'
    with session_server(tmp_path_factory.mktemp("observe") / "data", extra=extra) as server:
        yield server


# -- OpenAPI ----------------------------------------------------------------------------------------


def documented_kwparams() -> dict[str, set[str]]:
    """``method -> names`` from the kwparam tables of docs/api.md; ``job.<field>`` from launch_job's field table."""
    found: dict[str, set[str]] = {}
    method, table = None, None
    for line in DOCS.read_text().splitlines():
        if line.startswith("### "):
            method, table = line[4:].strip(), None
        elif line.startswith("| kwparam") and method in METHODS:
            table = method
        elif line.startswith("| field | type") and method == "launch_job":
            table = "launch_job.job"
        elif not line.startswith("|"):
            table = None
        elif table and not line.startswith("|---"):
            first_cell = line.split("|")[1]
            found.setdefault(table, set()).update(re.findall(r"`([A-Za-z_]+)`", first_cell))
    return found


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_openapi_covers_every_method_and_documented_kwparam(srv: Server) -> None:
    answer = httpx.get(f"{srv.url}/api/openapi.json")  # public: it describes the API and holds no data
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    document = answer.json()
    assert document["openapi"].startswith("3.1")
    documented = documented_kwparams()
    assert set(documented) >= {"launch_job", "launch_session", "get_session", "stop_session", "launch_job.job"}
    for name, method in METHODS.items():
        item = document["paths"][f"/api/{name}"]
        assert ("get" in item) == method.allow_get, name
        body = item["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["method"]["const"] == name
        kwparams = resolve(document, body["properties"]["kwparams"])
        assert set(kwparams["properties"]) == set(method.params.model_fields), name
        assert documented.get(name, set()) <= set(kwparams["properties"]), name
        assert "200" in item["post"]["responses"] and "401" in item["post"]["responses"]
    job = resolve(document, resolve(document, document["paths"]["/api/launch_job"]["post"]["requestBody"][
        "content"]["application/json"]["schema"]["properties"]["kwparams"])["properties"]["job"])
    assert {snake(field) for field in documented["launch_job.job"]} <= set(job["properties"])
    # Every reference resolves: the document stands on its own.
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)):
        assert ref in document["components"]["schemas"], ref
    assert "ndjson" in str(document["paths"]["/api/get_job_output"]["post"]["responses"]["200"]["content"])


def test_docs_page_is_served_from_this_server(srv: Server) -> None:
    page = httpx.get(f"{srv.url}/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for address in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert address.startswith(("/docs/assets/", "/static/")), address  # no CDN: these machines reach none
        assert httpx.get(srv.url + address).status_code == 200, address
    start = httpx.get(f"{srv.url}/static/swagger-init.js")  # a file: the pages' CSP allows no inline script
    assert 'url: "/api/openapi.json"' in start.text
    assert "'unsafe-inline'" not in page.headers["content-security-policy"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium missing: run scripts/install-system-deps.sh")
def test_docs_render_every_method_in_a_real_browser(srv: Server, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    foreign: list[str] = []
    with sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = context.new_page()
        page.on("request", lambda request: foreign.append(request.url)
                if urlsplit(request.url).hostname not in ("127.0.0.1", None) else None)
        page.goto(f"{srv.url}/docs")
        operations = sum(1 + method.allow_get for method in METHODS.values())
        expect(page.locator(".opblock")).to_have_count(operations, timeout=60_000)
        page.locator("#operations-RPC-launch_job").click()
        expect(page.locator("#operations-RPC-launch_job")).to_contain_text("kwparams", timeout=30_000)
        context.close()
    assert foreign == [], foreign


# -- /metrics ---------------------------------------------------------------------------------------


def scrape(srv: Server, token: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{srv.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_lets_in_admins_and_the_metrics_token_only(srv: Server, posix_user: pwd.struct_passwd) -> None:
    def status(headers: dict[str, str]) -> tuple[int, Any]:
        answer = httpx.get(f"{srv.url}/metrics", headers=headers)
        return answer.status_code, answer.json() if answer.status_code != 200 else None

    user = srv.token(posix_user.pw_name)
    assert status({}) == (401, {"error": {"code": 401, "message": "Authentication required: send "
                                                                  "'Authorization: Bearer <api token>'"}})
    assert status({"Authorization": f"Bearer {METRICS_TOKEN}x"})[0] == 401
    code, body = status({"Authorization": f"Bearer {user}"})
    assert code == 403 and "metrics_token" in body["error"]["message"]
    for kind in ("admin", "admin-readonly", "super-admin"):
        scrape(srv, srv.token(f"root{kind}", kind))
    samples = scrape(srv, METRICS_TOKEN)
    assert value(samples, "openworkbench_auth_failures_total", where="metrics") >= 2


@pytest.mark.skipif(not JUPYTER_LAB.exists(), reason="IDEs not installed: run scripts/install-ides.sh")
def test_metrics_show_jobs_sessions_latencies_and_requests(srv: Server, posix_user: pwd.struct_passwd) -> None:
    user = srv.token(posix_user.pw_name)
    before = scrape(srv, METRICS_TOKEN)
    job = srv.rpc("launch_job", user, job={"name": "sleeper", "exe": "/bin/sleep", "args": ["60"]})["job"]
    srv.wait_job(user, job["id"], ("Running",))
    started = launch(srv, user, "JupyterLab")
    wait_state(srv, user, started["id"], ("running",))
    assert httpx.get(srv.url + started["url"] + "api/status", headers={"Authorization": f"Bearer {user}"}
                     ).status_code == 200
    assert httpx.get(srv.url + started["url"] + "api/status").status_code == 401  # refused at the proxy
    srv.post("version", "not-a-token")

    after = scrape(srv, METRICS_TOKEN)
    assert value(after, "openworkbench_jobs", status="Running", cluster="Local") >= 2  # the sleeper and the IDE
    assert value(after, "openworkbench_sessions", state="running", ide="JupyterLab") == 1
    start = {"ide": "JupyterLab", "cluster": "Local", "kind": "launch"}
    assert value(after, "openworkbench_session_start_seconds_count", **start) == 1
    assert 0 < value(after, "openworkbench_session_start_seconds_sum", **start) < 120
    assert value(after, "openworkbench_job_start_seconds_count", cluster="Local") >= 2
    grew = {name: value(after, name, **labels) - value(before, name, **labels) for name, labels in [
        ("openworkbench_api_requests_total", {"method": "launch_job", "outcome": "ok"}),
        ("openworkbench_api_requests_total", {"method": "version", "outcome": "unauthenticated"}),
        ("openworkbench_auth_failures_total", {"where": "api"}),
        ("openworkbench_auth_failures_total", {"where": "proxy"}),
        ("openworkbench_proxy_requests_total", {"kind": "http", "status": "2xx"}),
        ("openworkbench_proxy_request_duration_seconds_count", {}),
    ]}
    assert all(delta >= 1 for delta in grew.values()), grew
    srv.rpc("stop_session", user, session_ids=started["id"], force_quit=True)
    srv.rpc("stop_job", user, job_id=job["id"], force_quit=True)
    wait_state(srv, user, started["id"], ("killed",))
    ended = scrape(srv, METRICS_TOKEN)  # counted at scrape time: the gauges follow the store
    assert value(ended, "openworkbench_sessions", state="running", ide="JupyterLab") == 0
    assert value(ended, "openworkbench_sessions", state="killed", ide="JupyterLab") == 1


# -- configuration and logs -------------------------------------------------------------------------


def test_json_logs_and_a_short_metrics_token_refused(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", config_text='[server]\nlog_format = "json"\n').start()
    try:
        token = server.token("root", "admin")
        assert httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any("Open Workbench serving on" in entry["message"] for entry in entries)
    assert any(entry["logger"].startswith("uvicorn") for entry in entries)

    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nmetrics_token = "short"\n')
    proc = subprocess.run([WORKBENCH, "serve", "--config", str(bad), "--data-dir", str(tmp_path / "d2")],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    assert proc.returncode == 1 and "server.metrics_token" in proc.stderr and "16 characters" in proc.stderr

"""Issue 9, attack 5 and the X-Forwarded item, done for real against real servers in a real Chromium.

- Login CSRF: another site's page auto-submits the attacker's token to /auth/sign-in; another site's form posts
  /auth/sign-out. Both refused; the victim is neither signed in as the attacker nor signed out.
- One origin for every IDE: a hostile IDE (tests/fake_ide.py, started as the user by the real launch path) answers
  with ``Service-Worker-Allowed: /``, a cookie named like the server's sign-in and a ``Path=/`` cookie. The
  browser sees neither of the first two, the third only under the session's prefix, and a worker for "/" fails.
- Per-session origins (server.session_domain on *.localhost, which Chromium resolves to loopback): the ticket
  redirect, a host-only cookie per session origin, and a replayed or another session's ticket refused.
- X-Forwarded-Host from an untrusted client does not make a cross-origin write pass; from a trusted proxy it is
  the Host.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import pwd
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright

from openworkbench.config import load_settings
from openworkbench.errors import ConfigError
from tests.conftest import Server, free_port, temporary_posix_user
from tests.sessions_helpers import launch, session_config, wait_state

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FAKE_IDE = Path(__file__).with_name("fake_ide.py")
JUPYTER_LAB = Path("/opt/openworkbench/jupyter/bin/jupyter-lab")
IDE = "Jupyter Notebook"  # the hostile IDE is configured as this IDE's executable

if not CHROMIUM.exists():
    pytest.skip("Chromium missing: run scripts/install-system-deps.sh (make test does)", allow_module_level=True)


@dataclass
class Stack:
    server: Server
    runtime: Path
    victim: str
    victim_token: str  # signs in in the browser
    victim_session: dict[str, Any]
    attacker_token: str
    attacker_session: dict[str, Any]


@contextlib.contextmanager
def hostile_ide_dir() -> Iterator[Path]:
    """The hostile IDE where the session's user can run it (the worktree and pytest's dirs are not readable)."""
    where = Path("/tmp") / f"owb-hostile-ide-{secrets.token_hex(4)}"
    where.mkdir(mode=0o755)
    exe = where / "fake_ide.py"
    shutil.copy(FAKE_IDE, exe)
    exe.chmod(0o755)
    try:
        yield exe
    finally:
        shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def stack(data_dir: Path, victim: pwd.struct_passwd, server_extra: str = "", port: int | None = None
          ) -> Iterator[Stack]:
    """A server whose Jupyter Notebook is the hostile IDE; a running session each for a victim and an attacker."""
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    with hostile_ide_dir() as exe, temporary_posix_user("owba") as attacker:
        config = session_config(runtime, f'[ides."{IDE}"]\nexe = "{exe}"\n') + server_extra
        server = Server(data_dir, config_text=config, port=port or free_port()).start()
        try:
            victim_api, attacker_api = server.token(victim.pw_name), server.token(attacker.pw_name)
            victim_session = launch(server, victim_api, IDE, name="victim")
            attacker_session = launch(server, attacker_api, IDE, name="attacker")
            wait_state(server, victim_api, victim_session["id"], ("running",))
            wait_state(server, attacker_api, attacker_session["id"], ("running",))
            yield Stack(server, runtime, victim.pw_name, server.token(victim.pw_name), victim_session,
                        attacker_api, attacker_session)
            for token, started in ((victim_api, victim_session), (attacker_api, attacker_session)):
                server.rpc("stop_session", token, session_ids=started["id"])
                wait_state(server, token, started["id"], ("finished", "killed"))
        finally:
            server.stop()
            shutil.rmtree(runtime, ignore_errors=True)


def prefix_of(session: dict[str, Any]) -> str:
    """``/s/<part>/`` of a session's url, whether the url is a path or a per-session origin's URL."""
    return urlsplit(session["url"]).path


def part_of(session: dict[str, Any]) -> str:
    return prefix_of(session).split("/")[2]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory, posix_user: pwd.struct_passwd) -> Iterator[Stack]:
    # 127.0.0.2 stands for a reverse proxy: the tests connect from it to show that a trusted proxy is believed.
    with stack(tmp_path_factory.mktemp("single") / "data", posix_user,
               '[server]\ntrusted_proxies = ["127.0.0.2/32"]\n') as built:
        yield built


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserContext]:
    with sync_playwright() as driver:
        context = launch_chromium(driver, tmp_path)
        yield context
        context.close()


def launch_chromium(driver: Playwright, tmp_path: Path) -> BrowserContext:
    context = driver.chromium.launch_persistent_context(
        tmp_path / "profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    context.set_default_timeout(30_000)
    return context


@contextlib.contextmanager
def attacker_site(html_for: dict[str, str]) -> Iterator[str]:
    """Another site: a tiny HTTP server of the test, reached as ``attacker.localhost`` (loopback in Chromium)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = html_for.get(self.path, "not here").encode()
            self.send_response(200 if self.path in html_for else 404)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://attacker.localhost:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()


def auto_submit(action: str, fields: dict[str, str]) -> str:
    inputs = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in fields.items())
    return (f'<!doctype html><form method="post" action="{action}">{inputs}</form>'
            "<script>document.forms[0].submit()</script>")


def sign_in(page: Page, main: str, token: str, next_path: str) -> int:
    """The real sign-in form, filled and submitted as a person would; the POST's status."""
    page.goto(f"{main}/auth/sign-in?next={next_path}")
    page.get_by_text("Sign in with an API token").click()
    page.locator("#token").fill(token)
    with page.expect_response(lambda r: r.request.method == "POST" and "/auth/sign-in" in r.url) as posted:
        page.get_by_role("button", name="Sign in with token").click()
    return posted.value.status


def sign_in_cookies(context: BrowserContext) -> list[dict[str, Any]]:
    return [dict(c) for c in context.cookies() if c["name"] == "owb_session"]


def test_origin_settings_are_checked() -> None:
    assert load_settings(server={"session_domain": "sessions.example.com"}).server.session_domain == \
        "https://sessions.example.com"
    assert load_settings(server={"session_domain": "http://owb.localhost:8787/"}).server.session_domain == \
        "http://owb.localhost:8787"
    for bad, key in (({"session_domain": "ftp://x.example"}, "session_domain"),
                     ({"session_domain": "https://x.example/path"}, "session_domain"),
                     ({"trusted_proxies": ["10.0.0.0/8", "proxy.example"]}, "trusted_proxies")):
        with pytest.raises(ConfigError, match=f"server.{key}"):
            load_settings(server=bad)


# -- (a) login CSRF ---------------------------------------------------------------------------------------------

def test_cross_site_sign_in_and_sign_out_are_refused(single: Stack, browser: BrowserContext) -> None:
    main = single.server.url
    attacker_prefix = prefix_of(single.attacker_session)
    pages = {
        "/sign-in": auto_submit(f"{main}/auth/sign-in", {"token": single.attacker_token, "next": attacker_prefix}),
        "/sign-out": auto_submit(f"{main}/auth/sign-out", {}),
    }
    page = browser.new_page()
    with attacker_site(pages) as site:
        # The victim, not signed in, visits the attacker's page: its form posts the attacker's token.
        with page.expect_response(lambda r: r.url == f"{main}/auth/sign-in") as posted:
            page.goto(site + "/sign-in")
        assert posted.value.request.headers.get("origin") == site  # the browser really says where it comes from
        assert posted.value.status == 403
        assert "Cross-site request refused" in posted.value.json()["error"]["message"]
        assert sign_in_cookies(browser) == []  # not signed in as the attacker
        assert browser.request.get(main + attacker_prefix, max_redirects=0).status in (302, 401)

        # The victim signs in herself, on the real form: that works (and lands in her own session).
        victim_prefix = prefix_of(single.victim_session)
        assert sign_in(page, main, single.victim_token, victim_prefix) == 303
        page.wait_for_url(f"{main}{victim_prefix}")
        signed_in = sign_in_cookies(browser)
        assert len(signed_in) == 1

        # Another site's form posting /auth/sign-out: refused; she is still signed in with the same cookie.
        with page.expect_response(lambda r: r.url == f"{main}/auth/sign-out") as posted:
            page.goto(site + "/sign-out")
        assert posted.value.status == 403
        assert sign_in_cookies(browser) == signed_in
        assert browser.request.get(main + victim_prefix + "echo").status == 200


def test_sign_in_needs_both_same_origin_and_the_token(single: Stack) -> None:
    """Each check alone refuses: the right token from another origin, and the right origin without the token."""
    main, client = single.server.url, httpx.Client(base_url=single.server.url)
    form = client.get("/auth/sign-in")
    token = parse_qs_form_token(form.text)
    assert client.cookies.get("owb_csrf") == token
    fields = {"token": single.victim_token, "next": "/", "csrf_token": token}
    cross = client.post("/auth/sign-in", data=fields, headers={"Origin": "http://attacker.localhost"})
    assert cross.status_code == 403 and "owb_session" not in cross.cookies
    assert cross.json()["error"]["message"].startswith("Cross-site request refused")
    cross_fetch = client.post("/auth/sign-in", data=fields, headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_fetch.status_code == 403 and "owb_session" not in cross_fetch.cookies
    no_token = client.post("/auth/sign-in", data={**fields, "csrf_token": "x" * 43}, headers={"Origin": main})
    assert no_token.status_code == 403 and "owb_session" not in no_token.cookies
    assert "security token" in no_token.text
    good = client.post("/auth/sign-in", data=fields, headers={"Origin": main})
    assert good.status_code == 303 and "owb_session" in good.cookies
    # Sign-out: the same two checks, then it works.
    assert client.post("/auth/sign-out", headers={"Origin": "http://attacker.localhost"}).status_code == 403
    assert client.post("/auth/sign-out", headers={"Origin": main}).status_code == 403  # no token
    out = client.post("/auth/sign-out", data={"csrf_token": token}, headers={"Origin": main})
    assert out.status_code == 303


def parse_qs_form_token(page_html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = page_html.index(marker) + len(marker)
    return page_html[start:page_html.index('"', start)]


# -- (b) one origin: the hostile IDE's headers -----------------------------------------------------------------

def test_hostile_ide_cannot_widen_its_cookies_or_workers(single: Stack, browser: BrowserContext) -> None:
    main, prefix = single.server.url, prefix_of(single.victim_session)
    # The IDE really sends the hostile headers (asked directly on its socket, as root).
    sock = next(single.runtime.glob(f"*/{single.victim_session['id']}.sock"))
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as ide:
        direct = ide.get(f"http://ide{prefix}page")
    assert direct.headers["service-worker-allowed"] == "/"
    assert len(direct.headers.get_list("set-cookie")) == 3

    page = browser.new_page()
    assert sign_in(page, main, single.victim_token, prefix + "page") == 303
    page.wait_for_url(f"{main}{prefix}page")  # the hostile page has loaded once
    real_cookie = sign_in_cookies(browser)
    assert [c["value"] for c in real_cookie] != ["forged-by-ide"], "the IDE replaced the sign-in cookie"
    with page.expect_response(f"{main}{prefix}page") as answered:
        page.reload()
    headers = answered.value.headers_array()
    names = [h["name"].lower() for h in headers]
    assert "service-worker-allowed" not in names
    assert [h["value"] for h in headers if h["name"].lower() == "set-cookie"] == [f"x=1; Path={prefix}"]
    assert page.locator("#ide").inner_text() == "hostile IDE"
    cookies = {c["name"]: c for c in browser.cookies()}
    assert cookies["x"]["path"] == prefix
    assert sign_in_cookies(browser) == real_cookie  # the IDE did not replace the sign-in
    assert cookies["owb_csrf"]["value"] != "forged-by-ide"

    # A worker for the whole origin fails; one for the session's own prefix works (so the failure is the scope).
    wide = page.evaluate("navigator.serviceWorker.register('sw.js', {scope: '/'})"
                         ".then(() => 'registered', e => e.name)")
    assert wide == "SecurityError"
    own = page.evaluate("navigator.serviceWorker.register('sw.js').then(r => r.scope, e => e.name)")
    assert own == f"{main}{prefix}"


# -- (d) X-Forwarded-Host ---------------------------------------------------------------------------------------

def test_forged_forwarded_host_does_not_pass_the_origin_check(single: Stack) -> None:
    url = single.server.url + prefix_of(single.attacker_session) + "api/contents"
    auth = {"Authorization": f"Bearer {single.attacker_token}"}
    evil = {**auth, "Origin": "http://evil.example", "X-Forwarded-Host": "evil.example"}
    refused = httpx.post(url, headers=evil)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["message"] == "Cross-origin request refused"
    # The same from 127.0.0.2, a configured trusted proxy: its X-Forwarded-Host is the public Host.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as proxy:
        assert proxy.post(url, headers=evil).status_code == 200
        echoed = proxy.get(url.replace("api/contents", "echo"), headers=evil).json()
    assert echoed["host"] == "evil.example" and echoed["x-forwarded-host"] == "evil.example"
    # And from the untrusted client the forged header never reaches the IDE either.
    echoed = httpx.get(url.replace("api/contents", "echo"), headers=evil).json()
    assert echoed["x-forwarded-host"] == f"127.0.0.1:{single.server.port}"
    # A cross-origin WebSocket with the forged header: refused before it reaches the IDE.
    ws_headers = {**evil, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                  "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert httpx.get(url.replace("api/contents", "api/kernels/x/channels"), headers=ws_headers).status_code == 403


# -- (c) per-session origins ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory, posix_user: pwd.struct_passwd) -> Iterator[Stack]:
    port = free_port()
    extra = f'[server]\nsession_domain = "http://owb.localhost:{port}"\n'
    with stack(tmp_path_factory.mktemp("domain") / "data", posix_user, extra, port=port) as built:
        yield built


def test_session_on_its_own_origin(domain: Stack, browser: BrowserContext) -> None:
    port = domain.server.port
    main = f"http://owb.localhost:{port}"
    part, prefix = part_of(domain.victim_session), prefix_of(domain.victim_session)
    session_origin = f"http://{part}.owb.localhost:{port}"
    assert domain.victim_session["url"] == session_origin + prefix  # launch_session's answer
    listed = domain.server.rpc("get_session", domain.attacker_token, session_id=domain.attacker_session["id"])
    assert listed["sessions"][0]["url"] == f"http://{part_of(domain.attacker_session)}.owb.localhost:{port}" + \
        prefix_of(domain.attacker_session)

    page = browser.new_page()
    tickets: list[str] = []
    page.on("request", lambda r: tickets.append(r.url) if "/_owb/auth" in r.url else None)
    assert sign_in(page, main, domain.victim_token, prefix + "page") == 303
    page.wait_for_url(f"{session_origin}{prefix}page")
    assert page.locator("#ide").inner_text() == "hostile IDE"
    assert len(tickets) == 1 and tickets[0].startswith(f"{session_origin}/_owb/auth?ticket=")

    # Host-only cookies: the session origin receives only its own sign-in, the main origin only the main one.
    to_session = [c for c in browser.cookies([session_origin + prefix]) if c["name"] == "owb_session"]
    to_main = [c for c in browser.cookies([main + "/"]) if c["name"] == "owb_session"]
    assert len(to_session) == 1 and to_session[0]["value"].startswith(part + ".")
    assert len(to_main) == 1 and "." not in to_main[0]["value"]
    assert to_session[0]["domain"] == f"{part}.owb.localhost" and to_main[0]["domain"] == "owb.localhost"

    # The ticket was good once: replayed in another browser, it is refused and signs nobody in.
    with httpx.Client() as other:
        replay = other.get(tickets[0].replace(f"{part}.owb.localhost", "127.0.0.1"),
                           headers={"Host": f"{part}.owb.localhost:{port}"})
        assert replay.status_code == 401 and "owb_session" not in replay.cookies
        assert "already used" in replay.json()["error"]["message"]


def domain_client(domain: Stack, token: str) -> httpx.Client:
    """A client signed in on the main origin through the real form (its CSRF token and Origin included).

    Only Chromium resolves *.localhost: this client connects to 127.0.0.1 and names the host in Host.
    """
    main_host = f"owb.localhost:{domain.server.port}"
    client = httpx.Client(base_url=domain.server.url, headers={"Host": main_host})
    form_token = parse_qs_form_token(client.get("/auth/sign-in").text)
    signed = client.post("/auth/sign-in", data={"token": token, "csrf_token": form_token},
                         headers={"Origin": f"http://{main_host}"})
    assert signed.status_code == 303
    return client


def ticket_for(client: httpx.Client, prefix: str) -> str:
    sent = client.get(prefix, headers={"Accept": "text/html"})
    assert sent.status_code == 302, sent.text
    return parse_qs(urlsplit(sent.headers["location"]).query)["ticket"][0]


def test_tickets_open_one_session_for_its_owner_only(domain: Stack) -> None:
    port = domain.server.port
    victim_part, attacker_part = part_of(domain.victim_session), part_of(domain.attacker_session)
    attacker = domain_client(domain, domain.attacker_token)
    # The attacker gets no ticket for the victim's session, and her own ticket does not open the victim's origin.
    assert attacker.get(prefix_of(domain.victim_session), headers={"Accept": "text/html"}).status_code == 404
    ticket = ticket_for(attacker, prefix_of(domain.attacker_session))
    victim_host = {"Host": f"{victim_part}.owb.localhost:{port}"}
    with httpx.Client(base_url=domain.server.url) as browser:
        wrong = browser.get(f"/_owb/auth?ticket={ticket}", headers=victim_host)
        assert wrong.status_code == 401 and "owb_session" not in wrong.cookies
        assert browser.get(prefix_of(domain.victim_session) + "echo", headers=victim_host).status_code == 401
    # Her own origin's ticket works there once; its cookie opens that origin only, not the main one.
    attacker_host = {"Host": f"{attacker_part}.owb.localhost:{port}"}
    ticket = ticket_for(attacker, prefix_of(domain.attacker_session))
    with httpx.Client(base_url=domain.server.url) as browser:
        good = browser.get(f"/_owb/auth?ticket={ticket}", headers=attacker_host)
        assert good.status_code == 302 and good.headers["location"] == prefix_of(domain.attacker_session)
        origin_cookie = good.cookies["owb_session"]
        own = browser.get(prefix_of(domain.attacker_session) + "echo", headers=attacker_host)
        assert own.status_code == 200 and "owb_session" not in own.json().get("cookie", "")
        cookie = {"Cookie": f"owb_session={origin_cookie}"}
        on_main = httpx.get(domain.server.url + prefix_of(domain.attacker_session) + "echo",
                            headers={"Host": f"owb.localhost:{port}", **cookie})
        assert on_main.status_code == 401
        on_victim = httpx.get(domain.server.url + prefix_of(domain.victim_session) + "echo",
                              headers={**victim_host, **cookie})
        assert on_victim.status_code == 401
    # The main sign-in, sent to a session origin by a non-browser, does not count there either.
    main_cookie = attacker.cookies["owb_session"]
    forged = httpx.get(domain.server.url + prefix_of(domain.attacker_session) + "echo",
                       headers={**attacker_host, "Cookie": f"owb_session={main_cookie}"})
    assert forged.status_code == 401
    assert json.loads(forged.text)["error"]["code"] == 401


def test_real_jupyterlab_works_on_its_own_origin(domain: Stack, browser: BrowserContext) -> None:
    """The real IDE behind a session origin: the ticket redirect lands in JupyterLab, whose kernel WebSocket
    (same-origin on the session's host) runs a cell."""
    if not JUPYTER_LAB.exists():
        pytest.skip("IDEs not installed: run scripts/install-ides.sh (make test does)")
    server, port = domain.server, domain.server.port
    api = server.token(domain.victim)
    started = launch(server, api, "JupyterLab", name="lab on its origin")
    try:
        wait_state(server, api, started["id"], ("running",))
        part, prefix = part_of(started), prefix_of(started)
        assert started["url"] == f"http://{part}.owb.localhost:{port}{prefix}"
        notebook = {"type": "notebook", "format": "json", "content": {
            "cells": [{"cell_type": "code", "source": "6*7", "metadata": {}, "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}}
        name = f"origin-{started['id']}.ipynb"
        created = httpx.put(f"{server.url}{prefix}api/contents/{name}", json=notebook,
                            headers={"Authorization": f"Bearer {api}"})  # an API client: served on the main origin
        assert created.status_code in (200, 201), created.text

        page = browser.new_page()
        page.goto(started["url"] + f"lab/tree/{name}")  # not signed in: to the main origin's sign-in form
        assert urlsplit(page.url).netloc == f"owb.localhost:{port}" and urlsplit(page.url).path == "/auth/sign-in"
        page.get_by_text("Sign in with an API token").click()
        page.locator("#token").fill(domain.victim_token)
        with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url, timeout=120_000) as kernel_ws:
            page.get_by_role("button", name="Sign in with token").click()
        assert urlsplit(page.url).netloc == f"{part}.owb.localhost:{port}"
        assert urlsplit(kernel_ws.value.url).netloc == f"{part}.owb.localhost:{port}"
        status = page.locator("#jp-main-statusbar")
        status.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
        page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
        output.get_by_text("42").wait_for(timeout=120_000)
        assert not kernel_ws.value.is_closed()
    finally:
        server.rpc("stop_session", api, session_ids=started["id"])
        wait_state(server, api, started["id"], ("finished", "killed"))

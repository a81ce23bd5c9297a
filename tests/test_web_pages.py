"""The pages a signed-in person uses (issue 11, points 2 and 3), in a real Chromium against a real server as root,
with real POSIX users and a real JupyterLab.

- alice launches a JupyterLab from the New Session dialog (after its own checks and the server's refusal show
  next to the fields), watches its card reach ``running`` without a reload, joins it in a new tab, then
  suspends, resumes and stops it;
- a job launched from the New Job dialog shows its output line by line while it runs;
- an API token made on the tokens page works on the API until it is revoked there;
- bob sees none of alice's sessions and the API refuses his page's Stop of hers;
- another origin's form and fetch() with alice's cookie are refused (CSRF), and a cookie alone never reaches the API;
- an admin sees everyone's sessions in the Admin view, filters them, stops one, disables and enables a user.

The screenshots in docs/screenshots/ (shown in the README) are made here.
"""

from __future__ import annotations

import contextlib
import http.server
import pwd
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import PG_URL, Server, free_port, make_pg_database, sign_in_form, temporary_posix_user
from tests.sessions_helpers import launch, session_config, session_server, wait_state
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, UI_TIMEOUT_MS, png_size

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
STATE_TIMEOUT_MS = 120_000  # a JupyterLab starting on a busy machine


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with session_server(tmp_path_factory.mktemp("pages") / "data", start_timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def alice() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owbal") as user:
        yield user


@pytest.fixture(scope="module")
def bob() -> Iterator[pwd.struct_passwd]:
    with temporary_posix_user("owbbo") as user:
        yield user


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def signed_in(chromium: Browser, srv: Server, token: str, width: int = 1280) -> Iterator[tuple[BrowserContext, Page]]:
    """A browser of its own, signed in with ``token`` through the server's sign-in form (conftest's helper)."""
    with httpx.Client(base_url=srv.url) as client:
        assert sign_in_form(client, token).status_code == 303
        cookies: list[Any] = [{"name": c.name, "value": c.value or "", "url": srv.url, "httpOnly": True,
                               "sameSite": "Strict" if c.name == "owb_csrf" else "Lax"} for c in client.cookies.jar]
    context = chromium.new_context(viewport={"width": width, "height": 800})
    context.set_default_timeout(30_000)
    context.add_cookies(cookies)
    try:
        yield context, context.new_page()
    finally:
        context.close()


def page_client(srv: Server, token: str) -> httpx.Client:
    """An httpx client holding a sign-in cookie and the CSRF cookie, as a browser that signed in does."""
    client = httpx.Client(base_url=srv.url, timeout=30)
    assert sign_in_form(client, token).status_code == 303
    client.get("/")  # the homepage sets the CSRF cookie if the sign-in page had not
    return client


def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=path)
    assert png_size(path) == (1280, 800) and path.stat().st_size > 10_000, path


def card(page: Page, name: str) -> Any:
    return page.locator("article.card", has=page.get_by_role("heading", name=name, exact=True))


def confirm(page: Page, button: str) -> None:
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=button, exact=True).click()


def stop_quietly(srv: Server, token: str, session_id: str) -> None:
    srv.post("stop_session", token, session_ids=session_id, force_quit=True)


def test_a_visitor_is_sent_to_sign_in_and_pages_need_a_sign_in(srv: Server) -> None:
    for path in ("/", "/tokens", "/admin", "/jobs/abc"):
        answer = srv.client.get(srv.url + path)
        assert answer.status_code == 303, (path, answer.text)
        assert answer.headers["location"] == f"/auth/sign-in?next={path}"
    for path in ("/tokens", "/admin/users"):  # a page's form without a sign-in changes nothing
        assert srv.client.post(srv.url + path, data={"label": "x"}).status_code == 401


def test_alice_launches_joins_suspends_resumes_and_stops_a_jupyterlab(
        srv: Server, alice: pwd.struct_passwd, chromium: Browser) -> None:
    token = srv.token(alice.pw_name)
    name = f"analysis-{secrets.token_hex(3)}"
    extra: list[str] = []
    with signed_in(chromium, srv, token) as (context, page):
        page.goto(srv.url + "/")
        expect(page.get_by_text("No sessions yet")).to_be_visible()
        page.evaluate("window.__sameDocument = true")  # gone if the page is ever reloaded

        page.locator("#new-session").click()
        dialog = page.locator("dialog#session-dialog")
        expect(dialog).to_be_visible()
        ide = dialog.get_by_label("IDE")
        expect(ide.locator("option", has_text="RStudio")).to_be_disabled()  # not installed here: shown, and why
        expect(ide.locator("option", has_text="RStudio")).to_contain_text("not installed")
        ide.select_option("JupyterLab")
        dialog.get_by_label("Name").fill(name)
        memory = dialog.locator("#f-limit-memory")
        expect(memory).to_have_attribute("max", re.compile(r"^\d"))
        maximum = float(memory.get_attribute("max") or "0")

        # The dialog's own check: above the cluster's maximum, explained next to the field, nothing sent.
        memory.fill(str(int(maximum * 2) + 1))
        dialog.get_by_role("button", name="Launch").click()
        expect(dialog.locator("#e-limit-memory")).to_contain_text("At most")
        expect(memory).to_have_attribute("aria-invalid", "true")
        assert srv.rpc("get_session", token)["sessions"] == []
        shot(page, "new-session.png")

        # The server's own refusal (1 MB is below what a memory limit can be applied at) shows the same way.
        memory.fill("1")
        dialog.get_by_role("button", name="Launch").click()
        expect(dialog.locator("#e-limit-memory")).to_contain_text("memory")
        assert srv.rpc("get_session", token)["sessions"] == []

        memory.fill("2048")
        dialog.get_by_role("button", name="Launch").click()
        expect(dialog).to_be_hidden()
        state = card(page, name).locator('[data-role="state"]')
        expect(state).to_be_visible()
        expect(state).to_have_text("running", timeout=STATE_TIMEOUT_MS)
        session = next(s for s in srv.rpc("get_session", token)["sessions"] if s["name"] == name)
        limits = session["launch_parameters"]["resource_limits"]
        assert [(item["type"], item["value"]) for item in limits] == [("memory", "2048")]
        try:
            # Join: JupyterLab in a new tab, through /s/.
            with context.expect_page() as opened:
                card(page, name).get_by_role("link", name=f"Join {name}").click()
            lab = opened.value
            expect(lab.locator("#jp-main-dock-panel")).to_be_visible(timeout=UI_TIMEOUT_MS)
            assert lab.url.startswith(srv.url + session["url"])
            lab.close()
            page.bring_to_front()

            # Suspend: confirmed, visible at once, then suspended.
            card(page, name).get_by_role("button", name=f"Suspend {name}").click()
            confirm(page, "Suspend")
            expect(state).to_have_text(re.compile("^suspend"))
            expect(state).to_have_text("suspended", timeout=STATE_TIMEOUT_MS)

            # Two more sessions for the picture of several states: one that fails, one starting.
            failing = launch(srv, token, "JupyterLab", name="fails: no such directory",
                             working_directory="/nonexistent-" + secrets.token_hex(3))
            extra.append(failing["id"])
            expect(card(page, "fails: no such directory").locator('[data-role="state"]')).to_have_text(
                "failed", timeout=STATE_TIMEOUT_MS)
            expect(card(page, "fails: no such directory").locator('[data-role="detail"]')).not_to_be_empty()
            extra.append(launch(srv, token, "JupyterLab", name="report")["id"])
            expect(card(page, "report")).to_be_visible()
            shot(page, "home.png")

            card(page, name).get_by_role("button", name=f"Resume {name}").click()
            expect(state).to_have_text(re.compile("^resum|^running"))
            expect(state).to_have_text("running", timeout=STATE_TIMEOUT_MS)

            card(page, name).get_by_role("button", name=f"Stop {name}").click()
            confirm(page, "Stop")
            expect(state).to_have_text(re.compile("^(stopping|finished|killed)"))
            expect(state).to_have_text(re.compile("^(finished|killed)$"), timeout=STATE_TIMEOUT_MS)
            assert page.evaluate("window.__sameDocument") is True  # every change arrived without a reload
        finally:
            for session_id in [session["id"], *extra]:
                stop_quietly(srv, token, session_id)


@contextlib.contextmanager
def gate_dir() -> Iterator[Path]:
    """Files the test creates to let a job go on: the job (as alice) waits for each before its next line."""
    where = Path("/tmp") / f"owb-gate-{secrets.token_hex(4)}"
    where.mkdir(mode=0o755)
    try:
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_jobs_output_appears_line_by_line_on_its_page(srv: Server, alice: pwd.struct_passwd,
                                                          chromium: Browser) -> None:
    token = srv.token(alice.pw_name)
    with gate_dir() as gate, signed_in(chromium, srv, token) as (_context, page):
        page.goto(srv.url + "/")
        expect(page.get_by_text("No jobs yet")).to_be_visible()
        page.locator("#new-job").click()
        dialog = page.locator("dialog#job-dialog")
        dialog.get_by_role("button", name="Launch").click()  # empty: explained before anything is sent
        expect(dialog.locator("#e-j-command")).to_contain_text("Enter the command")
        dialog.get_by_label("Name").fill("count")
        dialog.get_by_label("Command").fill(
            f"for i in 1 2 3; do echo line-$i; while [ ! -e {gate}/go-$i ]; do sleep 0.05; done; done; "
            "echo warning >&2")
        dialog.get_by_role("button", name="Launch").click()
        page.wait_for_url(re.compile(r"/jobs/[0-9a-f]+$"))
        output = page.locator("#output")
        for i in (1, 2, 3):
            expect(output).to_contain_text(f"line-{i}", timeout=60_000)
            expect(output).not_to_contain_text(f"line-{i + 1}")  # it has not been written yet
            expect(page.locator("#job-status")).not_to_have_text("Finished")
            if i == 2:
                shot(page, "job-output.png")
            (gate / f"go-{i}").touch()
        expect(output.locator(".stderr")).to_have_text("warning\n", timeout=60_000)
        expect(page.locator("#job-status")).to_have_text("Finished", timeout=60_000)
        expect(page.locator("#job-exit")).to_have_text("0")
        page.goto(srv.url + "/")
        row = page.locator("table#jobs tbody tr", has_text="count")
        expect(row).to_contain_text("Finished")


def test_an_api_token_made_on_the_page_works_until_revoked_there(srv: Server, alice: pwd.struct_passwd,
                                                                   chromium: Browser) -> None:
    label = f"laptop-{secrets.token_hex(3)}"
    with signed_in(chromium, srv, srv.token(alice.pw_name)) as (_context, page):
        page.goto(srv.url + "/tokens")
        page.get_by_label("New token's name").fill(label)
        page.get_by_role("button", name="Create token").click()
        value = page.locator("#new-token-value").input_value()
        assert len(value) >= 40
        mine = srv.rpc("get_session", value)["sessions"]  # the API takes it, as alice
        assert {s["user"] for s in mine} <= {alice.pw_name}
        page.goto(srv.url + "/tokens")  # shown once: not on the next visit, but listed by name
        expect(page.locator("#new-token-value")).to_have_count(0)
        assert value not in page.content()
        row = page.locator("table#tokens tr", has_text=label)
        expect(row).to_contain_text("user")
        row.get_by_role("button", name="Revoke").click()
        confirm(page, "Revoke")
        expect(page.locator(".notice")).to_contain_text("revoked")
        expect(page.locator("table#tokens tr", has_text=label)).to_have_count(0)
    refused = srv.post("get_session", value)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == 401


@pytest.fixture(scope="module")
def alices_session(srv: Server, alice: pwd.struct_passwd) -> Iterator[dict[str, Any]]:
    token = srv.token(alice.pw_name)
    started = launch(srv, token, "JupyterLab", name="alice's notebook")
    wait_state(srv, token, started["id"], ("running",), timeout=180)
    yield started
    stop_quietly(srv, token, started["id"])


def test_bob_sees_none_of_alices_sessions_and_cannot_stop_them(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, chromium: Browser,
        alices_session: dict[str, Any]) -> None:
    alice_token = srv.token(alice.pw_name)
    with signed_in(chromium, srv, srv.token(bob.pw_name)) as (_context, page):
        page.goto(srv.url + "/")
        expect(page.get_by_text("No sessions yet")).to_be_visible()
        assert alices_session["id"] not in page.content() and "alice's notebook" not in page.content()
        # His page's own API call, with his cookie and CSRF header, naming her session: refused by the API.
        answer = page.evaluate("""async (id) => {
            const token = document.querySelector('meta[name="owb-csrf"]').content;
            const r = await fetch('/api/stop_session', {method: 'POST', headers: {'X-OWB-CSRF': token,
                'Content-Type': 'application/json'}, body: JSON.stringify({kwparams: {session_ids: id}})});
            return [r.status, await r.json()];
        }""", alices_session["id"])
        assert answer[0] == 403 and answer[1]["error"]["code"] == 403, answer
        # Her jobs' pages are not his either.
        her_job = srv.rpc("launch_job", alice_token, job={"name": "hers", "command": "true"})["job"]
        page.goto(srv.url + f"/jobs/{her_job['id']}")
        expect(page.get_by_text("There is no job")).to_be_visible()
    assert wait_state(srv, alice_token, alices_session["id"], ("running",))["activity_state"] == "running"


def test_the_homepage_works_on_a_narrow_window_and_from_the_keyboard(
        srv: Server, bob: pwd.struct_passwd, chromium: Browser) -> None:
    with signed_in(chromium, srv, srv.token(bob.pw_name), width=390) as (_context, page):
        page.goto(srv.url + "/")
        expect(page.get_by_text("No sessions yet")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # nothing cut off
        # Tab from the top of the page reaches New Session; Enter opens the dialog with the focus in it.
        for _ in range(20):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "new-session":
                break
        else:
            raise AssertionError("New Session is not reachable with Tab")
        page.keyboard.press("Enter")
        dialog = page.locator("dialog#session-dialog")
        expect(dialog).to_be_visible()
        assert page.evaluate("document.activeElement.closest('dialog') !== null")
        for control in dialog.locator("input, select, textarea").all():  # every control has a label
            if control.is_visible():
                assert control.evaluate("(c) => c.labels.length > 0"), control.get_attribute("id")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()


def test_a_launch_the_live_feed_shows_first_makes_one_card(chromium: Browser, srv: Server) -> None:
    """The launch's answer can reach the page after the live feed already brought the session (seen in CI under
    load): the page holds the answer back here until the feed's card is on screen, then lets it through."""
    with temporary_posix_user("owbdu") as carol:
        token = srv.token(carol.pw_name)
        with signed_in(chromium, srv, token) as (_context, page):
            page.goto(srv.url + "/")
            expect(page.get_by_text("No sessions yet")).to_be_visible()
            held: list[Any] = []
            page.route("**/api/launch_session", lambda route: held.append((route, route.fetch())))
            page.locator("#new-session").click()
            dialog = page.locator("dialog#session-dialog")
            dialog.get_by_label("IDE").select_option("JupyterLab")
            dialog.get_by_label("Name").fill("once")
            dialog.locator("#f-workdir").fill("/nonexistent-dir")  # fails at once: no JupyterLab is started
            dialog.get_by_role("button", name="Launch").click()
            expect(card(page, "once")).to_have_count(1)  # from the live feed: the launch is not answered yet
            deadline = time.monotonic() + 30
            while not held:  # the handler's own fetch of the answer may still be on its way to it
                assert time.monotonic() < deadline, "the launch never reached the route"
                page.wait_for_timeout(50)  # lets Playwright run the handler
            assert len(held) == 1
            route, answer = held[0]
            route.fulfill(response=answer)
            expect(dialog).to_be_hidden()
            expect(card(page, "once").locator('[data-role="state"]')).to_have_text("failed", timeout=60_000)
            expect(card(page, "once")).to_have_count(1)


class _Attacker(http.server.BaseHTTPRequestHandler):
    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def attacker_site(target: str) -> Iterator[str]:
    """Another origin on the same host (so SameSite=Lax still sends alice's cookie): only the server's checks
    stand between it and her account."""
    handler = type("Attacker", (_Attacker,), {"page": f"""<!doctype html><html><body>
        <form id="evil" method="post" action="{target}/tokens">
          <input name="action" value="create"><input name="label" value="stolen">
          <input name="csrf_token" value="guessed"></form></body></html>""".encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def test_cross_site_requests_with_alices_cookie_are_refused(
        srv: Server, alice: pwd.struct_passwd, chromium: Browser, alices_session: dict[str, Any]) -> None:
    alice_token = srv.token(alice.pw_name)
    with signed_in(chromium, srv, alice_token) as (_context, page), attacker_site(srv.url) as evil:
        page.goto(evil)
        # A fetch without our header: the cookie alone is ignored by the API (401), nothing stops.
        status = page.evaluate("""async ([url, id]) => {
            const r = await fetch(url + '/api/stop_session', {method: 'POST', credentials: 'include',
                mode: 'no-cors', headers: {'Content-Type': 'text/plain'},
                body: JSON.stringify({kwparams: {session_ids: id}})});
            return r.type;
        }""", [srv.url, alices_session["id"]])
        assert status == "opaque"
        # With a guessed header the browser must ask first (CORS preflight), and the server grants nothing.
        blocked = page.evaluate("""async ([url, id]) => {
            try {
                await fetch(url + '/api/stop_session', {method: 'POST', credentials: 'include',
                    headers: {'X-OWB-CSRF': 'guessed', 'Content-Type': 'application/json'},
                    body: JSON.stringify({kwparams: {session_ids: id}})});
                return 'sent';
            } catch (e) { return 'blocked'; }
        }""", [srv.url, alices_session["id"]])
        assert blocked == "blocked"
        # A form post to the tokens page: refused by the origin check, no token made.
        with page.expect_navigation():
            page.evaluate("document.getElementById('evil').submit()")
        assert "Cross-site request refused" in page.content()
        page.goto(srv.url + "/tokens")
        expect(page.locator("table#tokens")).not_to_contain_text("stolen")
    assert not [t for t in srv.accounts().list_tokens() if t.name.endswith(":stolen")]
    assert wait_state(srv, alice_token, alices_session["id"], ("running",))["activity_state"] == "running"

    # The same attacks without a browser: the cookie without the header is ignored, with the right header but
    # another Origin (or a wrong header) refused; the page's own call (same origin, right header) works.
    with contextlib.closing(page_client(srv, alice_token)) as client:
        kwargs = {"json": {"kwparams": {"session_ids": alices_session["id"]}}}
        assert client.post("/api/stop_session", **kwargs).status_code == 401
        right = {"X-OWB-CSRF": client.cookies["owb_csrf"]}
        assert client.post("/api/stop_session", headers={**right, "Origin": "http://127.0.0.1:1"},
                           **kwargs).status_code == 403
        assert client.post("/api/stop_session", headers={"X-OWB-CSRF": "x" * 43, "Origin": srv.url},
                           **kwargs).status_code == 403
        assert client.post("/api/stop_session", headers={**right, "Sec-Fetch-Site": "same-site"},
                           **kwargs).status_code == 403
        mine = client.get("/api/get_session", headers={**right, "Sec-Fetch-Site": "same-origin"})
        listed = mine.json()["result"]["sessions"]
        assert alices_session["id"] in [s["id"] for s in listed] and {s["user"] for s in listed} == {alice.pw_name}
    assert wait_state(srv, alice_token, alices_session["id"], ("running",))["activity_state"] == "running"


def test_an_admin_sees_everyones_sessions_stops_one_and_disables_a_user(
        srv: Server, alice: pwd.struct_passwd, bob: pwd.struct_passwd, chromium: Browser,
        alices_session: dict[str, Any]) -> None:
    alice_token, bob_token = srv.token(alice.pw_name), srv.token(bob.pw_name)
    bobs = launch(srv, bob_token, "JupyterLab", name="bob's notebook")
    try:
        with signed_in(chromium, srv, alice_token) as (_context, page):  # not for a user
            page.goto(srv.url + "/admin")
            expect(page.get_by_text("It is for administrators")).to_be_visible()
            expect(page.get_by_role("link", name="Admin")).to_have_count(0)
        with signed_in(chromium, srv, srv.token(f"owbro{secrets.token_hex(2)}", "admin-readonly")) as (_context, page):
            page.goto(srv.url + "/admin")  # reads everything, changes nothing: no buttons, and the form refused
            expect(page.locator("#admin-sessions-table tbody tr").filter(has_text="alice's notebook")).to_have_count(1)
            expect(page.locator("#admin-sessions-table").get_by_role("button")).to_have_count(0)
            expect(page.locator("#admin-users-table").get_by_role("button")).to_have_count(0)
            refused = page.evaluate("""async (user) => {
                const body = new URLSearchParams({username: user, action: 'disable',
                    csrf_token: document.querySelector('meta[name="owb-csrf"]').content});
                const r = await fetch('/admin/users', {method: 'POST', body: body});
                return [r.status, await r.json()];
            }""", bob.pw_name)
            assert refused[0] == 403 and "write access" in refused[1]["error"]["message"], refused
            assert srv.post("get_session", bob_token).status_code == 200
        with signed_in(chromium, srv, srv.token(f"owbadm{secrets.token_hex(2)}", "admin")) as (_context, page):
            page.goto(srv.url + "/")
            page.get_by_role("link", name="Admin").click()
            rows = page.locator("#admin-sessions-table tbody tr")
            expect(rows.filter(has_text="alice's notebook")).to_have_count(1)
            expect(rows.filter(has_text="bob's notebook")).to_have_count(1)
            shot(page, "admin.png")

            page.get_by_label("User", exact=True).select_option(bob.pw_name)
            page.get_by_role("button", name="Filter").click()
            expect(rows.filter(has_text="bob's notebook")).to_have_count(1)
            expect(rows.filter(has_text="alice's notebook")).to_have_count(0)
            page.goto(srv.url + "/admin")

            rows.filter(has_text="alice's notebook").get_by_role("button", name="Stop").click()
            confirm(page, "Stop")
            wait_state(srv, alice_token, alices_session["id"], ("finished", "killed"), timeout=120)
            # The row follows it to its end (the script said "stopping…"), then the page loads again.
            expect(rows.filter(has_text="alice's notebook")).to_contain_text(re.compile("finished|killed"))
            # Only the page loaded again has no Stop for it: the next click lands there, not on the page it replaces.
            expect(rows.filter(has_text="alice's notebook").get_by_role("button", name="Stop")).to_have_count(0)

            # A job that takes 3 s to stop: the page follows it to its end, past the 1.5 s it once gave a stop.
            slow = srv.rpc("launch_job", bob_token, job={
                "name": "bob's slow stopper", "command": "trap 'sleep 3; exit 0' TERM; sleep 600 & wait"})["job"]
            srv.wait_job(bob_token, slow["id"], ("Running",), timeout=60)
            page.goto(srv.url + "/admin")
            job_row = page.locator("#admin-jobs-table tbody tr", has_text="bob's slow stopper")
            job_row.get_by_role("button", name="Stop").click()
            confirm(page, "Stop")
            expect(job_row).to_contain_text("stopping…")
            expect(job_row).to_contain_text(re.compile("Finished|Killed|Canceled|Failed"), timeout=30_000)
            expect(job_row.get_by_role("button", name="Stop")).to_have_count(0)  # the loaded page: nothing to stop

            user_row = page.locator("#admin-users-table tbody tr", has_text=bob.pw_name)
            user_row.get_by_role("button", name="Disable").click()
            confirm(page, "Disable")
            expect(page.locator("#admin-users-table tbody tr", has_text=bob.pw_name)).to_contain_text("Inactive")
            assert srv.post("get_session", bob_token).status_code == 401
            page.locator("#admin-users-table tbody tr", has_text=bob.pw_name).get_by_role(
                "button", name="Enable").click()
            confirm(page, "Enable")
            expect(page.locator("#admin-users-table tbody tr", has_text=bob.pw_name)).to_contain_text("Active")
            assert srv.post("get_session", bob_token).status_code == 200
    finally:
        stop_quietly(srv, bob_token, bobs["id"])


def transactions(database: str) -> int:
    """Transactions PostgreSQL has counted in ``database`` (read from another database: this read is not one)."""
    engine = sa.create_engine(str(PG_URL), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :d"),
                             {"d": database}).scalar_one()
    engine.dispose()
    return int(count)


# A backend publishes its counts when it goes idle, but at most once a second: counts made within a second of its
# last report wait until it has been idle for 10 s (PostgreSQL 15's PGSTAT_IDLE_INTERVAL). Windows compared
# with less than this after them move counts from one window into the next (CI once saw 39 against 267).
PG_STATS_SETTLE_S = 11.0


def settled_transactions(database: str) -> int:
    """``transactions`` once every backend has published what it did up to now."""
    time.sleep(PG_STATS_SETTLE_S)
    return transactions(database)


POLLS = 300


@pytest.mark.serial  # compares the store's transactions over two windows whose lengths drift under load
def test_a_cookie_poll_of_get_session_reads_one_row_not_the_sessions(tmp_path: Path,
                                                                      alice: pwd.struct_passwd) -> None:
    """Issue 11: ``get_session`` is answered from the session cache. PostgreSQL's own transaction counter, over a
    window of 300 polls with the sign-in cookie and CSRF header, against an idle window of the same length: each
    poll reads the auth epoch (one single-row SELECT, so a revocation on any server is refused by the very next
    request: docs/security.md) and nothing else."""
    url = make_pg_database()
    database = sa.engine.make_url(url).database or ""
    runtime = Path("/tmp") / f"owb-rt-{secrets.token_hex(4)}"
    srv = Server(tmp_path / "data", database_url=url, config_text=session_config(runtime)).start()
    try:
        token = srv.token(alice.pw_name)
        failed = launch(srv, token, "JupyterLab", name="listed", working_directory="/nonexistent-dir")
        wait_state(srv, token, failed["id"], ("failed",), timeout=60)
        with contextlib.closing(page_client(srv, token)) as client:
            headers = {"X-OWB-CSRF": client.cookies["owb_csrf"], "Sec-Fetch-Site": "same-origin"}

            before, began = settled_transactions(database), time.monotonic()
            for _ in range(POLLS):
                answer = client.get("/api/get_session", headers=headers)
                assert [s["id"] for s in answer.json()["result"]["sessions"]] == [failed["id"]], answer.text
            time.sleep(max(0.0, 3.0 - (time.monotonic() - began)))
            took = time.monotonic() - began
            middle = settled_transactions(database)
            time.sleep(took)  # the idle window: as long as the polled one was, however long the load made it
            polled, idle = middle - before, settled_transactions(database) - middle
        # The server's own background work (the session watch, leadership) runs in both windows, and the sign-in's
        # cache entry is checked in the store again now and then: a few dozen. Reading the sessions from the store
        # would add another POLLS. At least half of POLLS shows that the counter saw the polls at all.
        assert POLLS // 2 < polled - idle < POLLS * 3 // 2, (idle, polled, took)
    finally:
        srv.stop()
        shutil.rmtree(runtime, ignore_errors=True)

"""A real browser (Debian's Chromium, driven by Playwright) signs in and works in a real JupyterLab through /s/.

Covers what only a browser shows: the sign-in redirect and form, the HttpOnly cookie, JupyterLab's UI rendering
through the proxy, a notebook cell run from the keyboard over the kernel WebSocket, and that an anonymous browser
and a revoked token are both turned away.
"""

from __future__ import annotations

import pwd
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright

from tests.conftest import Server
from tests.sessions_helpers import launch, session_server, wait_state

CHROMIUM = Path("/usr/bin/chromium")
JUPYTER_LAB = Path("/opt/openworkbench/jupyter/bin/jupyter-lab")
# Without the background-networking flags Chromium keeps trying to reach Google's services on a closed network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
UI_TIMEOUT_MS = 60_000

if not CHROMIUM.exists():
    pytest.skip("Chromium missing: run scripts/install-system-deps.sh (make test does)", allow_module_level=True)
if not JUPYTER_LAB.exists():
    pytest.skip("IDEs not installed: run scripts/install-ides.sh (make test does)", allow_module_level=True)


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with session_server(tmp_path_factory.mktemp("browser") / "data") as server:
        yield server


@pytest.fixture
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture
def browser(playwright: Playwright, tmp_path: Path) -> Iterator[BrowserContext]:
    """Chromium with a new, empty profile; Playwright never downloads a browser of its own."""
    context = playwright.chromium.launch_persistent_context(
        tmp_path / "profile", executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 800},
    )
    context.set_default_timeout(30_000)
    yield context
    context.close()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def on_sign_in_page(page: Page, next_path: str) -> None:
    parts = urlsplit(page.url)
    assert parts.path == "/auth/sign-in", page.url
    assert parse_qs(parts.query).get("next") == [next_path], page.url
    expect(page.locator('form[action="/auth/sign-in"] input#username[name="username"]')).to_be_visible()
    expect(page.locator('#password-form input[name="next"]')).to_have_value(next_path)


def submit_token(page: Page, token: str) -> int:
    """Open "Sign in with an API token", type the token and press its button, as a person would; the status of
    the form's POST."""
    if not page.locator("#token").is_visible():
        page.get_by_text("Sign in with an API token").click()
    page.locator("#token").fill(token)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/auth/sign-in")) as posted:
        page.get_by_role("button", name="Sign in with token").click()
    return posted.value.status


def test_browser_signs_in_and_runs_a_notebook_cell(srv: Server, posix_user: pwd.struct_passwd,
                                                    browser: BrowserContext, tmp_path: Path) -> None:
    user = posix_user.pw_name
    api_token = srv.token(user)  # for RPC and setup; stays valid after the browser's token is revoked
    browser_token_name = f"browser-{secrets.token_hex(4)}"
    browser_token = srv.accounts().generate_token("user", browser_token_name, user)
    started = launch(srv, api_token, "JupyterLab", name="browser")
    try:
        wait_state(srv, api_token, started["id"], ("running",))
        base = srv.url + started["url"]
        notebook_name = f"browser-{started['id']}.ipynb"
        notebook = {"type": "notebook", "format": "json", "content": {
            "cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [], "execution_count": None}],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}}
        created = httpx.put(base + f"api/contents/{notebook_name}", json=notebook,
                            headers={"Authorization": f"Bearer {api_token}"})
        assert created.status_code in (200, 201), created.text

        page = browser.pages[0] if browser.pages else browser.new_page()

        # An anonymous visit to the session lands on the sign-in form, which remembers where to go back to.
        lab_path = started["url"] + "lab"
        page.goto(base + "lab")
        on_sign_in_page(page, lab_path)
        page.screenshot(path=tmp_path / "sign-in.png")

        # A wrong token: 401, still on the form, an alert says why, and no cookie is set.
        assert submit_token(page, "not-a-token-" + secrets.token_hex(8)) == 401
        expect(page.get_by_role("alert")).to_contain_text("not valid")
        assert urlsplit(page.url).path == "/auth/sign-in"
        expect(page.locator('#token-form input[name="next"]')).to_have_value(lab_path)
        assert not [c for c in browser.cookies() if c["name"] == "owb_session"]
        page.screenshot(path=tmp_path / "sign-in-error.png")

        # The right token: back to the session, and the real JupyterLab UI renders through the proxy.
        status = submit_token(page, browser_token)  # (no secret in an assertion's message)
        assert status == 303
        page.wait_for_url(lambda url: urlsplit(url).path.startswith(lab_path))
        expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=UI_TIMEOUT_MS)
        expect(page.locator(".jp-Launcher").first).to_be_visible(timeout=UI_TIMEOUT_MS)
        flags = [(c["httpOnly"], c["sameSite"], c["path"]) for c in browser.cookies() if c["name"] == "owb_session"]
        assert flags == [(True, "Lax", "/")]
        assert page.evaluate("document.cookie.includes('owb_session')") is False  # HttpOnly: no script reads it
        shot = tmp_path / "jupyterlab.png"
        page.screenshot(path=shot)
        assert png_size(shot) == (1280, 800) and shot.stat().st_size > 20_000, shot.stat().st_size

        # Open the notebook made beforehand, type 1+1 in its cell and run it with Shift+Enter. JupyterLab shows the
        # editor before its kernel exists, and drops a run asked for in that window: first wait until the browser
        # holds the kernel's WebSocket and JupyterLab's status bar says the kernel is idle.
        with page.expect_websocket(lambda ws: "/api/kernels/" in ws.url, timeout=UI_TIMEOUT_MS) as kernel_ws:
            page.goto(base + f"lab/tree/{notebook_name}")
        assert urlsplit(kernel_ws.value.url).path.startswith(started["url"] + "api/kernels/")
        expect(page.locator("#jp-main-statusbar")).to_contain_text("Python 3 (ipykernel) | Idle",
                                                                   timeout=UI_TIMEOUT_MS)
        editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
        expect(editor).to_be_visible()
        editor.click()
        page.keyboard.type("1+1")
        expect(editor).to_have_text("1+1")
        page.keyboard.press("Shift+Enter")
        output = page.locator(".jp-NotebookPanel .jp-OutputArea-output").first
        expect(output).to_have_text("2", timeout=UI_TIMEOUT_MS)
        assert not kernel_ws.value.is_closed()  # the cell ran over this socket, through the proxy
        page.screenshot(path=tmp_path / "notebook.png")

        # Another browser context, never signed in, does not get to the session.
        anonymous = browser.browser.new_context() if browser.browser else None
        assert anonymous is not None
        try:
            stranger = anonymous.new_page()
            stranger.goto(base + "lab")
            on_sign_in_page(stranger, lab_path)
            assert anonymous.request.get(base + "api/status").status == 401
        finally:
            anonymous.close()

        # Revoking the signed-in token ends the browser's access at once: its next request is refused, and the
        # kernel WebSocket it opened before is closed by the proxy's periodic check.
        assert browser.request.get(base + "api/status").status == 200
        assert not kernel_ws.value.is_closed()
        srv.accounts().revoke_token(browser_token_name)
        assert browser.request.get(base + "api/status").status == 401
        kernel_ws.value.wait_for_event("close", timeout=10_000)
        page.goto(base + "lab")
        on_sign_in_page(page, lab_path)
    finally:
        srv.rpc("stop_session", api_token, session_ids=started["id"])
        wait_state(srv, api_token, started["id"], ("finished", "killed"))

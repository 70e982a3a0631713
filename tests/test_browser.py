"""A person in JupyterLab: a real JupyterLab server on 127.0.0.1 (token auth), Debian's Chromium driven by
Playwright, the deploy notebook run top to bottom on the local target with the tiny model; the model picker
redraws the plan, and a chat message gets a streamed reply. Screenshots are kept under the test's tmp folder
(and copied to runs/browser/ for a look after a local run)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, llamacpp_bin) -> Iterator[tuple[str, str, Path]]:
    """JupyterLab serving a copy of the notebooks (so autosave never writes outputs into the repository)."""
    root = tmp_path / "lab"
    shutil.copytree(ROOT / "notebooks", root)
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "MISTRAL_LAB_HOME": str(tmp_path / "home"), "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrun")}
    env.pop("MISTRAL_LAB_WIDGETS", None)
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115  (closed after the server stops)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
         "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start:\n" + (tmp_path / "jupyterlab.log").read_text()[-3000:])
    # Without the token the server refuses the API: the lab is not open to anyone on the machine.
    assert httpx.get(f"{base}/api/contents", timeout=5).status_code == 403
    yield base, token, tmp_path
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    import mistral_lab as ml  # the kernel's deployment, made in the test's own state folder
    from mistral_lab import state

    os.environ["MISTRAL_LAB_HOME"], old = str(tmp_path / "home"), os.environ.get("MISTRAL_LAB_HOME", "")
    try:
        for name in state.names():
            ml.teardown(name, say=lambda _l: None)
    finally:
        os.environ["MISTRAL_LAB_HOME"] = old


def test_deploy_notebook_in_jupyterlab_with_chromium(jupyterlab):
    from playwright.sync_api import sync_playwright

    base, token, tmp = jupyterlab
    shots = tmp / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            _drive(page, base, token, shots)
        except Exception:
            page.screenshot(path=str(shots / "failure.png"), full_page=True)
            shutil.copytree(shots, ROOT / "runs" / "browser-failure", dirs_exist_ok=True)
            raise
        finally:
            browser.close()

    saved = sorted(q.name for q in shots.iterdir())
    assert saved == ["1-plan.png", "2-plan-ministral-3b.png", "3-chat.png"]
    keep = ROOT / "runs" / "browser"
    keep.mkdir(parents=True, exist_ok=True)
    for q in shots.iterdir():
        shutil.copy(q, keep / q.name)


def open_and_run_all(page, base: str, token: str, notebook: str) -> None:
    """Open a notebook in JupyterLab as a user would, take its kernel, and Run All Cells from the menu."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=90_000)
    # JupyterLab starts the notebook's kernel (python3 from its metadata) when it opens; if it asks, take it.
    dialog = page.locator(".jp-Dialog button.jp-mod-accept")
    try:
        dialog.first.wait_for(timeout=20_000)
        dialog.first.click()
    except PlaywrightTimeout:
        pass
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=90_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def _drive(page, base: str, token: str, shots: Path) -> None:
    from playwright.sync_api import expect

    open_and_run_all(page, base, token, "deploy.ipynb")

    panel = page.locator(".ml-deploy-panel")
    panel.wait_for(timeout=120_000)
    expect(page.locator(".ml-plan[data-model='tiny-random']")).to_be_visible()
    page.screenshot(path=str(shots / "1-plan.png"), full_page=True)

    # Changing the model picker redraws the plan in place.
    panel.locator("select").first.select_option("ministral-3b")
    expect(page.locator(".ml-plan[data-model='ministral-3b']")).to_be_visible(timeout=30_000)
    assert "ministral-3b" in page.locator(".ml-plan .ml-serve").inner_text()
    page.locator(".ml-plan[data-model='ministral-3b']").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "2-plan-ministral-3b.png"), full_page=True)

    # The notebook deployed the tiny model; its chat answers, streamed.
    chat = page.locator(".ml-chat-panel")
    chat.wait_for(timeout=300_000)
    chat.scroll_into_view_if_needed()
    chat.locator(".ml-chat-input textarea").fill("Say hello in one short sentence.")
    chat.locator(".ml-chat-send").click()
    done = chat.locator(".ml-chat-reply .ml-done")
    done.wait_for(timeout=120_000)
    reply = done.inner_text()
    assert reply.strip(), "the chat reply is empty"
    expect(chat.locator(".ml-chat-input textarea")).to_have_value("")
    page.screenshot(path=str(shots / "3-chat.png"), full_page=True)

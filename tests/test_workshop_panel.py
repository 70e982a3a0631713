"""The instructor's live panel in a real JupyterLab (issue 16, part 2): the JupyterLab server and Debian's Chromium
of tests/test_browser.py; a notebook starts a workshop on the local target (the tiny model behind the real nginx
proxy), asks twice as one learner and shows `ui.workshop_panel`; the test asks once more as that learner from
outside and the panel's row follows, read from the proxy's usage log.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest
from test_browser import CHROMIUM, jupyterlab, open_and_run_all  # noqa: F401  (the fixture)

NAME = "wspanel"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CELLS = [
    "from mistral_lab import workshop, ui\n"
    f"ws, _ = workshop.up(workshop.RoomRequest.of(name='{NAME}', learners=3, model='tiny-random', hours=0.5,\n"
    "                                             tokens_per_learner=5000), say=lambda line: None)",
    "import httpx\n"
    "ctx = workshop.pinned_context('127.0.0.1', ws.https_port, ws.fingerprint)\n"
    "with httpx.Client(base_url=ws.base_url, verify=ctx, timeout=300,\n"
    "                  headers={'Authorization': 'Bearer ' + workshop.load_keys(ws.name)['l01']}) as c:\n"
    "    codes = [c.post('/chat/completions', json={'model': 'tiny-random', 'max_tokens': 4,\n"
    "                    'messages': [{'role': 'user', 'content': 'hi'}]}).status_code for _ in range(2)]\n"
    "codes",
    f"panel = ui.workshop_panel('{NAME}', tick_s=2)",
]


def _notebook() -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                       "source": src} for i, src in enumerate(CELLS)]}


def _ask_as_l01(home: Path) -> int:
    """One more request as l01, from outside the notebook (the workshop's records are in the lab's home)."""
    from mistral_lab import workshop

    old = os.environ.get("MISTRAL_LAB_HOME")
    os.environ["MISTRAL_LAB_HOME"] = str(home)
    try:
        ws = workshop.load(NAME)
        key = workshop.load_keys(NAME)["l01"]
    finally:
        if old is None:
            os.environ.pop("MISTRAL_LAB_HOME")
        else:
            os.environ["MISTRAL_LAB_HOME"] = old
    ctx = workshop.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    r = httpx.post(ws.base_url + "/chat/completions", verify=ctx, timeout=300,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "tiny-random", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code


def test_the_instructor_panel_follows_the_room_in_jupyterlab(jupyterlab):  # noqa: F811
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    from playwright.sync_api import expect, sync_playwright

    base, token, tmp = jupyterlab
    (tmp / "lab" / "panel.ipynb").write_text(json.dumps(_notebook()))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            open_and_run_all(page, base, token, "panel.ipynb")
            row = page.locator(".ml-workshop-panel tr[data-learner='l01']")
            row.wait_for(timeout=600_000)
            # The widget redraws its table on every tick: locators, not element handles, follow it.
            requests = row.locator("td").nth(1)
            expect(requests).to_have_text("2", timeout=60_000)
            assert page.locator(".ml-workshop-panel tr.ml-ws-row").count() == 3
            prompt_tokens = int(row.locator("td").nth(2).inner_text().replace(",", ""))
            assert prompt_tokens > 0 and row.locator("td").nth(8).inner_text() != "–"
            assert _ask_as_l01(tmp / "home") == 200
            # The panel redraws by itself (every 2 s here): the third request appears without a click.
            expect(requests).to_have_text("3", timeout=120_000)
            assert "$0.00 so far" in page.locator(".ml-workshop-panel .ml-ws-summary").inner_text()
            page.screenshot(path=str(tmp / "workshop-panel.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()

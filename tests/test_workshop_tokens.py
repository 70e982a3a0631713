"""Every learner's tokens counted and capped (issue 16, part 2), and the chat page (part 3), end to end on the local
target: the real llama.cpp build serving the tiny model, the real nginx from Debian's packages with its Lua module
(libnginx-mod-http-lua, lua-cjson) counting each reply's usage, clients pinning the certificate by its fingerprint,
and Debian's Chromium driven by Playwright for the page.

What the server reports is the witness: the same request asked of the model server directly (with its own key)
gives the prompt's token count, and `ignore_eos` with `max_tokens` fixes the completion's.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llamacpp_fixtures import free_port
from mistral_lab import state
from mistral_lab import workshop as ws_mod
from mistral_lab.engines import service

NAME = "wstokens"
BUDGET = 300
CAP = 64
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MESSAGES = [{"role": "user", "content": "count to ten"}]

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------- pure parts


def test_usage_lines_summarize_per_learner_with_p50_and_last_seen():
    lines = ws_mod.parse_usage_log("\n".join([
        '{"t":1767225600.5,"learner":"l01","status":200,"prompt":10,"completion":8,"source":"server","refused":"",'
        '"request_s":0.2}',
        '{"t":1767225601.0,"learner":"l01","status":200,"prompt":12,"completion":4,"source":"server","refused":"",'
        '"request_s":0.4}',
        '{"t":1767225602.0,"learner":"l01","status":200,"prompt":12,"completion":4,"source":"server","refused":"",'
        '"request_s":0.9}',
        '{"t":1767225603.0,"learner":"l01","status":429,"prompt":0,"completion":0,"source":"none","refused":"rate",'
        '"request_s":0.0}',
        '{"t":1767225604.0,"learner":"l02","status":429,"prompt":0,"completion":0,"source":"none",'
        '"refused":"budget","request_s":0.0}',
        '{"t":1767225605.0,"learner":"l02","status":502,"prompt":0,"completion":0,"source":"none","refused":"",'
        '"request_s":0.1}',
        '{"t":1767225606.0,"learner":"l0',  # a line cut short by a crash mid-write
    ]))
    rows = {r.learner: r for r in ws_mod.summarize_usage(lines, ["l01", "l02", "l03"], budget=50)}
    assert rows["l01"].requests == 4 and rows["l01"].prompt_tokens == 34 and rows["l01"].completion_tokens == 16
    assert rows["l01"].p50_latency_s == 0.4 and rows["l01"].refused_429 == 1 and rows["l01"].errors == 0
    assert rows["l01"].last_seen == "2026-01-01T00:00:03+00:00" and rows["l01"].tokens_left == 0
    assert rows["l02"].refused_429 == 1 and rows["l02"].budget_refused == 1 and rows["l02"].errors == 1
    assert rows["l02"].p50_latency_s is None and rows["l02"].tokens_left == 50
    assert rows["l03"].requests == 0 and rows["l03"].last_seen is None
    table = list(csv.DictReader(io.StringIO(ws_mod.usage_csv(list(rows.values()), cost_usd=3.0))))
    assert [r["learner"] for r in table] == ["l01", "l02", "l03", "TOTAL"]
    assert table[0]["cost_share_usd"] == "3.0" and table[1]["cost_share_usd"] == "0.0"
    assert table[-1]["requests"] == "6" and table[-1]["prompt_tokens"] == "34" and table[-1]["cost_share_usd"] == "3.0"


def test_the_chat_page_holds_no_key_and_its_script_is_allowed_by_hash():
    ws = ws_mod.Workshop(name="room", status="up", model="tiny-random", target="local",
                         learners=[ws_mod.Learner(id="l01")], hours=1, expires_at=1767225600, hourly_usd=0,
                         planned_cost_usd=0, allow=["127.0.0.1/32"], listen="127.0.0.1", https_port=8443,
                         rate_per_min=20, burst=5, max_tokens=512, tokens_per_learner=9000,
                         fingerprint="AB:" * 31 + "CD")
    page = ws_mod.render_chat_page(ws)
    assert "mlw-" not in page.html.replace('placeholder="mlw-..."', "")
    assert "up to 512 tokens a reply" in page.html and "9000 tokens in all" in page.html
    assert "sessionStorage" in page.html and "localStorage" not in page.html
    (script,) = [s for s in page.html.split("<script>")[1:]]
    digest = base64.b64encode(hashlib.sha256(script.split("</script>")[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in page.csp and "connect-src 'self'" in page.csp and "unsafe-eval" not in page.csp
    evil = ws.model_copy(update={"model": "</script><script>alert(1)</script>"})
    assert "</script><script>alert(1)" not in ws_mod.render_chat_page(evil).html
    # The cards point at the page and, with the self-signed certificate, say how to check its fingerprint.
    cards = ws_mod.render_cards_html(ws, {"l01": ws_mod.new_key()})
    assert "https://127.0.0.1:8443/" in cards and "compare its SHA-256 fingerprint" in cards
    assert "openssl s_client -connect 127.0.0.1:8443" in cards and "-fingerprint -sha256" in cards


# ---------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def room(llamacpp_bin):
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    lines: list[str] = []
    req = ws_mod.RoomRequest.of(name=NAME, learners=4, model="tiny-random", hours=1, rate_per_min=600, burst=20,
                                https_port=free_port(), max_tokens=CAP, tokens_per_learner=BUDGET)
    ws, _files = ws_mod.up(req, say=lines.append)
    yield ws
    if ws_mod.exists(NAME):
        ws_mod.down(NAME, say=lines.append)


def _client(ws: ws_mod.Workshop, key: str) -> httpx.Client:
    ctx = ws_mod.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    return httpx.Client(base_url=ws.base_url, verify=ctx, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _server_prompt_tokens(messages: list[dict]) -> int:
    """What the model server itself counts for these messages, asked directly with its own key."""
    dep = state.load(NAME)
    r = httpx.post(f"http://127.0.0.1:{dep.endpoint.remote_port}/v1/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {dep.api_key()}"},
                   json={"model": "tiny-random", "messages": messages, "max_tokens": 1})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def _stream(c: httpx.Client, **body) -> list[dict | str]:
    with c.stream("POST", "/chat/completions", json={"model": "tiny-random", "messages": MESSAGES, "stream": True,
                                                     "ignore_eos": True} | body) as r:
        assert r.status_code == 200, r.read()
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def _me(c: httpx.Client) -> dict:
    """A learner's counts (the workshop's remaining seconds, which tick, are checked apart)."""
    r = c.get("/workshop/me")
    assert r.status_code == 200, r.text
    me = r.json()
    assert 0 < me.pop("ends_in_s") <= 3600
    return me


def _row(learner: str) -> ws_mod.LearnerUsage:
    (row,) = [r for r in ws_mod.usage(NAME) if r.learner == learner]
    return row


def test_counts_equal_the_servers_usage_for_plain_and_streamed_replies(room):
    ws = room
    key = ws_mod.load_keys(NAME)["l01"]
    prompt = _server_prompt_tokens(MESSAGES)
    with _client(ws, key) as c:
        plain = c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES, "max_tokens": 7,
                                                  "ignore_eos": True})
        assert plain.status_code == 200, plain.text
        assert plain.json()["usage"] == plain.json()["usage"] | {"prompt_tokens": prompt, "completion_tokens": 7}
        # Streamed without asking for usage: the proxy asks the server for it, counts it, and the learner gets the
        # stream as they asked for it (no usage-only event), still ending in [DONE].
        quiet = _stream(c, max_tokens=9)
        assert quiet[-1] == "[DONE]" and all(e == "[DONE]" or e["choices"] for e in quiet)
        assert not any(isinstance(e, dict) and e.get("usage") for e in quiet)
        assert sum(1 for e in quiet if isinstance(e, dict) and e["choices"][0]["delta"].get("content")) >= 1
        # Streamed asking for usage: the learner sees the server's usage event, as the server sent it.
        asked = _stream(c, max_tokens=5, stream_options={"include_usage": True})
        (last,) = [e for e in asked if isinstance(e, dict) and e.get("usage")]
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5
        assert last["usage"]["prompt_tokens"] == prompt
        # stream_options present but include_usage false: asked for, counted, taken out again.
        off = _stream(c, max_tokens=3, stream_options={"include_usage": False})
        assert not any(isinstance(e, dict) and e.get("usage") for e in off) and off[-1] == "[DONE]"
        me = _me(c)
    assert me["learner"] == "l01" and me["prompt_tokens"] == 4 * prompt
    assert me["completion_tokens"] == 7 + 9 + 5 + 3
    assert me["token_budget"] == BUDGET and me["tokens_left"] == BUDGET - 4 * prompt - 24
    # The instructor's record (usage.jsonl, read through the host) says the same.
    row = _row("l01")
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (4, 4 * prompt, 24)
    assert row.errors == 0 and row.refused_429 == 0 and row.p50_latency_s is not None and row.last_seen
    log = Path(ws.proxy_root, ws_mod.USAGE_FILE).read_text()
    assert all(json.loads(line)["source"] == "server" for line in log.splitlines() if '"l01"' in line)


def test_a_spent_budget_refuses_the_next_request_and_no_one_else(room):
    ws = room
    keys = ws_mod.load_keys(NAME)
    prompt = _server_prompt_tokens(MESSAGES)
    asked: list[tuple[int, int]] = []  # (tokens left before, completion tokens of the reply)
    with _client(ws, keys["l02"]) as c:
        for _ in range(BUDGET // CAP + 3):
            left = _me(c)["tokens_left"]
            r = c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES, "ignore_eos": True,
                                                  "max_tokens": 500})
            if r.status_code != 200:
                break
            asked.append((left, r.json()["usage"]["completion_tokens"]))
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["type"] == "insufficient_quota" and "token budget spent" in err["message"]
        assert f"of its {BUDGET} tokens" in err["message"] and "retry-after" not in r.headers
        # A reply never asks for more than the per-request cap, nor more than the budget has left.
        assert all(done == min(CAP, left) for left, done in asked), asked
        used = sum(prompt + done for _, done in asked)
        assert BUDGET <= used <= BUDGET + prompt  # over by at most the last prompt
        assert _me(c)["tokens_left"] == 0
        streamed = c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES, "stream": True})
        assert streamed.status_code == 429 and streamed.json()["error"]["type"] == "insufficient_quota"
        assert c.get("/models").status_code == 200  # reading costs no tokens
    with _client(ws, keys["l03"]) as c:
        r = c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES, "max_tokens": 4})
        assert r.status_code == 200 and _me(c)["tokens_left"] == BUDGET - prompt - r.json()["usage"]["completion_tokens"]
    row = _row("l02")
    assert row.budget_refused == 2 and row.refused_429 == 2 and row.prompt_tokens + row.completion_tokens == used


def test_counts_survive_a_revokes_reload_and_a_restart(room):
    ws = room
    keys = ws_mod.load_keys(NAME)
    with _client(ws, keys["l01"]) as c:
        before = _me(c)
    master = int(Path(ws.proxy_root, "nginx.pid").read_text())
    ws_mod.revoke(NAME, "l04", say=lambda _line: None)  # rewrites the keys and reloads nginx (HUP)
    assert int(Path(ws.proxy_root, "nginx.pid").read_text()) == master
    with _client(ws, keys["l01"]) as c:
        assert _me(c) == before
    with _client(ws, keys["l02"]) as c:
        assert c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES}).status_code == 429
    # A full restart empties the shared dict; the proxy reads the counts back from its log.
    spec = ws_mod._proxy_spec(ws_mod.load(NAME))
    with ws_mod.session.open_host(state.load(NAME)) as host:
        service.stop(host, spec)
        host.run(f"rm -f {ws.proxy_root}/nginx.pid")
        service.start(host, spec, wait=False)
        ws_mod._proxy_script(host, ws, "wait", PORT=str(ws.https_port))
    assert int(Path(ws.proxy_root, "nginx.pid").read_text()) != master
    with _client(ws, keys["l01"]) as c:
        assert _me(c) == before
    with _client(ws, keys["l02"]) as c:
        r = c.post("/chat/completions", json={"model": "tiny-random", "messages": MESSAGES})
        assert r.status_code == 429 and r.json()["error"]["type"] == "insufficient_quota"


def _spki_pin(cert_pem: str) -> str:
    """Chromium's pin for one certificate: base64 SHA-256 of its public key (what a learner's check by fingerprint
    amounts to; the browser trusts this workshop's certificate and no other)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = x509.load_pem_x509_certificate(cert_pem.encode()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.mark.timeout(900)
def test_a_learner_chats_from_the_page_in_chromium(room, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ws = room
    key = ws_mod.load_keys(NAME)["l03"]
    pin = _spki_pin(state.read_secret(NAME, ws_mod.CERT_FILE))
    page_url = ws.base_url.removesuffix("/v1") + "/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            f"--ignore-certificate-errors-spki-list={pin}"])
        page = browser.new_page()
        try:
            page.goto(page_url)
            expect(page.locator("#model")).to_have_text("tiny-random")
            limits = page.locator("#limits").inner_text()
            assert f"up to {CAP} tokens a reply" in limits and f"{BUDGET} tokens in all" in limits
            page.fill("#key", key)
            page.click("#use-key")
            expect(page.locator("#chat")).to_be_visible()
            expect(page.locator("#usage")).to_contain_text("You are l03")
            page.fill("#prompt", "Say hello.")
            page.click("#send")
            reply = page.locator(".reply.done")
            reply.wait_for(timeout=120_000)
            assert "error" not in (reply.get_attribute("class") or "")
            assert reply.inner_text().strip() and int(reply.get_attribute("data-completion-tokens")) >= 1
            expect(page.locator("#usage")).to_contain_text("left")
            # The key lives in this tab's sessionStorage only: not in the address, not in a cookie, not in the
            # page; a reload keeps the learner signed in.
            assert key not in page.url and key not in page.content() and not page.context.cookies()
            assert page.evaluate("Object.values(sessionStorage)") == [key]
            assert page.evaluate("Object.keys(localStorage).length") == 0
            page.reload()
            expect(page.locator("#chat")).to_be_visible()
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
            page.click("#forget")
            expect(page.locator("#login")).to_be_visible()
            assert page.evaluate("sessionStorage.length") == 0
        finally:
            browser.close()
    # The page's reply was counted for l03 like any other; no key in the proxy's logs.
    row = _row("l03")
    assert row.requests >= 1 and row.completion_tokens >= 1
    for log in ("access.log", ws_mod.USAGE_FILE, "serve.log"):
        assert key not in Path(ws.proxy_root, log).read_text()


def test_the_page_is_served_with_its_policy_and_without_a_key(room):
    ws = room
    ctx = ws_mod.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    r = httpx.get(ws.base_url.removesuffix("/v1") + "/", verify=ctx, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == ws_mod.render_chat_page(ws).csp
    assert r.headers["cache-control"] == "no-store" and "tiny-random" in r.text
    assert httpx.get(ws.base_url + "/workshop/me", verify=ctx, timeout=30).status_code == 401


def test_the_instructor_panel_shows_each_learner_live(room):
    from mistral_lab import ui

    panel = ui.WorkshopPanel(NAME, tick_s=3600)
    try:
        deadline = time.monotonic() + 120
        while "data-learner" not in panel.table.value and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        panel.stop.set()
    shown = panel.table.value
    assert panel.error.value == "" and all(f'data-learner="l0{i}"' in shown for i in range(1, 5))
    rows = {r.learner: r for r in ws_mod.usage(NAME)}
    l02 = shown.split('data-learner="l02"')[1].split("</tr>")[0]
    assert 'color:#c0392b' in l02 and f"<td>{rows['l02'].prompt_tokens:,}</td>" in l02  # spent: in red
    assert "$0.00 so far" in shown and f"{sum(r.requests for r in rows.values()):,} requests" in shown
    assert not any(k in shown for k in ws_mod.load_keys(NAME).values())


def test_status_shows_each_learner_and_down_writes_the_csv_with_the_cost(room, tmp_path):
    assert room.status == "up"
    exe = str(Path(sys.executable).with_name("mistral-lab"))
    r = subprocess.run([exe, "workshop", "status", NAME, "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = {u["learner"]: u for u in json.loads(r.stdout)["usage"]}
    assert set(rows) == {"l01", "l02", "l03", "l04"}
    assert rows["l02"]["budget_refused"] >= 2 and rows["l02"]["tokens_left"] == 0
    assert rows["l01"]["prompt_tokens"] > 0 and rows["l01"]["p50_latency_s"] is not None
    table = subprocess.run([exe, "workshop", "status", NAME], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0 and "l02" in table.stdout and "p50" in table.stdout
    keys = ws_mod.load_keys(NAME).values()
    assert not any(k in r.stdout + table.stdout for k in keys)
    out = tmp_path / "usage.csv"
    d = subprocess.run([exe, "workshop", "down", NAME, "--yes", "--csv", str(out)], capture_output=True, text=True,
                       timeout=300)
    assert d.returncode == 0, d.stderr
    assert f"usage per learner: {out}" in d.stdout and "total cost about $0.00" in d.stdout
    table_rows = list(csv.DictReader(out.open()))
    assert [x["learner"] for x in table_rows] == ["l01", "l02", "l03", "l04", "TOTAL"]
    assert int(table_rows[1]["prompt_tokens"]) == rows["l02"]["prompt_tokens"]
    assert table_rows[-1]["cost_share_usd"] == "0.0"
    assert not any(k in out.read_text() for k in keys)
    assert not ws_mod.exists(NAME)

"""Workshop mode: the pure parts (inputs, sizing, budget, certificate, config, cards), then the proxy and keys end
to end on the local target: the real llama.cpp build serving the tiny model, a real nginx from Debian's packages
started by the workshop as a non-daemon process on a free high port of 127.0.0.1, clients that pin the certificate
by its fingerprint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from llamacpp_fixtures import free_port
from mistral_lab import infra_files, state
from mistral_lab import workshop as ws_mod
from mistral_lab.errors import BadInput, EngineError, TargetError
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts.digitalocean import SweepItem, expired_only
from mistral_lab.planning.show import serve_preview

needs_nginx = pytest.mark.skipif(not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
                                 reason="nginx is not installed (scripts/bootstrap.sh installs it)")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]+$")  # DigitalOcean's tag pattern


def _req(**over) -> ws_mod.RoomRequest:
    return ws_mod.RoomRequest.of(**({"name": "room", "learners": 3, "model": "tiny-random"} | over))


# ---------------------------------------------------------------------------------------------- inputs, plan, budget


@pytest.mark.parametrize(("over", "field", "says"), [
    ({"learners": 0}, "learners", "between 1 and"),
    ({"learners": 501}, "learners", "between 1 and"),
    ({"hours": 0}, "hours", "above 0"),
    ({"hours": 100}, "hours", "at most 72"),
    ({"budget_usd": -1}, "budget_usd", "dollars"),
    ({"rate_per_min": 0}, "rate_per_min", "per minute"),
    ({"https_port": 70000}, "https_port", "between 1 and 65535"),
])
def test_bad_numbers_name_the_field_and_the_fix(over, field, says):
    with pytest.raises(BadInput) as e:
        _req(**over)
    assert e.value.field == field and says in str(e.value.fix)


@pytest.mark.parametrize(("over", "field", "says"), [
    ({"allow": ["0.0.0.0/0"]}, "allow", "whole internet"),
    ({"allow": ["my-laptop"]}, "allow", "not an IP address or CIDR"),
    ({"allow": ["192.168.1.0/24"]}, "public_host", "--public-host"),
    ({"target": "digitalocean", "model": "ministral-3b"}, "allow", "--allow 203.0.113.0/24"),
    ({"ssh_from": ["192.0.2.1/32"]}, "ssh_from", "only applies to DigitalOcean"),
    ({"idle_minutes": 30}, "idle_minutes", "only applies to DigitalOcean"),
    ({"name": "Bad Name"}, "name", "lowercase"),
    ({"target": "digitalocean", "model": "ministral-3b", "allow": ["203.0.113.0/24"], "hours": 3,
      "budget_usd": 2.0, "gpu": "gpu-4000adax1-20gb"}, "budget", "at most --hours 2.63"),
])
def test_bad_room_inputs_are_refused_before_anything_is_made(over, field, says):
    with pytest.raises(BadInput) as e:
        ws_mod.plan_room(_req(**over))
    assert e.value.field == field and says in str(e.value)
    assert not state.exists("room")


def test_the_planner_sizes_the_engine_for_the_room_and_prices_the_hours():
    room = ws_mod.plan_room(_req(learners=30, target="digitalocean", model="ministral-3b", gpu="gpu-l40sx1-48gb",
                                 allow=["203.0.113.0/24"], hours=2.5, budget_usd=10))
    assert room.plan.concurrency == 30 and room.plan.fits
    assert room.hourly_usd == 1.57 and room.planned_cost_usd == 3.93
    assert room.port == 443 and room.listen == "0.0.0.0" and room.allow == ["203.0.113.0/24"]
    assert "planned cost $1.57/hour x 2.5 h = $3.93, budget $10.00" in room.summary()
    # llama.cpp: one slot per learner, each with the planned context; the room is capped so the KV cache is not
    # sized for learners who are reading.
    local = ws_mod.plan_room(_req(learners=12))
    assert "-np 12" in serve_preview(local.plan) and local.planned_cost_usd == 0 and local.listen == "127.0.0.1"
    assert ws_mod.plan_room(_req(learners=200)).plan.concurrency == ws_mod.MAX_SLOTS


def test_expiry_tag_follows_do_tag_rules_and_stays_apart_from_the_deployment_tag():
    tag = res.expiry_tag(1767225600)
    assert tag == "mistral-lab-expires:1767225600" and TAG_RE.match(tag) and len(tag) <= 255
    room = res.Names("room", "inst0001")
    tags = ["mistral-lab", "mistral-lab-owner:inst0001", "mistral-lab:inst0001:room", tag]
    assert res.deployment_of(tags) == "room" and res.owner_of(tags) == "inst0001" and res.expiry_of(tags) == 1767225600
    body = res.droplet_body(room, size="s-1vcpu-1gb", region="nyc3", image="ubuntu-24-04-x64",
                            ssh_key_fingerprint="aa", user_data="#cloud-config\n", expires_at=1767225600)
    assert body["tags"] == tags and all(TAG_RE.match(t) for t in tags)
    fw = res.firewall_body(room, ["192.0.2.10/32"], https_from=["203.0.113.0/24", "198.51.100.7/32"],
                           https_port=443)
    assert fw["inbound_rules"] == [
        {"protocol": "tcp", "ports": "22", "sources": {"addresses": ["192.0.2.10/32"]}},
        {"protocol": "tcp", "ports": "443", "sources": {"addresses": ["203.0.113.0/24", "198.51.100.7/32"]}}]
    assert fw["tags"] == [room.tag]  # an expiry tag there would apply the firewall to other droplets


def test_expired_only_keeps_what_is_past_its_end_and_what_belongs_to_it():
    items = [SweepItem("droplet", "1", "mistral-lab-old", "old", expires_at=100),
             SweepItem("droplet", "2", "mistral-lab-new", "new", expires_at=10_000),
             SweepItem("droplet", "3", "mistral-lab-forever", "forever"),
             SweepItem("firewall", "f1", "mistral-lab-old", "old"), SweepItem("firewall", "f2", "mistral-lab-new", "new"),
             SweepItem("ssh_key", "k1", "mistral-lab-old", "old")]
    assert [(i.kind, i.id) for i in expired_only(items, now=5_000)] == [("droplet", "1"), ("firewall", "f1"),
                                                                        ("ssh_key", "k1")]
    assert expired_only(items, now=50) == []


# ---------------------------------------------------------------------------------------------- certificate, config


def test_certificate_fingerprint_is_the_one_openssl_reports(tmp_path):
    cert = ws_mod.make_certificate("203.0.113.9", valid_hours=2, name="room")
    pem = tmp_path / "cert.pem"
    pem.write_text(cert.cert_pem)
    out = subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", "-fingerprint", "-sha256", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=True).stdout
    assert f"sha256 Fingerprint={cert.fingerprint}" in out.replace("SHA256", "sha256")
    assert "IP Address:203.0.113.9" in out
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", cert.fingerprint)
    assert "PRIVATE KEY" in cert.key_pem and "PRIVATE" not in cert.cert_pem
    assert ws_mod.make_certificate("ws.example.org", valid_hours=1, name="x").fingerprint != cert.fingerprint


@needs_nginx
def test_rendered_config_is_accepted_by_nginx_and_holds_no_key(tmp_path):
    root = str(tmp_path / "proxy")
    (tmp_path / "proxy" / "tmp").mkdir(parents=True)
    ws = ws_mod.Workshop(name="room", status="up", model="tiny-random", target="local",
                         learners=[ws_mod.Learner(id=i) for i in ws_mod.learner_ids(3)], hours=1,
                         expires_at=int(time.time()) + 3600, hourly_usd=0, planned_cost_usd=0,
                         allow=["127.0.0.1/32", "10.0.0.0/8"], listen="127.0.0.1", https_port=free_port(),
                         rate_per_min=20, burst=5)
    keys = {i: ws_mod.new_key() for i in ws_mod.learner_ids(3)}
    cert = ws_mod.make_certificate("127.0.0.1", valid_hours=1, name="room")
    conf = ws_mod.render_nginx_conf(ws, root=root, backend_port=9, worker_user=None)
    files = {"nginx.conf": conf, "cert.pem": cert.cert_pem, "cert.key": cert.key_pem,
             "keys.map": ws_mod.render_keys_map("room", keys),
             "upstream-auth.conf": infra_files.render("nginx-upstream-auth.conf.j2", server_key="ml-server-key"),
             # nginx -t runs init_by_lua, which loads usage.lua
             "usage.lua": infra_files.read("workshop-usage.lua"), "learner.lua": infra_files.read("workshop-learner.lua")}
    for name, text in files.items():
        (tmp_path / "proxy" / name).write_text(text)
    assert "allow 127.0.0.1/32;" in conf and "allow 10.0.0.0/8;" in conf and "deny all;" in conf
    assert "rate=20r/m" in conf and "burst=5 nodelay" in conf and "limit_conn learner_conns 2" in conf
    assert not any(k in conf for k in keys.values()) and "ml-server-key" not in conf
    assert all(f'"Bearer {k}" {i};' in files["keys.map"] for i, k in keys.items())
    r = subprocess.run([NGINX, "-e", "stderr", "-p", f"{root}/", "-c", f"{root}/nginx.conf", "-t"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "syntax is ok" in r.stderr and "test is successful" in r.stderr


def _workshop_with_cards(n: int = 3) -> tuple[ws_mod.Workshop, dict[str, str]]:
    ids = ws_mod.learner_ids(n)
    ws = ws_mod.Workshop(name="room", status="up", model="tiny-random", target="local",
                         learners=[ws_mod.Learner(id=i) for i in ids], hours=2, expires_at=1767225600,
                         hourly_usd=0, planned_cost_usd=0, allow=["127.0.0.1/32"], listen="127.0.0.1",
                         https_port=8443, rate_per_min=20, burst=5, fingerprint="AB:" * 31 + "CD")
    return ws, {i: ws_mod.new_key() for i in ids}


def test_cards_html_and_csv_carry_url_key_fingerprint_and_a_three_line_snippet():
    ws, keys = _workshop_with_cards()
    ws.learners[1].revoked_at = "2026-01-01T10:00:00+00:00"
    html = ws_mod.render_cards_html(ws, keys)
    assert html.count('class="card"') == 2 and "1 revoked: l02" in html
    for i in ("l01", "l03"):
        assert f'<section class="card" id="{i}">' in html and keys[i] in html
    assert keys["l02"] not in html
    assert html.count(ws.fingerprint) == 4  # shown and in each snippet
    assert "https://127.0.0.1:8443/v1" in html and "2026-01-01 00:00 UTC" in html
    assert "&#34;" in html or "&quot;" in html  # the snippet is escaped HTML, not markup
    rows = list(csv.DictReader(io.StringIO(ws_mod.render_cards_csv(ws, keys))))
    assert [r["learner"] for r in rows] == ["l01", "l02", "l03"]
    assert rows[1]["status"].startswith("revoked") and rows[0]["status"] == "active"
    assert {r["api_key"] for r in rows} == set(keys.values()) and {r["fingerprint"] for r in rows} == {ws.fingerprint}
    (card,) = [c for c in ws_mod.cards(ws, keys) if c.learner == "l03"]
    code = ws_mod.snippet(card)
    assert len(code.strip().splitlines()) == 3
    compile(code, "card", "exec")
    assert card.api_key in code and ws.fingerprint in code and '("127.0.0.1", 8443)' in code
    assert ws_mod.Workshop.model_validate({**ws.model_dump(), "https_port": 443, "public_host": "2001:db8::5"}
                                          ).base_url == "https://[2001:db8::5]/v1"


# ---------------------------------------------------------------------------------------------- end to end, local




ROOM_MAX_TOKENS = 3600  # above what the in-flight reply of the revoke test asks for


@pytest.fixture(scope="module")
def room(llamacpp_bin, tmp_path_factory):
    """A workshop of 5 learners on the tiny model: l01 asks, l02 is rate-limited, l03 is revoked, l04 and l05 are
    revoked at the same moment."""
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed (scripts/bootstrap.sh installs it)")
    lines: list[str] = []
    port = free_port()
    req = ws_mod.RoomRequest.of(name="wsroom", learners=5, model="tiny-random", hours=1, rate_per_min=60, burst=5,
                                https_port=port, max_tokens=ROOM_MAX_TOKENS)
    ws, files = ws_mod.up(req, say=lines.append)
    yield ws, files, lines
    if ws_mod.exists("wsroom"):
        ws_mod.down("wsroom", say=lines.append)


def _client(ws: ws_mod.Workshop, key: str | None) -> httpx.Client:
    ctx = ws_mod.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    # 3,600 tokens take 30-80 s on a loaded 2-core machine, through the proxy or not: waiting is not what is tested.
    return httpx.Client(base_url=ws.base_url, verify=ctx, headers=headers, timeout=300)


def _chat(c: httpx.Client, **over) -> httpx.Response:
    return c.post("/chat/completions", json={"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 8} | over)


@pytest.mark.slow
def test_up_shows_the_cost_first_and_writes_private_cards(room):
    ws, files, lines = room
    assert lines[0].startswith("workshop wsroom: 5 learners on tiny-random") and "planned cost $0.00" in lines[0]
    assert ws.status == "up" and ws.base_url == f"https://127.0.0.1:{ws.https_port}/v1"
    keys = ws_mod.load_keys("wsroom")
    folder = state.deployment_dir("wsroom")
    for name in (ws_mod.KEYS_FILE, ws_mod.CARDS_HTML, ws_mod.CARDS_CSV):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    html = Path(files["html"]).read_text()
    assert all(k in html for k in keys.values()) and ws.fingerprint in html
    # The CLI reads the same record; its JSON has the shape the issue asks for.
    r = subprocess.run([str(Path(sys.executable).with_name("mistral-lab")), "workshop", "cards", "wsroom", "--json"],
                       capture_output=True, text=True, timeout=60)
    cards = json.loads(r.stdout)["cards"]
    assert [set(c) >= {"base_url", "api_key", "fingerprint"} for c in cards] == [True] * len(keys) == [True] * 5
    assert {c["api_key"] for c in cards} == set(keys.values())


@pytest.mark.slow
def test_the_card_snippet_gets_a_reply_over_tls_pinned_by_fingerprint(room, tmp_path):
    ws, _, _ = room
    (card,) = [c for c in ws_mod.cards(ws, ws_mod.load_keys("wsroom")) if c.learner == "l01"]
    code = ws_mod.snippet(card)
    # The card's three lines as a learner runs them, plus one that shows what came back.
    # The tiny random model never says it is done: cap the reply.
    probe = code.replace('.choices[0].message.content)', '.model_dump_json())').replace(
        "messages=", "max_tokens=8, messages=")
    script = tmp_path / "learner.py"
    script.write_text(probe)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["model"] == "tiny-random" and reply["usage"]["completion_tokens"] >= 1
    # The same lines against a different fingerprint refuse to send the key.
    script.write_text(code.replace(card.fingerprint, "00:" * 31 + "00"))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "not the workshop server" in r.stderr


@pytest.mark.slow
def test_streaming_passes_through_token_by_token(room):
    ws, _, _ = room
    with _client(ws, ws_mod.load_keys("wsroom")["l01"]) as c, c.stream(
            "POST", "/chat/completions", json={"model": "tiny-random", "stream": True, "max_tokens": 16,
                                               "messages": [{"role": "user", "content": "count"}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        # When the room ends, in seconds; the plain-words warning only in its last 15 minutes.
        assert 0 < int(r.headers["x-workshop-ends-in"]) <= ws.expires_at - time.time() + 2
        assert "x-workshop-warning" not in r.headers
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 3 and events[-1] == "data: [DONE]"


@pytest.mark.slow
def test_no_model_without_tls_the_right_certificate_or_a_learner_key(room):
    ws, _, _ = room
    dep = state.load("wsroom")
    backend = dep.endpoint.remote_port
    # Plain HTTP to the proxy's port: the connection is closed without an answer.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{ws.https_port}/v1/models", timeout=10)
    # TLS without pinning, with the system's trust store: the self-signed certificate is refused.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(ws.base_url + "/models", timeout=10)
    with pytest.raises(TargetError, match="not the workshop's"):
        ws_mod.pinned_context("127.0.0.1", ws.https_port, "00:" * 31 + "00")
    # TLS, right certificate: no key, a made-up key and the server's own key are all refused by the proxy.
    with _client(ws, None) as c:
        r = c.get("/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    for key in (ws_mod.new_key(), dep.api_key()):
        with _client(ws, key) as c:
            assert c.get("/models").status_code == 401
    # Only /v1/ is passed on: the server's other endpoints stay behind.
    with _client(ws, ws_mod.load_keys("wsroom")["l01"]) as c:
        assert c.get(f"{ws.base_url.removesuffix('/v1')}/metrics").status_code == 404
        assert c.get(f"{ws.base_url.removesuffix('/v1')}/slots").status_code == 404
    # The backend listens on loopback only, and wants the server key: a learner's key is not it.
    listening = _listen_addresses(backend)
    assert listening == {"127.0.0.1"}, listening
    learner = ws_mod.load_keys("wsroom")["l01"]
    r = httpx.get(f"http://127.0.0.1:{backend}/v1/models", headers={"Authorization": f"Bearer {learner}"}, timeout=10)
    assert r.status_code == 401


def _listen_addresses(port: int) -> set[str]:
    """Addresses with a TCP socket listening on `port`, from /proc/net/tcp{,6} (state 0A is LISTEN)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, st = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if st == "0A" and int(hexport, 16) == port:
                if len(addr) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    found.add("v6:" + addr)
    return found


@pytest.mark.slow
def test_a_learner_over_the_rate_gets_429_and_the_others_do_not(room):
    ws, _, _ = room
    keys = ws_mod.load_keys("wsroom")
    with _client(ws, keys["l02"]) as c:
        codes = [c.get("/models").status_code for _ in range(ws.burst + 4)]
        assert codes[0] == 200 and 429 in codes, codes
        r = c.get("/models")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit"
    with _client(ws, keys["l01"]) as c:
        assert c.get("/models").status_code == 200


@pytest.mark.slow
def test_revoking_a_key_takes_effect_at_once_without_a_restart(room):
    ws, _, _ = room
    keys = ws_mod.load_keys("wsroom")
    master = int(Path(ws.proxy_root, "nginx.pid").read_text())
    with _client(ws, keys["l03"]) as c:
        assert c.get("/models").status_code == 200
    # A reply in flight on another key while the revocation reloads nginx runs to its end.
    streamed: dict[str, object] = {"events": []}
    first_token = threading.Event()

    def long_reply() -> None:
        with _client(ws, keys["l01"]) as c, c.stream("POST", "/chat/completions", json={
                "model": "tiny-random", "stream": True, "max_tokens": 3500, "ignore_eos": True,
                "messages": [{"role": "user", "content": "go on"}]}) as r:
            streamed["status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    streamed["events"].append(line)
                    first_token.set()

    t = threading.Thread(target=long_reply)
    t.start()
    assert first_token.wait(60)
    # In-process, so the reload lands well inside the ~2 s the reply takes on a quiet machine (the CLI's own
    # start-up alone can outlast it); the CLI's revoke is exercised on l02 below.
    said: list[str] = []
    ws_mod.revoke("wsroom", "l03", say=said.append)
    in_flight = t.is_alive()
    assert any("revoked l03" in line for line in said) and keys["l03"] not in "\n".join(said)
    with _client(ws, keys["l03"]) as c:
        assert c.get("/models").status_code == 401
    t.join(600)  # a loaded 2-core machine takes minutes for 3,500 tokens; waiting is not what is tested
    assert not t.is_alive(), "the reply in flight never finished"
    print(f"reply in flight through the reload: {in_flight}, {len(streamed['events'])} events")
    assert in_flight
    assert streamed["status"] == 200 and streamed["events"][-1] == "data: [DONE]" and len(streamed["events"]) > 1000
    assert int(Path(ws.proxy_root, "nginx.pid").read_text()) == master  # reloaded, not restarted
    with _client(ws, keys["l01"]) as c:
        assert c.get("/models").status_code == 200
    again = ws_mod.load("wsroom")
    assert "l03" not in [learner.id for learner in again.active] and {"l01", "l02"} <= {x.id for x in again.active}
    assert keys["l03"] not in Path(again.proxy_root, "keys.map").read_text()
    assert keys["l03"] not in Path(state.deployment_dir("wsroom") / ws_mod.CARDS_HTML).read_text()
    with pytest.raises(BadInput, match="no learner") as e:
        ws_mod.revoke("wsroom", "l09")
    assert e.value.field == "learner"
    exe = str(Path(sys.executable).with_name("mistral-lab"))
    r = subprocess.run([exe, "workshop", "revoke", "wsroom", "l02"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "revoked l02" in r.stdout and keys["l02"] not in r.stdout + r.stderr
    with _client(ws, keys["l02"]) as c:
        assert c.get("/models").status_code == 401
    assert int(Path(ws.proxy_root, "nginx.pid").read_text()) == master


@pytest.mark.slow
def test_no_key_in_logs_records_configs_or_command_lines(room):
    ws, _, lines = room
    keys = list(ws_mod.load_keys("wsroom").values())
    dep = state.load("wsroom")
    secrets = [*keys, dep.api_key()]
    proxy = Path(ws.proxy_root)
    access = (proxy / "access.log").read_text()
    assert " l01 " in access  # learners are logged by id
    public = [access, (proxy / "serve.log").read_text(), (proxy / "nginx.conf").read_text(), "\n".join(lines),
              (state.deployment_dir("wsroom") / "workshop.json").read_text(), dep.model_dump_json(),
              Path(dep.service.log_file).read_text()]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                public.append(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"))
            except OSError:
                continue
    for text in public:
        assert not any(s in text for s in secrets)
    for name in ("keys.map", "upstream-auth.conf", "cert.key"):
        assert stat.S_IMODE((proxy / name).stat().st_mode) == 0o600, name


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_cli_up_json_then_down_leaves_nothing(llamacpp_bin):
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed")
    exe = str(Path(sys.executable).with_name("mistral-lab"))
    port = free_port()
    r = subprocess.run([exe, "workshop", "up", "--name", "wscli", "--learners", "2", "--model", "tiny-random",
                        "--hours", "0.5", "--https-port", str(port), "--json"], capture_output=True, text=True,
                       timeout=600)
    try:
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)  # stdout is only the JSON; progress went to stderr
        assert len(out["cards"]) == 2 and all(set(c) >= {"base_url", "api_key", "fingerprint"} for c in out["cards"])
        assert "planned cost $0.00" in r.stderr.splitlines()[0]
        assert out["chat_page"] == f"https://127.0.0.1:{port}/" and out["tokens_per_learner"] is None
        assert not any(c["api_key"] in r.stderr for c in out["cards"])
        ws = ws_mod.load("wscli")
        master = int(Path(ws.proxy_root, "nginx.pid").read_text())
        dep = state.load("wscli")
        backend, server_key = dep.endpoint.remote_port, dep.api_key()
        ctx = ws_mod.pinned_context("127.0.0.1", port, out["cards"][0]["fingerprint"])
        assert httpx.get(out["cards"][0]["base_url"] + "/models", verify=ctx, timeout=30,
                         headers={"Authorization": f"Bearer {out['cards'][0]['api_key']}"}).status_code == 200
    except BaseException:
        if ws_mod.exists("wscli"):
            ws_mod.down("wscli", say=print)
        raise
    r = subprocess.run([exe, "workshop", "down", "wscli", "--yes"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "total cost about $0.00" in r.stdout
    assert not state.exists("wscli") and not ws_mod.exists("wscli")
    assert not Path(f"/proc/{master}").exists()
    assert _listen_addresses(port) == set()
    # The backend's port may already serve another test's deployment (xdist): what must be gone is this server.
    try:
        answered = httpx.get(f"http://127.0.0.1:{backend}/v1/models", timeout=10,
                             headers={"Authorization": f"Bearer {server_key}"}).status_code
    except httpx.HTTPError:
        answered = None
    assert answered != 200, "the workshop's model server still answers with its key"


@needs_nginx
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_plain_teardown_of_a_workshop_deployment_stops_its_proxy_too(llamacpp_bin):
    import mistral_lab as ml

    port = free_port()
    ws, _files = ws_mod.up(ws_mod.RoomRequest.of(name="wsplain", learners=1, model="tiny-random", hours=0.5,
                                                 https_port=port), say=lambda _: None)
    master = int(Path(ws.proxy_root, "nginx.pid").read_text())
    assert _listen_addresses(port)
    report = ml.teardown("wsplain", say=lambda _: None)  # not `workshop down`: someone used the plain command
    assert report.leftovers == []
    assert not Path(f"/proc/{master}").exists() and _listen_addresses(port) == set()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_failure_mid_up_removes_what_it_made(llamacpp_bin):
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed")
    # Something else already listens on the port asked for: nginx cannot bind it, after the model is up.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        lines: list[str] = []
        with pytest.raises(EngineError) as e:
            ws_mod.up(ws_mod.RoomRequest.of(name="wsfail", learners=2, model="tiny-random", https_port=port),
                      say=lines.append)
    assert "Address already in use" in str(e.value) and "another --https-port" in str(e.value.fix)
    assert any("✔ wsfail is up" in line for line in lines)  # the model had been deployed
    assert any("removing what it made" in line for line in lines)
    assert not state.exists("wsfail") and not ws_mod.exists("wsfail")
    started = [line for line in lines if "started pid" in line]
    assert started, lines
    for line in started:
        assert not Path(f"/proc/{line.rsplit(' ', 1)[1]}").exists()


def test_under_systemd_the_proxy_master_runs_as_root_and_its_workers_as_the_login_user():
    # A droplet runs the proxy as a systemd unit: root binds 443, workers drop to the SSH user, who owns the folder.
    from mistral_lab.engines import service

    ws, _ = _workshop_with_cards()
    ws = ws.model_copy(update={"proxy_root": "/home/mistral/mistral-lab/deployments/room/proxy",
                               "proxy_mode": "systemd", "https_port": 443, "listen": "0.0.0.0"})
    spec = ws_mod._proxy_spec(ws, "/usr/sbin/nginx")
    unit = service.render_unit(spec)
    assert "User=" not in unit and f"ExecStart={ws.proxy_root}/serve.sh" in unit
    assert spec.unit == "mistral-lab-room-proxy"
    script = service.render_serve_script(spec)
    assert "exec /usr/sbin/nginx -e stderr -p /home/mistral/mistral-lab/deployments/room/proxy/" in script
    assert "'daemon off;'" in script
    conf = ws_mod.render_nginx_conf(ws, root=ws.proxy_root, backend_port=8080, worker_user="mistral")
    assert "\nuser mistral;\n" in conf and "listen 0.0.0.0:443 ssl;" in conf
    assert "proxy_pass http://127.0.0.1:8080;" in conf


@pytest.mark.slow
def test_two_revokes_at_the_same_moment_both_stick(room):
    ws, _, _ = room
    keys = ws_mod.load_keys("wsroom")
    start = threading.Barrier(2)

    def revoke(who: str) -> None:
        start.wait()
        ws_mod.revoke("wsroom", who, say=lambda _line: None)

    threads = [threading.Thread(target=revoke, args=(who,)) for who in ("l04", "l05")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    again = ws_mod.load("wsroom")
    assert {"l04", "l05"} <= {learner.id for learner in again.learners if not learner.active}
    for who in ("l04", "l05"):
        with _client(ws, keys[who]) as c:
            assert c.get("/models").status_code == 401


@pytest.mark.slow
def test_the_network_is_checked_before_the_key_and_the_rate_limit(room):
    """From outside the allowed networks a valid key and a wrong one get the same 403, and neither spends the
    learner's rate limit."""
    ws, _, _ = room
    keys = ws_mod.load_keys("wsroom")
    ctx = ws_mod.pinned_context("127.0.0.1", ws.https_port, ws.fingerprint)
    outside = httpx.Client(base_url=ws.base_url, verify=ctx, timeout=60,
                           transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.0.2"))
    with outside:
        answers = {who: outside.get("/models", headers={"Authorization": f"Bearer {key}"})
                   for who, key in (("valid", keys["l01"]), ("wrong", "mlw-not-a-key"))}
        assert {a.status_code for a in answers.values()} == {403}
        assert answers["valid"].content == answers["wrong"].content  # nothing tells a valid key from a wrong one
        for _ in range(ws.rate_per_min + ws.burst + 5):  # more than the key's whole minute, from outside
            assert outside.get("/models", headers={"Authorization": f"Bearer {keys['l01']}"}).status_code == 403
    with _client(ws, keys["l01"]) as c:
        assert c.get("/models").status_code == 200  # its limit is untouched


@pytest.mark.slow
def test_a_learner_request_is_capped_in_tokens_and_to_one_reply(room):
    ws, _, _ = room
    keys = ws_mod.load_keys("wsroom")
    with _client(ws, keys["l01"]) as c:
        big = _chat(c, max_tokens=ROOM_MAX_TOKENS + 500, ignore_eos=True)
        assert big.status_code == 200, big.text
        assert big.json()["usage"]["completion_tokens"] == ROOM_MAX_TOKENS
        unset = c.post("/chat/completions", json={"model": "tiny-random", "ignore_eos": True,
                                                  "messages": [{"role": "user", "content": "hi"}]})
        assert unset.status_code == 200 and unset.json()["usage"]["completion_tokens"] == ROOM_MAX_TOKENS
        several = _chat(c, n=3)
        assert several.status_code == 400 and "n must be 1" in several.json()["error"]["message"]
        assert _chat(c, max_tokens="lots").status_code == 400
        small = _chat(c, max_tokens=4, tools=[])  # within the cap: passed on as sent (an empty array stays one)
        assert small.status_code == 200 and small.json()["usage"]["completion_tokens"] <= 4


@pytest.mark.slow
def test_a_stream_the_learner_hangs_up_on_is_counted_by_its_chunks(room):
    """No usage arrives when the learner closes a stream early (nginx then closes the server's connection too):
    the chunks that went out are counted, about a token each, so hanging up does not make replies free."""
    ws, _, _ = room
    usage_log = Path(ws.proxy_root, ws_mod.USAGE_FILE)
    before = len(usage_log.read_text().splitlines())
    seen = 0
    with _client(ws, ws_mod.load_keys("wsroom")["l01"]) as c, c.stream("POST", "/chat/completions", json={
            "model": "tiny-random", "stream": True, "max_tokens": 3000, "ignore_eos": True,
            "messages": [{"role": "user", "content": "go on"}]}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 20:
                break  # leaving the block closes the connection
    deadline = time.monotonic() + 120
    rows: list[dict] = []
    while not rows and time.monotonic() < deadline:
        time.sleep(0.5)
        rows = [json.loads(x) for x in usage_log.read_text().splitlines()[before:]]
        # The previous test's last reply may be logged after `before` was read: it was counted from the server's
        # usage, so only a row of another source can be this hang-up's.
        rows = [x for x in rows if x["learner"] == "l01" and x["path"] == "/v1/chat/completions"
                and x["source"] != "server"]
    (row,) = rows
    assert row["source"] == "chunks" and 19 <= row["completion"] < 3000, row

"""Workshop mode on DigitalOcean, against the fake DO API whose droplet is a real sshd on 127.0.0.N: the CLI creates
a firewall that opens the proxy's port to the given CIDRs only and a droplet with an expiry tag; the model answers
through the real nginx on the droplet, pinned by the card's fingerprint; `sweep --expired` leaves it alone until
its time, then destroys the droplet, firewall and key; `workshop down` then forgets the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_deploy import shared_build_cache  # noqa: F401  (fixture: the build where the droplet's user finds it)

import fakedo
import sshd
from fakedo.sshd_backend import SshdBackend, droplet_user
from llamacpp_fixtures import free_port
from mistral_lab import state
from mistral_lab import workshop as ws_mod
from mistral_lab.hosts import do_resources as res
from mistral_lab.lifecycle import deadline

pytestmark = [
    pytest.mark.slow, pytest.mark.timeout(1800),
    pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available())),
    pytest.mark.skipif(not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")),
                       reason="nginx is not installed (scripts/bootstrap.sh installs it)"),
]
SSH_FROM = "192.0.2.10/32"
ROOM = ["127.0.0.0/8", "198.51.100.0/24"]  # loopback: the fake droplet's address is 127.0.0.N
HOURS = 0.02  # 72 s: long enough to deploy and query, short enough to wait out


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mistral-lab")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, COLUMNS="200"))


def test_workshop_on_the_fake_do_api_firewall_expiry_and_sweep(tmp_path, monkeypatch, shared_build_cache,  # noqa: F811
                                                               llamacpp_bin):
    token = "dop_v1_" + os.urandom(32).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    monkeypatch.setenv("HF_TOKEN", "hf_" + os.urandom(17).hex())  # exported, as many users have it: no option
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    outputs: list[str] = []
    with fakedo.serve(token, backend=SshdBackend(tmp_path / "machines"), polls_to_active=2) as fake:
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.url)
        port = free_port()
        r = _cli("workshop", "up", "--name", "wsdo", "--learners", "2", "--model", "tiny-random",
                 "--target", "digitalocean", "--engine", "llamacpp", "--gpu", "gpu-l40sx1-48gb",
                 "--hours", str(HOURS), "--budget", "1", "--allow", ",".join(ROOM), "--ssh-from", SSH_FROM,
                 "--https-port", str(port), "--ssh-port", str(fake.ssh_port), "--user", droplet_user(),
                 "--option", "poll_interval=0.1", "--option", f"host_cache={shared_build_cache}", "--json")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        up = json.loads(r.stdout)
        # The cost was shown before anything was created.
        first = r.stderr.splitlines()[0]
        assert "planned cost $1.57/hour x 0.02 h = $0.03, budget $1.00" in first

        # The firewall: SSH from the instructor, the proxy's port from the room, nothing else in.
        (fw,) = fake.state.firewalls.values()
        assert fw["inbound_rules"] == [
            {"protocol": "tcp", "ports": "22", "sources": {"addresses": [SSH_FROM]}},
            {"protocol": "tcp", "ports": str(port), "sources": {"addresses": ROOM}}]
        assert fw["tags"] == [res.Names("wsdo", state.installation_id()).tag]
        (droplet,) = fake.state.droplets.values()
        assert res.expiry_tag(up["expires_at"]) in droplet.body["tags"]
        assert abs(up["expires_at"] - (time.time() + HOURS * 3600)) < HOURS * 3600

        # The model server's user reads none of the proxy's secrets: learner keys, TLS key, the server key line.
        proxy = Path(ws_mod.load("wsdo").proxy_root)
        for secret in ("keys.map", "cert.key", "upstream-auth.conf"):
            r = subprocess.run(["runuser", "-u", "mlserve", "--", "cat", str(proxy / secret)], capture_output=True)
            assert r.returncode != 0 and (proxy / secret).is_file(), secret

        # A learner's card works from here: the droplet's address, TLS pinned by the printed fingerprint.
        card = up["cards"][0]
        assert card["base_url"] == f"https://{droplet.address}:{port}/v1"
        ctx = ws_mod.pinned_context(droplet.address, port, card["fingerprint"])
        reply = httpx.post(card["base_url"] + "/chat/completions", verify=ctx, timeout=60,
                           headers={"Authorization": f"Bearer {card['api_key']}"},
                           json={"model": "tiny-random", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
        assert httpx.get(card["base_url"] + "/models", verify=ctx, timeout=30).status_code == 401
        # Every reply says how long the workshop has left.
        assert 0 <= int(reply.headers["X-Workshop-Ends-In"]) <= up["expires_at"] - time.time() + 2
        assert "this workshop ends in" in reply.headers["X-Workshop-Warning"]  # 72 s: the last minutes already
        # Without a deadline token nothing on the droplet removes it: up said what must run instead.
        said = outputs[1]  # up's progress lines
        assert up["deadline_kept_by"] == "sweep" and "sweep --expired" in said and "cron" in said

        # Before its time, sweep --expired leaves it alone.
        assert time.time() < up["expires_at"], "the deploy took longer than the workshop's hours"
        r = _cli("sweep", "--expired")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        assert "destroyed 0 expired resources" in r.stdout and len(fake.state.droplets) == 1

        time.sleep(max(0.0, up["expires_at"] + 1 - time.time()))
        r = _cli("sweep", "--expired", "--json")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert sorted(i["kind"] for i in done) == ["droplet", "firewall", "ssh_key"]
        assert all(i["destroyed"] and i["deployment"] == "wsdo" for i in done)
        assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}
        assert not any(t.startswith(res.EXPIRY_PREFIX) for t in fake.state.tags)
        # The droplet is gone; down still forgets the workshop and says what it cost.
        r = _cli("workshop", "down", "wsdo", "--yes")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        assert "workshop wsdo is gone" in r.stdout and "total cost about $" in r.stdout
        assert not state.exists("wsdo") and not ws_mod.exists("wsdo")
        assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}
    assert not any(token in text for text in outputs)
    assert not any(card["api_key"] in text for text in outputs[1:] for card in up["cards"])  # only in up's JSON


def test_a_workshop_droplet_with_a_deadline_token_removes_itself_when_idle(tmp_path, monkeypatch,
                                                                         shared_build_cache,  # noqa: F811
                                                                         llamacpp_bin):
    """With MISTRAL_LAB_DEADLINE_TOKEN (only the four delete scopes) the droplet needs no sweep: after
    --idle-minutes with no learner request it removes itself, its firewall, key and tags, long before its end. A
    token short of a scope stops `up` before anything exists."""
    token = "dop_v1_" + os.urandom(32).hex()
    narrow = "dop_v1_" + os.urandom(32).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    outputs: list[str] = []
    args = ["workshop", "up", "--name", "wsidle", "--learners", "1", "--model", "tiny-random",
            "--target", "digitalocean", "--engine", "llamacpp", "--gpu", "gpu-l40sx1-48gb", "--hours", "0.1",
            "--idle-minutes", "1", "--allow", ",".join(ROOM), "--ssh-from", SSH_FROM, "--user", droplet_user(),
            "--option", "poll_interval=0.1", "--option", f"host_cache={shared_build_cache}", "--json", "--yes"]
    with fakedo.serve(token, backend=SshdBackend(tmp_path / "machines"), polls_to_active=2,
                      other_tokens={narrow: frozenset(deadline.SCOPES) - {"tag:delete"}}) as fake:
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.url)
        args += ["--https-port", str(free_port()), "--ssh-port", str(fake.ssh_port)]

        # --idle-minutes without a deadline token: refused, naming the variable.
        r = _cli(*args)
        outputs += [r.stdout, r.stderr]
        assert r.returncode != 0 and deadline.TOKEN_ENV in r.stderr
        # A token short of a scope: refused by the deletes it would make, before any droplet exists.
        monkeypatch.setenv(deadline.TOKEN_ENV, narrow)
        r = _cli(*args)
        outputs += [r.stdout, r.stderr]
        assert r.returncode != 0 and "tag:delete" in r.stderr, r.stderr
        assert fake.count("POST /v2/droplets") == 0 and not ws_mod.exists("wsidle")

        fake.state.other_tokens[narrow] = frozenset(deadline.SCOPES)
        r = _cli(*args)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        up = json.loads(r.stdout)
        assert up["deadline_kept_by"] == "droplet"
        dep = state.load("wsidle")
        (loop,) = [c for c in dep.companions if c.engine == "deadline"]  # teardown would stop it first
        env_file = Path(loop.root) / "env"
        assert "IDLE_S=60" in env_file.read_text() and "usage.jsonl" in env_file.read_text()

        card = up["cards"][0]
        (droplet,) = fake.state.droplets.values()
        ctx = ws_mod.pinned_context(droplet.address, int(card["base_url"].rsplit(":", 1)[1].split("/")[0]),
                                    card["fingerprint"])
        reply = httpx.post(card["base_url"] + "/chat/completions", verify=ctx, timeout=120,
                           headers={"Authorization": f"Bearer {card['api_key']}"},
                           json={"model": "tiny-random", "max_tokens": 4,
                                 "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
        last_request = time.time()
        end = last_request + 60 + 30 + 30  # idle limit + the loop's interval + its deletes
        while time.time() < end and fake.leftovers() != {"droplets": [], "firewalls": [], "ssh_keys": []}:
            time.sleep(1)
        assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}
        assert time.time() - last_request >= 60, "removed before the idle limit"
        assert time.time() < up["expires_at"], "removed at its end, not for being idle"
        assert res.Names("wsidle", state.installation_id()).tag not in fake.state.tags
        assert fake.count("DELETE /v2/droplets/{id}", status=204) >= 1

        r = _cli("workshop", "down", "wsidle", "--yes")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 0, r.stderr
        assert not state.exists("wsidle") and not ws_mod.exists("wsidle")
    assert not any(secret in text for text in outputs for secret in (token, narrow))

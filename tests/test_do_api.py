"""DOApi, our layer over pydo, and the DigitalOcean target's waits, against the stateful fake DO API.

What pydo does by default is checked here too (its POST retries, its returned 404 bodies), with pydo itself: those
defaults are why DOApi exists. The fixtures come from test_digitalocean.py, so every test here also ends with
nothing left in the fake and the token in no output, log or file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import test_digitalocean as do_tests
from test_digitalocean import (
    ALLOW,
    CHILD,
    OWNER,
    _api,
    _cli,
    _left_over_droplet,
    _options,
    _provision,
    _teardown,
    needs_sshd,
    state_record,
)

from mistral_lab import state
from mistral_lab.errors import TargetError
from mistral_lab.hosts import do_api
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts.cloudinit import generate_ed25519
from mistral_lab.hosts.digitalocean import DigitalOceanTarget, find_leftovers
from mistral_lab.hosts.do_api import DOApi, DOApiError, TokenRefused

# The fake DO API with its end-of-test checks (nothing left in it, the token in no output), as test_digitalocean.py
# uses it.
fake, env, token = do_tests.fake, do_tests.env, do_tests.token

# ---------------------------------------------------------------------------------------------- POST is sent once


def test_pydo_by_default_retries_a_failed_post_and_doapi_does_not(fake, token):
    import pydo

    public = generate_ed25519("k").public_openssh
    fake.state.faults.inject("POST /v2/account/keys", 503, times=2)
    # pydo as it comes (only the backoff shortened): azure-core's policy repeats a POST answered 500/503/504.
    raw = pydo.Client(token, endpoint=fake.url, authentication_policy=do_api._bearer_policy(token),
                      retry_backoff_factor=0.01)
    key = raw.ssh_keys.create(body={"name": "mistral-lab-pydo", "public_key": public})
    assert fake.count("POST /v2/account/keys") == 3, "pydo sent the POST three times"
    _api().delete_ssh_key(key["ssh_key"]["id"])

    fake.state.faults.inject("POST /v2/account/keys", 503, times=2)
    api = _api()
    with pytest.raises(DOApiError) as e:
        api.create_ssh_key("mistral-lab-ours", public)
    assert e.value.status == 503 and api.stats.retries == 0
    assert fake.count("POST /v2/account/keys") == 4, "DOApi sent it once"
    assert fake.leftovers()["ssh_keys"] == []


def test_a_post_that_failed_after_the_work_was_done_is_not_repeated(fake):
    """The API made the firewall, then answered 500: a retry would make a second one."""
    api = _api()
    names = res.Names("fw", OWNER)
    api.create_tag(names.tag)
    fake.state.faults.inject("POST /v2/firewalls", 500, after_commit=True)
    with pytest.raises(DOApiError) as e:
        api.create_firewall(res.firewall_body(names, [ALLOW]))
    assert e.value.status == 500 and fake.count("POST /v2/firewalls") == 1
    (made,) = fake.state.firewalls
    assert api.delete_firewall(made)
    api.delete_tag(names.tag)


def test_429_is_retried_after_retry_after_even_for_a_post(fake):
    """A 429 means the API did not process the request, so repeating it cannot make anything twice."""
    waits: list[float] = []
    api = DOApi(sleep=waits.append)
    fake.state.faults.inject("POST /v2/tags", 429, retry_after=7)
    api.create_tag("mistral-lab:limited")
    assert waits == [7.0]
    assert fake.count("POST /v2/tags", status=429) == 1 and fake.count("POST /v2/tags", status=201) == 1
    assert api.delete_tag("mistral-lab:limited")


def test_a_5xx_that_persists_on_a_get_gives_up_with_the_status(fake):
    api = DOApi(max_attempts=3, sleep=lambda s: None)
    fake.state.faults.inject("GET /v2/sizes", 500, times=10)
    with pytest.raises(DOApiError) as e:
        api.sizes()
    assert e.value.status == 500 and "list sizes" in str(e.value) and "server_error" in str(e.value)
    assert fake.count("GET /v2/sizes", status=500) == 3
    fake.state.faults.clear()


# ---------------------------------------------------------------------------------------------- 404 bodies


def test_pydo_returns_404_bodies_and_doapi_turns_them_into_none(fake):
    api = _api()
    # pydo itself: the error body comes back as if it were the droplet.
    body = api._client.droplets.get(987654)
    assert body == {"id": "not_found", "message": "The resource you were accessing could not be found."}
    assert api.get_droplet(987654) is None
    assert api.destroy_droplet(987654) is False
    assert api.get_ssh_key("00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff") is None
    assert api.delete_ssh_key("00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff") is False
    assert api.delete_firewall("8f9ad1a6-0000-4000-8000-000000000000") is False
    assert api.delete_tag("mistral-lab:never-made") is False
    with pytest.raises(DOApiError) as e:
        api.update_firewall("8f9ad1a6-0000-4000-8000-000000000000",
                            res.firewall_body(res.Names("x", OWNER), [ALLOW]))
    assert e.value.status == 404 and "8f9ad1a6-0000-4000-8000-000000000000" in str(e.value)
    assert fake.count(status=404) == 8


# ---------------------------------------------------------------------------------------------- the token


def test_a_refused_token_is_named_on_any_call_and_never_shown(fake, monkeypatch):
    wrong = "dop_v1_" + secrets.token_hex(32)
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", wrong)
    with pytest.raises(TokenRefused) as e:
        _api().list_droplets(tag_name="mistral-lab")
    text = f"{e.value} {e.value!r} {e.value.args} {e.value.fix}"
    assert do_api.TOKEN_REFUSED in str(e.value) and "DIGITALOCEAN_TOKEN" in e.value.fix
    assert wrong not in text and wrong[-12:] not in text
    r = _cli("sweep")
    assert r.returncode == 1 and "the token was refused" in r.stderr
    assert wrong not in r.stdout + r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------- waits, price, sweep


def test_a_droplet_that_never_becomes_active_is_destroyed_and_said_so(fake):
    fake.state.polls_to_active = 10**6
    lines: list[str] = []
    start = time.monotonic()
    with pytest.raises(TargetError) as e:
        _provision(fake, lines=lines, active_timeout=1, poll_interval=0.1, region="nyc3")
    assert time.monotonic() - start < 15
    assert "could not get s-1vcpu-1gb in nyc3 (droplet still new after 1 s)" in str(e.value)
    assert "another --region" in (e.value.fix or "")
    assert any("waiting for it to become active" in line for line in lines)
    assert any("never became active (it billed meanwhile)" in line for line in lines)
    assert fake.count("GET /v2/droplets/{id}/actions/{id}") >= 5  # polled, not slept through
    assert fake.state.droplets == {}  # a droplet that bills and never served is not left behind
    DigitalOceanTarget().destroy(state_record("demo"))


def test_the_firewall_opens_ssh_only_to_the_callers_address_and_all_outbound(fake, monkeypatch):
    monkeypatch.setenv("MISTRAL_LAB_ALLOW_FROM", "198.51.100.7")
    fake.state.droplet_limit = 0  # stop right after the firewall: its rules are what this test reads
    with pytest.raises(TargetError, match="droplet limit"):
        _provision(fake, allow_from=None)  # None: not given, so the environment's address is used
    (fw,) = fake.state.firewalls.values()
    assert fw["tags"] == [res.Names("demo", OWNER).tag]
    assert fw["inbound_rules"] == [{"protocol": "tcp", "ports": "22", "sources": {"addresses": ["198.51.100.7/32"]}}]
    # A firewall without outbound rules blocks all outbound traffic: nothing could be downloaded.
    everywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
    assert {(r["protocol"], r["ports"]) for r in fw["outbound_rules"]} == {("tcp", "0"), ("udp", "0"), ("icmp", "0")}
    assert all(r["destinations"] == everywhere for r in fw["outbound_rules"])
    DigitalOceanTarget().destroy(state_record("demo"))


def test_ssh_that_never_answers_times_out_naming_the_address_and_the_likely_cause(fake):
    fake.state.machine_start_delay = 120  # the droplet is active, its sshd never comes up within the wait
    lines: list[str] = []
    with pytest.raises(TargetError) as e:
        _provision(fake, lines=lines, ssh_timeout=2, poll_interval=0.2)
    (droplet,) = fake.state.droplets.values()
    assert f"SSH to {droplet.address}:{fake.ssh_port} did not answer within 2 s" in str(e.value)
    assert "allow_from" in e.value.fix
    assert any(line.startswith("waiting for SSH:") for line in lines)
    DigitalOceanTarget().destroy(state_record("demo"))


@needs_sshd
def test_the_price_is_shown_before_anything_is_created(fake):
    said: list[tuple[str, int]] = []  # each line with the number of POSTs the fake had seen when it was said

    class Lines(list):
        def append(self, line: str) -> None:
            said.append((line, sum(1 for e in fake.log if e.method == "POST")))

    target, host = _provision(fake, lines=Lines())
    try:
        priced = [n for line, n in said if "$0.01/hour" in line]
        assert priced and priced[0] == 0, said
        assert any("powered off still bills" in line and n == 0 for line, n in said)
        assert said[-1][1] == 4  # key, tag, firewall, droplet
    finally:
        _teardown(target, host)


def test_sweep_shows_gpu_droplets_with_uptime_and_money_spent(fake):
    api = _api()
    mine = state.installation_id()  # the CLI's default owner
    d = _left_over_droplet(api, "old", size="gpu-h100x8-640gb", image="gpu-h100x8-base", region="nyc2", owner=mine)
    started = datetime.now(UTC) - timedelta(hours=2, minutes=30)
    with fake.state.lock:  # as if it had been left running since then
        fake.state.droplets[d["id"]].body["created_at"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        (item,) = find_leftovers(api, mine)
        assert (item.kind, item.size, item.region, item.hourly_usd) == ("droplet", "gpu-h100x8-640gb", "nyc2", 23.92)
        assert item.hours == pytest.approx(2.5, abs=0.01) and item.cost_usd == pytest.approx(2.5 * 23.92, abs=0.3)
        r = _cli("sweep")
        assert r.returncode == 0, r.stderr
        # The table row: hours up | $/hour | spent (the CLI takes some seconds to start: the figures move a little).
        row = re.search(r"mistral-lab-old.*?│\s*(\d+\.\d\d)\s*│\s*23\.92\s*│\s*\$(\d+\.\d\d)\s*│", r.stdout)
        assert row, r.stdout
        assert float(row[1]) == pytest.approx(2.5, abs=0.02) and float(row[2]) == pytest.approx(2.5 * 23.92, abs=0.5)
        assert re.search(r"droplets bill \$23\.92/hour, about \$59\.\d\d so far", r.stdout), r.stdout
        r = _cli("sweep", "--yes")
        assert r.returncode == 0 and "destroyed 1 resources" in r.stdout, r.stdout + r.stderr
    finally:
        api.destroy_droplet(d["id"])
        api.delete_tag(res.Names("old", mine).tag)


# ---------------------------------------------------------------------------------------------- killed half-way


@needs_sshd
@pytest.mark.slow
def test_run_killed_while_the_firewall_is_being_made_then_rerun_ends_with_one_of_each(fake, env):
    fake.state.faults.inject("POST /v2/firewalls", delay=3.0)  # the request is in, the answer is not out
    with open(env / "child.out", "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(_options(fake))], stdout=out,
                                 stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + 60
        # SSH key and tag made: the next request is the delayed firewall POST.
        while child.poll() is None and time.monotonic() < deadline and fake.count("POST /v2/tags") == 0:
            time.sleep(0.02)
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    # The API finishes what it was asked, for nobody: wait until the firewall exists before running again.
    deadline = time.monotonic() + 10
    while fake.count("POST /v2/firewalls") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.state.droplets == {} and len(fake.state.firewalls) == 1 and len(fake.state.ssh_keys) == 1, \
        (env / "child.out").read_text()
    target, host = _provision(fake, deployment="crash")
    try:
        assert host.run("true").ok
        assert fake.count("POST /v2/firewalls") == 1 and fake.count("POST /v2/account/keys") == 1
        assert len(fake.state.droplets) == 1 and len(fake.state.firewalls) == 1 and len(fake.state.ssh_keys) == 1
    finally:
        _teardown(target, host)


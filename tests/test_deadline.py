"""A droplet that keeps its own deadline, end to end on the fake API: a real timer (infra/deadline.sh, as root) on
a fake droplet (a real sshd machine) calls the fake API with a narrowly scoped token, and the droplet, its
firewall, its SSH key and its tags are gone; an idle one goes; a busy one stays until its end."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import test_digitalocean as do_tests
from test_digitalocean import OWNER, _provision, needs_sshd

from mistral_lab.errors import BadInput
from mistral_lab.hosts import do_resources as res
from mistral_lab.lifecycle import deadline

fake, env, token = do_tests.fake, do_tests.env, do_tests.token


def _gone_within(fake, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}:
            return True
        time.sleep(0.5)
    return False


def test_the_deadline_token_is_checked_by_the_calls_it_will_make(fake, monkeypatch):
    deadline.check_token(fake.state.token, fake.url)  # a full-access token holds every scope
    fake.state.scopes = frozenset(deadline.SCOPES)
    deadline.check_token(fake.state.token, fake.url)  # exactly the four it needs
    fake.state.scopes = frozenset(deadline.SCOPES) - {"tag:delete"}
    with pytest.raises(BadInput) as e:
        deadline.check_token(fake.state.token, fake.url)
    assert e.value.field == deadline.TOKEN_ENV and "tag:delete" in str(e.value)
    assert all(scope in (e.value.fix or "") for scope in deadline.SCOPES)
    assert fake.count("DELETE /v2/droplets/{id}", status=404) >= 2  # probes on ids that do not exist: nothing went


def _start(fake, host, *, expires_in: float, idle_s: int = 0, activity: str = "") -> None:
    fake.state.scopes = frozenset(deadline.SCOPES) | {"droplet:read"}  # the token the loop gets: scoped
    deadline.install(host, host.record, name="demo", instance="demo-test", mode="process", token=fake.state.token,
                     deadline=deadline.Deadline(expires_at=int(time.time() + expires_in), idle_s=idle_s,
                                                activity=activity, interval_s=1),
                     api_url=fake.url, host_root="/srv/mistral-lab")


@needs_sshd
def test_at_its_end_the_droplet_removes_itself_and_what_belongs_to_it(fake):
    target, host = _provision(fake, expires_at=int(time.time() + 3600))
    names = res.Names("demo", OWNER)
    _start(fake, host, expires_in=6)
    token_file = Path("/srv/mistral-lab/deadline/demo-test/token")
    # Only root reads the token: not the login user, not the model server's user; it is in no command line.
    for user in (host.record.user, "mlserve"):
        assert subprocess.run(["runuser", "-u", user, "--", "cat", str(token_file)], capture_output=True).returncode
    assert not any(fake.state.token.encode() in p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline")
                   if p.exists())
    assert fake.state.droplets, "gone before its time"
    try:
        assert _gone_within(fake, 40), fake.leftovers()
        assert names.tag not in fake.state.tags and not any(t.startswith(res.EXPIRY_PREFIX) for t in fake.state.tags)
    finally:
        fake.state.scopes = None
        host.close()
        target.destroy(host.record)  # nothing left: safe


@needs_sshd
def test_an_idle_workshop_goes_and_a_busy_one_stays_until_its_end(fake):
    target, host = _provision(fake)
    activity = "/srv/mistral-lab/activity-test.log"
    host.run(f"touch {activity}")
    _start(fake, host, expires_in=3600, idle_s=4, activity=activity)
    try:
        for _ in range(8):  # busy: a request every second for eight seconds (twice the idle limit)
            host.run(f"touch {activity}")
            time.sleep(1)
            assert fake.state.droplets, "a busy workshop went"
        assert _gone_within(fake, 30), fake.leftovers()  # then idle: gone
    finally:
        fake.state.scopes = None
        try:
            host.close()
        finally:
            target.destroy(host.record)

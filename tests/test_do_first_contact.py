"""DigitalOcean as a new user meets it on day one, against the fake API with the real API's unkind behaviours
turned on (tests/fakedo/quirks.py names each one's public source): nothing billed behind the user's back, the
real API's slow deletes and failing creates handled, live prices, scopes, only what is ours touched, and no two
droplets for one name."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import test_digitalocean as do_tests
from test_deploy import shared_build_cache  # noqa: F401  (fixture: the build where the droplet's user finds it)
from test_digitalocean import ALLOW, OWNER, _api, _cli, _provision, _teardown, needs_sshd, state_record

import fakedo
from fakedo.sshd_backend import droplet_user
from mistral_lab import hardware, state
from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import do_api
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts.base import ProvisionRequest
from mistral_lab.hosts.digitalocean import DigitalOceanTarget, sweep
from mistral_lab.hosts.do_api import OPERATIONS, REQUIRED_SCOPES, TokenRefused
from mistral_lab.paths import write_atomic
from mistral_lab.planning import PlanRequest, make_plan

fake, env, token = do_tests.fake, do_tests.env, do_tests.token
ROOT = Path(__file__).resolve().parents[1]
H100 = "gpu-h100x1-80gb"  # offered in nyc2, ams3, tor1


def _deploy_cli(fake, name: str, *extra: str, gpu: str = "gpu-l40sx1-48gb") -> list[str]:
    exe = Path(sys.executable).with_name("mistral-lab")
    return [str(exe), "deploy", "tiny-random", "--target", "digitalocean", "--engine", "llamacpp", "--gpu", gpu,
            "--name", name, "--allow-from", ALLOW, "--ssh-port", str(fake.ssh_port), "--user", droplet_user(),
            "--option", "poll_interval=0.1", "--option", "active_timeout=600", *extra]


# ---------------------------------------------------------------------------------------------- 1, 2: day one


def test_hf_token_in_the_environment_and_ctrl_c_while_waiting_destroys_the_droplet(fake, env, monkeypatch):
    """HF_TOKEN exported (as many users always have it) reaches no option; a Ctrl-C while the droplet is starting
    destroys it, says so, and leaves no record: nothing bills."""
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    fake.state.quirks.create_failure = "stuck"  # the droplet stays `new`: the deploy waits, as on a slow day
    # The CLI starts with Ctrl-C's default meaning, as from a terminal: a test process may have inherited it ignored
    # (a child inherits an ignored signal, and Python then leaves it ignored).
    proc = subprocess.Popen(_deploy_cli(fake, "intr"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not fake.state.droplets and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert fake.state.droplets, proc.communicate()[0] if proc.poll() is not None else "no droplet was created"
    time.sleep(0.5)  # well inside the wait for it to become active
    proc.send_signal(signal.SIGINT)
    try:
        out = proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the deploy did not end within 120 s of its Ctrl-C; it said:\n" + proc.communicate()[0])
    assert proc.returncode == 130, out
    assert "secrets are not" not in out and "interrupted; destroying intr" in out, out
    assert fake.state.droplets == {} and fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}, out
    assert not state.exists("intr")


def test_keep_on_failure_keeps_it_and_prints_the_command_that_removes_it(fake, env):
    fake.state.quirks.create_failure = "stuck"
    r = subprocess.run(_deploy_cli(fake, "kept", "--keep-on-failure", "--option", "active_timeout=1",
                                   "--region", "tor1"),
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "mistral-lab teardown kept --yes" in out, out
    # The region failed and its droplet went (it never served), but the key and the firewall are kept, as asked.
    assert fake.state.droplets == {} and fake.state.firewalls and fake.state.ssh_keys
    fake.state.quirks.create_failure = None
    r = _cli("teardown", "kept", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}


# ---------------------------------------------------------------------------------------------- 3, 4: destroy


@needs_sshd
def test_asynchronous_destroy_repeated_teardown_sweep_and_redeploy(fake):
    fake.state.quirks.destroy_polls = 4  # DELETE answers 204, the droplet stays listed `off` for four looks
    target, host = _provision(fake)
    record = host.record
    _teardown(target, host)
    # destroy waited until nothing was listed, and only then removed the tag.
    assert fake.state.droplets == {} and res.Names("demo", OWNER).tag not in fake.state.tags
    assert fake.count("DELETE /v2/droplets/{id}", status=204) == 1
    target.destroy(record)  # a second teardown right after: nothing left, no error
    assert sweep(owner=OWNER, destroy=True, sleep=lambda s: None) == []
    target, host = _provision(fake)  # the same name again, at once
    try:
        assert host.run("true").ok
    finally:
        _teardown(target, host)


@needs_sshd
def test_a_second_delete_while_the_first_is_under_way_is_taken_as_gone(fake):
    fake.state.quirks.destroy_polls = 50
    target, host = _provision(fake)
    droplet_id = int(host.record.resource_ids["droplet"])
    host.close()
    api = _api()
    assert api.destroy_droplet(droplet_id) is True
    assert api.destroy_droplet(droplet_id) is False  # 422 "already has a pending event": gone, as far as we care
    assert fake.count("DELETE /v2/droplets/{id}", status=422) == 1
    fake.state.quirks.destroy_polls = 0
    target.destroy(host.record)


@needs_sshd
def test_teardown_finds_the_droplet_by_its_recorded_id_when_the_tag_listing_misses_it(fake):
    target, host = _provision(fake, size="gpu-l40sx1-48gb")
    record = host.record
    host.close()
    (droplet,) = fake.state.droplets.values()
    droplet.body["tags"] = [t for t in droplet.body["tags"] if t != record.resource_ids["tag"]]  # untagged by hand
    target.destroy(record)
    assert fake.state.droplets == {}
    assert fake.count("GET /v2/droplets/{id}") >= 1  # looked up by id, not only by tag
    assert target.leftovers(record) == []  # and the GPU listing, which a tag listing may not match, agrees


# ---------------------------------------------------------------------------------------------- 5: failing creates


@pytest.mark.parametrize("failure", ["errored", "stuck"])
@needs_sshd
def test_a_create_accepted_and_then_failing_is_destroyed_and_the_next_region_tried(fake, failure):
    fake.state.quirks.create_failure = failure
    lines: list[str] = []

    def heal() -> None:  # only the first region fails: later creates succeed
        deadline = time.monotonic() + 30
        while fake.count("POST /v2/droplets") == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        fake.state.quirks.create_failure = None

    threading.Thread(target=heal, daemon=True).start()
    target, host = _provision(fake, size=H100, lines=lines, active_timeout=2)
    try:
        assert host.record.extra["region"] == "ams3"  # nyc2 failed
        assert fake.count("POST /v2/droplets", status=202) == 2 and len(fake.state.droplets) == 1
        assert any("never became active" in line or "its action errored" in line for line in lines), lines
        assert any("trying the next region" in line for line in lines)
    finally:
        _teardown(target, host)


@pytest.mark.parametrize("quirk", ["closed_regions", "image_unavailable", "unavailable"])
@needs_sshd
def test_a_422_that_means_not_here_moves_on_to_the_next_region(fake, quirk):
    if quirk == "closed_regions":
        fake.state.quirks.closed_regions.add("nyc2")
    elif quirk == "image_unavailable":
        fake.state.quirks.image_unavailable.add(("gpu-h100x1-base", "nyc2"))
    else:
        fake.state.unavailable.add((H100, "nyc2"))
    target, host = _provision(fake, size=H100)
    try:
        assert host.record.extra["region"] == "ams3"
        assert fake.count("POST /v2/droplets", status=422) == 1
    finally:
        _teardown(target, host)


def test_a_size_restricted_everywhere_names_each_region_and_leaves_nothing(fake):
    fake.state.quirks.restricted_sizes.add(H100)
    with pytest.raises(TargetError) as e:
        _provision(fake, size=H100)
    for region in ("nyc2", "ams3", "tor1"):
        assert region in str(e.value)
    assert "restricted" in str(e.value)
    DigitalOceanTarget().destroy(state_record("demo"))


# ---------------------------------------------------------------------------------------------- 6: prices


def test_plans_use_the_live_price_with_its_date_and_the_list_price_offline(fake, env, monkeypatch):
    fake.state.set_price(H100, 4.25)
    req = PlanRequest(model="ministral-3b", target="digitalocean", gpu="h100")
    plan = make_plan(req)
    assert plan.hourly_usd == 4.25 and plan.price_source.startswith("live GET /v2/sizes, read 20")
    again = make_plan(req)  # within the hour: the cached listing, no second call
    assert again.hourly_usd == 4.25 and fake.count("GET /v2/sizes") == 1
    auto = make_plan(PlanRequest(model="ministral-3b", target="digitalocean"))
    assert auto.price_source.startswith("live")
    monkeypatch.delenv("DIGITALOCEAN_TOKEN")
    offline = make_plan(req)
    assert offline.hourly_usd == hardware.DO_SIZES[H100].hourly_usd == 3.39
    assert offline.price_source.startswith("list price") and "2026" in offline.price_source


def test_the_workshop_budget_check_uses_the_live_price(fake, env):
    from mistral_lab import workshop as ws_mod

    req = ws_mod.RoomRequest.of(name="priced", learners=4, model="ministral-3b", target="digitalocean",
                                gpu="gpu-l40sx1-48gb", hours=2, budget_usd=4.0, allow=["203.0.113.0/24"])
    assert ws_mod.plan_room(req).planned_cost_usd == pytest.approx(3.14)  # 1.57/hour listed
    fake.state.set_price("gpu-l40sx1-48gb", 2.10)
    state.home().joinpath("cache", "do-sizes.json").unlink()  # prices moved: a new listing
    with pytest.raises(BadInput, match=r"\$2\.10/hour is \$4\.20, over the budget"):
        ws_mod.plan_room(req)


def test_the_fake_serves_eight_gpu_sizes_as_the_real_api_does(fake):
    (size,) = [s for s in _api().sizes() if s["slug"] == "gpu-h100x8-640gb"]
    assert size["gpu_info"]["count"] == 8 and size["gpu_info"]["vram"]["amount"] == 640
    assert size["price_monthly"] == pytest.approx(size["price_hourly"] * 744, abs=0.01)


# ---------------------------------------------------------------------------------------------- 7, 8: scopes, pydo


def test_a_403_names_the_scopes_the_call_needs(fake):
    fake.state.scopes = frozenset(REQUIRED_SCOPES) - {"image:read"}
    with pytest.raises(TokenRefused) as e:
        _provision(fake)
    assert e.value.status == 403 and "create droplet" in str(e.value) and "image:read" in str(e.value)
    assert "account:read" in (e.value.fix or "") and "image:read" in (e.value.fix or "")
    fake.state.scopes = None
    DigitalOceanTarget().destroy(state_record("demo"))


def test_the_scopes_we_name_are_the_specs_and_the_token_hint_lists_them_all(monkeypatch):
    routes = {"get account": "GET /v2/account", "list sizes": "GET /v2/sizes", "list droplets": "GET /v2/droplets",
              "get droplet": "GET /v2/droplets/{id}", "get droplet action": "GET /v2/droplets/{id}/actions/{id}",
              "create droplet": "POST /v2/droplets", "destroy droplet": "DELETE /v2/droplets/{id}",
              "get ssh key": "GET /v2/account/keys/{id}", "list ssh keys": "GET /v2/account/keys",
              "create ssh key": "POST /v2/account/keys", "delete ssh key": "DELETE /v2/account/keys/{id}",
              "list firewalls": "GET /v2/firewalls", "create firewall": "POST /v2/firewalls",
              "update firewall": "PUT /v2/firewalls/{id}", "delete firewall": "DELETE /v2/firewalls/{id}",
              "create tag": "POST /v2/tags", "delete tag": "DELETE /v2/tags/{id}"}
    assert set(routes) == set(OPERATIONS)
    for name, route in routes.items():
        (spec,) = fakedo.required_scopes(route)
        assert set(spec) <= set(OPERATIONS[name].scopes), (name, spec)
    monkeypatch.delenv("DIGITALOCEAN_TOKEN", raising=False)
    monkeypatch.delenv("DIGITALOCEAN_ACCESS_TOKEN", raising=False)
    with pytest.raises(BadInput) as e:
        do_api.read_token()
    assert all(scope in (e.value.fix or "") for scope in ("account:read", "image:read", "droplet:create"))


def test_pydo_is_pinned_and_every_status_our_calls_take_is_one_pydo_returns():
    from importlib.metadata import version

    import pydo

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("pydo")]
    assert pin == f"pydo=={version('pydo')}"  # the exact version these tests ran against
    client = pydo.Client("unused", endpoint="https://127.0.0.1")
    for name, op in OPERATIONS.items():
        method = getattr(type(getattr(client, op.group)), op.method)
        codes = {int(c) for c in re.findall(r"\d+", re.search(r"status_code not in \[([^\]]*)\]",
                                                                inspect.getsource(method))[1])}
        # pydo raises for anything outside its list, so our successes must be in it; every success it returns
        # must be one of ours; what else it returns without raising (404, a 400 body) our wrapper turns into
        # "absent" or an error (below).
        assert set(op.ok) <= codes and {c for c in codes if c < 300} <= set(op.ok), (name, codes, op.ok)


def test_an_error_pydo_returns_instead_of_raising_becomes_an_error(fake):
    fake.state.faults.inject("POST /v2/firewalls", 400, message="invalid inbound rule")
    api = _api()
    names = res.Names("fw", OWNER)
    api.create_tag(names.tag)
    with pytest.raises(do_api.DOApiError) as e:
        api.create_firewall(res.firewall_body(names, [ALLOW]))
    assert e.value.status == 400 and "invalid inbound rule" in str(e.value)
    assert fake.state.firewalls == {}
    api.delete_tag(names.tag)


# ---------------------------------------------------------------------------------------------- 10: fewer calls


@needs_sshd
def test_create_ready_destroy_takes_at_most_twelve_calls_plus_polls(fake):
    target, host = _provision(fake, size="gpu-l40sx1-48gb")
    created = len(fake.log)
    record = host.record
    _teardown(target, host)
    assert target.leftovers(record) == []  # what teardown asks after destroy (the GPU listing)
    log = fake.log
    polls = {"GET /v2/droplets/{id}/actions/{id}"}
    provision = [e.route for e in log[:created] if e.route not in polls]
    destroy = [e for e in log[created:]]
    # In the destroy: the first tag listing finds the droplet; the ones after the DELETE, and the look-ups by id,
    # wait for it to go (polls).
    first_delete = next(i for i, e in enumerate(destroy) if e.route == "DELETE /v2/droplets/{id}")
    waited = [e for e in destroy[first_delete + 1:] if e.route in ("GET /v2/droplets", "GET /v2/droplets/{id}")
              and "type=gpus" not in e.query]
    calls = provision + [e.route for e in destroy if e not in waited]
    assert len(calls) <= 12, calls
    print(f"create -> ready -> destroy: {len(calls)} calls + {len(log) - len(calls)} polls: {calls}")


# ---------------------------------------------------------------------------------------------- 11: only ours


@needs_sshd
def test_two_installations_deploying_one_name_never_touch_each_other(fake):
    def provision(owner: str) -> tuple[DigitalOceanTarget, object]:
        target = DigitalOceanTarget(do_tests._options(fake, owner=owner))
        # Two installations: two state folders, two sets of keys.
        return target, target.provision(ProvisionRequest(deployment="demo", gpu_slug=do_tests.CPU,
                                                         key_dir=state.home() / owner / "demo"))

    (mine_target, mine_host), (their_target, their_host) = provision("insta"), provision("instb")
    assert mine_host.record.resource_ids["droplet"] != their_host.record.resource_ids["droplet"]
    assert len(fake.state.firewalls) == 2 and len(fake.state.ssh_keys) == 2
    _teardown(mine_target, mine_host)
    assert their_host.run("true").ok  # theirs is untouched
    assert sweep(owner="insta", sleep=lambda s: None) == []
    everyone = sweep(owner=None, sleep=lambda s: None)
    assert {i.owner for i in everyone} == {"instb"} and len(everyone) == 3
    with pytest.raises(BadInput, match="name each one"):
        sweep(owner=None, destroy=True, sleep=lambda s: None)
    (droplet,) = [i for i in everyone if i.kind == "droplet"]
    done = sweep(owner=None, destroy=True, only=[droplet.ref], sleep=lambda s: None)
    assert [i.ref for i in done] == [droplet.ref] and len(fake.state.firewalls) == 1  # only what was named
    their_host.close()
    their_target.destroy(their_host.record)


# ---------------------------------------------------------------------------------------------- 12: one at a time


@needs_sshd
@pytest.mark.slow
def test_two_deploys_of_one_name_at_once_make_one_droplet(fake, env, shared_build_cache):  # noqa: F811
    cmd = _deploy_cli(fake, "twice", "--option", f"host_cache={shared_build_cache}")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
             for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert fake.count("POST /v2/droplets") == 1 and len(fake.state.droplets) == 1
    assert any("already up: reusing it" in out for out in outs), outs
    r = _cli("teardown", "twice", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr


def test_records_are_written_whole_by_concurrent_writers(tmp_path):
    path = tmp_path / "deployment.json"
    texts = [json.dumps({"writer": i, "pad": "x" * 200_000}) for i in range(8)]
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            if path.exists():
                seen.append(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=lambda t=t: [write_atomic(path, t) for _ in range(20)]) for t in texts]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert seen and all(s in texts for s in seen)  # never half a file, never two writers' bytes mixed
    assert [p.name for p in tmp_path.iterdir()] == ["deployment.json"]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------- 9: rate limits, errors


def test_the_hourly_limit_stops_at_once_with_the_reset_time_and_the_burst_limit_waits(fake):
    fake.state.quirks.hourly_limit = fake.state.count() + 1  # one request left this hour
    waits: list[float] = []
    api = do_api.DOApi(sleep=waits.append)
    api.sizes()
    with pytest.raises(do_api.DOApiError) as e:
        api.list_droplets(tag_name="mistral-lab")
    assert e.value.status == 429 and "hourly API limit" in str(e.value) and "resets" in (e.value.fix or "")
    assert waits == []  # no retry: seconds of waiting cannot help
    fake.state.quirks.hourly_limit = None
    fake.state.quirks.ssh_key_list_limit = 0  # the key listing's own limit: 429 without retry-after either
    with pytest.raises(do_api.DOApiError, match="hourly API limit|429"):
        api.list_ssh_keys()


def test_a_tag_create_400_says_what_the_api_said(fake):
    fake.state.faults.inject("POST /v2/tags", 400, message="tag name is invalid")
    with pytest.raises(do_api.DOApiError) as e:
        _api().create_tag("mistral-lab:x")
    assert e.value.status == 400 and "tag name is invalid" in str(e.value)

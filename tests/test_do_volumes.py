"""A cache volume on the fake DigitalOcean API (issue 16 part 4): weights kept on a Volume in the region, so that a
repeat deploy there attaches it and skips the download.

The real parts: the fake API answers with DigitalOcean's wire format (every response checked against the bundled
spec, volumes included); each droplet is a real sshd on this machine; each volume is a real block device (a loop
device over a sparse image, tests/fakedo/volume_backend.py) whose link appears in a stand-in /dev/disk/by-id when
the attach action completes, so the mount, the mkfs on first use and the files on it are real. The weights come
from a stand-in Hugging Face (tests/fakedo/hf.py) serving the tiny-random GGUF as Ministral 3B's file at a stated
bandwidth (1 MiB/s), through the engine's own download script; the deploy tests' new volumes carry the cached
llama.cpp CPU build (a build takes about 8 minutes on this machine), never the weights.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import test_digitalocean as do_tests
from test_deploy import shared_build_cache  # noqa: F401  (fixture: the build new volumes are seeded with)

import fakedo
import mistral_lab as ml
from fakedo.hf import serve_files
from fakedo.sshd_backend import SshdBackend
from fakedo.volume_backend import LoopVolumes
from mistral_lab import state
from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import do_resources as res
from mistral_lab.hosts import do_volumes as vols
from mistral_lab.hosts.base import ProvisionRequest
from mistral_lab.hosts.digitalocean import DigitalOceanTarget, find_leftovers, sweep
from mistral_lab.hosts.do_api import (
    CACHE_OPERATIONS,
    CACHE_SCOPES,
    OPERATIONS,
    REQUIRED_SCOPES,
    DOApi,
    DOApiError,
    TokenRefused,
)
from mistral_lab.lifecycle.teardown import teardown
from mistral_lab.options import DigitalOceanOptions
from mistral_lab.planning import PlanRequest, make_plan

env, token = do_tests.env, do_tests.token
OWNER = do_tests.OWNER
CPU = "s-1vcpu-1gb"  # offered in nyc1, nyc3, ams3, ...
H100 = "gpu-h100x1-80gb"  # offered in nyc2, ams3, tor1
BANDWIDTH = 1 << 20  # bytes per second the stand-in Hugging Face serves at
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("losetup") is None,
                                reason="loop devices and mounts need root (the test machine runs as root)")


def _api() -> DOApi:
    return DOApi(sleep=lambda s: None)


def _droplet(api: DOApi, fake, region: str = "nyc1") -> dict:
    """A droplet made through the API and looked at until active (no machine behind it)."""
    d, _ = api.create_droplet({"name": "plain", "size": CPU, "image": "ubuntu-24-04-x64", "region": region})
    while (d := api.get_droplet(d["id"]))["status"] != "active":
        pass
    return d


# ---------------------------------------------------------------------------------------------- pure parts


def test_names_sizes_costs_and_where_a_cache_sends_a_deploy():
    names = res.Names("demo", "abcd1234")
    assert names.cache_volume("main") == "mistral-lab-cache-main-abcd1234"
    assert res.cache_of_name("mistral-lab-cache-main-abcd1234") == ("main", "abcd1234")
    assert res.cache_of_name("mistral-lab-cache-week-2-abcd1234") == ("week-2", "abcd1234")
    assert res.cache_of_name("my-volume") is None
    for bad in ("Main", "2day", "a_b", "x" * 40):
        with pytest.raises(BadInput) as e:
            names.cache_volume(bad)
        assert e.value.field == "cache_volume"
    with pytest.raises(BadInput, match="owner"):
        res.Names("demo", "").cache_volume("main")
    # Ministral 3B Q4_K_M (2.95 GB) -> 2.75 GiB x 1.25 headroom, rounded up, + 20 GiB of builds.
    assert vols.volume_gib(2.95) == 24 and vols.volume_gib(0) == 20 and vols.volume_gib(1e6) == vols.MAX_GIB
    assert vols.monthly_usd(24) == 2.40 and vols.monthly_usd(100) == 10.0
    assert vols.prefer_regions(["nyc2", "ams3", "tor1"], ["tor1", "sfo3"]) == ["tor1", "nyc2", "ams3"]
    # Options: a flag's words are a flag (CLI values arrive as text), anything else a label.
    assert DigitalOceanOptions.of({"cache_volume": "true"}).cache_volume is True
    assert DigitalOceanOptions.of({"cache_volume": "no"}).cache_volume is False
    assert DigitalOceanOptions.of({"cache_volume": "week2"}).cache_volume == "week2"
    settings = DigitalOceanOptions.of({"cache_volume": True, "host_cache": "/srv/c"})
    spec = vols.spec(settings, names, 80)
    assert spec is not None and spec.name == "mistral-lab-cache-main-abcd1234" and spec.mount == "/srv/c"
    assert spec.device == "/dev/disk/by-id/scsi-0DO_Volume_mistral-lab-cache-main-abcd1234"
    assert spec.size_gib == vols.volume_gib(80 * 2**30 / 1e9)  # no plan size given: the GPU's memory bounds it
    assert vols.spec(DigitalOceanOptions.of({}), names, 80) is None
    plan = make_plan(PlanRequest(model="ministral-3b", engine="llamacpp", target="digitalocean", gpu=H100,
                                 context=4096, vision=False))
    # Without the vision encoder: 2.15 GB of weights -> a 23 GiB volume, $2.30 a month: what `workshop up` passes.
    assert plan.memory["weights_gb"] == 2.15 and vols.volume_gib(plan.memory["weights_gb"]) == 23


def test_the_cache_calls_are_the_specs_with_pydos_statuses_and_apart_from_a_deploys_scopes():
    import inspect

    import pydo

    routes = {"list volumes": "GET /v2/volumes", "get volume": "GET /v2/volumes/{id}",
              "create volume": "POST /v2/volumes", "delete volume": "DELETE /v2/volumes/{id}",
              "post volume action": "POST /v2/volumes/{id}/actions",
              "get volume action": "GET /v2/volumes/{id}/actions/{id}"}
    assert set(routes) == set(CACHE_OPERATIONS) and not set(CACHE_OPERATIONS) & set(OPERATIONS)
    for name, route in routes.items():
        (spec,) = fakedo.required_scopes(route)
        legacy = {"api:read", "api:write"}  # volumes_list / volumes_create list them beside their own scope
        assert set(spec) - legacy <= set(CACHE_OPERATIONS[name].scopes), (name, spec)
    assert not set(CACHE_SCOPES) & set(REQUIRED_SCOPES)  # a token without them still deploys, without a cache
    client = pydo.Client("x")
    for name, op in CACHE_OPERATIONS.items():
        method = getattr(type(getattr(client, op.group)), op.method)
        codes = {int(c) for c in re.findall(r"\d+", re.search(r"status_code not in \[([^\]]*)\]",
                                                                inspect.getsource(method))[1])}
        assert set(op.ok) <= codes and {c for c in codes if c < 300} <= set(op.ok), (name, codes, op.ok)


# ---------------------------------------------------------------------------------------------- the API's rules


@pytest.fixture
def api_fake(env, token, monkeypatch):
    with fakedo.serve(token, polls_to_active=1, volume_action_polls=2) as f:
        monkeypatch.setenv("DIGITALOCEAN_API_URL", f.url)
        yield f


def test_the_fake_keeps_the_real_apis_volume_rules(api_fake):
    fake, api = api_fake, _api()
    here, there = _droplet(api, fake, "nyc1"), _droplet(api, fake, "nyc3")
    body = {"name": "mistral-lab-cache-main-abcd1234", "region": "nyc1", "size_gigabytes": 5,
            "tags": ["mistral-lab"]}
    vol = api.create_volume(body)
    with pytest.raises(DOApiError) as e:  # one name per region
        api.create_volume(body)
    assert e.value.status == 409
    assert api.create_volume({**body, "region": "nyc3"})["region"]["slug"] == "nyc3"  # the same name elsewhere
    with pytest.raises(DOApiError) as e:
        api.create_volume({**body, "size_gigabytes": 16385})
    assert e.value.status == 422
    fake.state.quirks.no_storage_regions.add("lon1")
    with pytest.raises(DOApiError, match="Storage is not supported") as e:
        api.create_volume({**body, "region": "lon1"})

    attach = {"type": "attach", "droplet_id": there["id"], "region": "nyc1"}
    with pytest.raises(DOApiError) as e:  # only in its own region
        api.volume_action(vol["id"], attach)
    assert e.value.status == 422
    action = api.volume_action(vol["id"], {**attach, "droplet_id": here["id"]})
    assert (action["status"], action["type"], action["resource_type"]) == ("in-progress", "attach_volume", "volume")
    assert api.get_volume(vol["id"])["droplet_ids"] == []  # an action that completes later
    assert api.get_volume_action(vol["id"], action["id"])["status"] == "completed"
    assert api.get_volume(vol["id"])["droplet_ids"] == [here["id"]]
    assert api.get_droplet(here["id"])["volume_ids"] == [vol["id"]]
    other = _droplet(api, fake, "nyc1")
    with pytest.raises(DOApiError, match="already attached") as e:  # one droplet at a time
        api.volume_action(vol["id"], {**attach, "droplet_id": other["id"]})
    with pytest.raises(DOApiError) as e:  # attached: not deletable
        api.delete_volume(vol["id"])
    assert e.value.status == 409
    assert api.volume_action(vol["id"], {"type": "detach", "droplet_id": other["id"]}) is None  # 404: not there

    # A droplet being destroyed keeps its volumes until its destroy is done; a detach meanwhile is refused.
    fake.state.quirks.destroy_polls = 3
    api.destroy_droplet(here["id"])
    with pytest.raises(DOApiError, match="pending event"):
        api.volume_action(vol["id"], {"type": "detach", "droplet_id": here["id"]})
    assert vols.wait_detached(api, vol["id"], vols.Wait(30, 0.01))["droplet_ids"] == []
    assert api.delete_volume(vol["id"]) and api.get_volume(vol["id"]) is None

    # Limits: 15 volumes a droplet, the account's volume limit.
    fake.state.quirks.destroy_polls = 0
    many = [api.create_volume({**body, "name": f"v{i}"}) for i in range(16)]
    for v in many[:15]:
        vols._wait_action(api, v, api.volume_action(v["id"], {"type": "attach", "droplet_id": other["id"]}),
                          vols.Wait(10, 0.01), "attach")
    with pytest.raises(DOApiError, match="maximum number of volumes") as e:
        api.volume_action(many[15]["id"], {"type": "attach", "droplet_id": other["id"]})
    fake.state.volume_limit = len(api.list_volumes())
    with pytest.raises(DOApiError, match="volume limit") as e:
        api.create_volume({**body, "name": "one-more"})
    assert e.value.status == 422
    api.destroy_droplet(other["id"])  # its destroy lets go of its 15 volumes
    assert all(v["droplet_ids"] == [] for v in api.list_volumes())
    for v in api.list_volumes():
        api.delete_volume(v["id"])
    api.destroy_droplet(there["id"])


def test_a_volume_held_by_a_droplet_that_is_going_is_waited_for_and_one_held_by_a_live_one_is_refused(api_fake):
    fake, api = api_fake, _api()
    names = res.Names("demo", OWNER)
    cache = vols.spec(DigitalOceanOptions.of({"cache_volume": True, "cache_volume_gib": 2}), names, None)
    old, new = _droplet(api, fake), _droplet(api, fake)
    notes: dict = {}
    lines: list[str] = []
    wait = vols.Wait(30, 0.01)
    first = vols.ensure_attached(api, cache, old, [], tags=names.resource_tags, note=notes.update, say=lines.append,
                                 wait=wait)
    assert notes == {"volume": first["id"], "volume_name": cache.name, "volume_region": "nyc1",
                     "volume_droplet": old["id"]}
    with pytest.raises(TargetError, match="attached to droplet .* which is running") as e:
        vols.ensure_attached(api, cache, new, vols.find(api, cache.name), tags=[], note=notes.update, say=lines.append,
                             wait=wait)
    assert "cache_volume=<label>" in (e.value.fix or "")
    fake.state.quirks.destroy_polls = 4  # the last workshop's droplet is still going
    api.destroy_droplet(old["id"])
    again = vols.ensure_attached(api, cache, new, vols.find(api, cache.name), tags=[], note=notes.update,
                                 say=lines.append, wait=wait)
    assert again["id"] == first["id"] and api.get_volume(first["id"])["droplet_ids"] == [new["id"]]
    assert any("which is going; waiting" in line for line in lines)
    assert vols.detach(api, first["id"], new["id"], "nyc1", wait, lines.append)
    assert vols.delete(api, first["id"], wait, lines.append)
    api.destroy_droplet(new["id"])


def test_a_token_without_the_cache_scopes_is_told_which_before_anything_is_made(api_fake):
    fake = api_fake
    fake.state.scopes = frozenset(REQUIRED_SCOPES)  # all a deploy needs, nothing of block storage
    target = DigitalOceanTarget(do_tests._options(fake, cache_volume=True))
    with pytest.raises(TokenRefused) as e:
        target.provision(ProvisionRequest(deployment="scoped", gpu_slug=CPU, key_dir=state.deployment_dir("scoped")))
    assert e.value.status == 403 and "list volumes" in str(e.value) and "block_storage:read" in str(e.value)
    assert "a cache volume also block_storage:create" in (e.value.fix or "")
    assert fake.count(status=201) + fake.count(status=202) == 0  # nothing made


def test_sweep_lists_cache_volumes_with_their_cost_and_deletes_only_when_asked_and_only_its_owners(api_fake):
    fake, api = api_fake, _api()
    mine = api.create_volume({"name": res.Names("", OWNER).cache_volume("main"), "region": "nyc1",
                              "size_gigabytes": 30, "tags": res.Names("", OWNER).resource_tags})
    busy = api.create_volume({"name": res.Names("", OWNER).cache_volume("busy"), "region": "nyc1",
                              "size_gigabytes": 5, "tags": res.Names("", OWNER).resource_tags})
    theirs = api.create_volume({"name": res.Names("", "other1").cache_volume("main"), "region": "nyc1",
                                "size_gigabytes": 5, "tags": res.Names("", "other1").resource_tags})
    foreign = api.create_volume({"name": "db-data", "region": "nyc1", "size_gigabytes": 5})
    running = _droplet(api, fake)
    action = api.volume_action(busy["id"], {"type": "attach", "droplet_id": running["id"]})
    vols._wait_action(api, busy, action, vols.Wait(10, 0.01), "attach")

    items = {i.id: i for i in find_leftovers(api, OWNER)}
    assert set(items) == {mine["id"], busy["id"]}
    assert (items[mine["id"]].monthly_usd, items[mine["id"]].size, items[mine["id"]].kind) == (3.0, "30 GiB", "volume")
    assert items[busy["id"]].attached_to == [running["id"]]
    assert {i.id for i in find_leftovers(api, None) if i.kind == "volume"} == {mine["id"], busy["id"], theirs["id"]}

    kept = sweep(owner=OWNER, destroy=True, sleep=lambda s: None)  # not asked to drop caches
    assert not any(i.destroyed for i in kept) and len(api.list_volumes()) == 4
    lines: list[str] = []
    done = {i.id: i for i in sweep(owner=OWNER, destroy=True, volumes=True, sleep=lambda s: None,
                                   on_line=lines.append)}
    assert done[mine["id"]].destroyed and not done[busy["id"]].destroyed  # a running droplet holds that one
    assert any("is attached to droplet" in line and "running" in line for line in lines)
    assert [line for line in lines if mine["id"] in line] == [
        f"deleted: volume {mine['id']} ({mine['name']}), $3.00/month"]
    assert {v["id"] for v in api.list_volumes()} == {busy["id"], theirs["id"], foreign["id"]}

    # A custom-scoped token without block storage scopes still sweeps the rest: it just sees no volumes.
    fake.state.scopes = frozenset(REQUIRED_SCOPES)
    assert [i for i in find_leftovers(api, OWNER) if i.kind == "volume"] == []
    fake.state.scopes = None
    assert vols.detach(api, busy["id"], running["id"], None, vols.Wait(10, 0.01), lines.append)
    for v in (busy, theirs, foreign):
        api.delete_volume(v["id"])
    api.destroy_droplet(running["id"])


# ---------------------------------------------------------------------------------------------- on a real machine


@pytest.fixture
def machine_dirs() -> Iterator[tuple[str, str]]:
    """The droplet's host cache and its stand-in /dev/disk/by-id: folders the droplet's login user can reach
    (pytest's tmp_path is root's alone), removed after, unmounted first if a test failed half-way."""
    cache = tempfile.mkdtemp(prefix="ml-vol-cache-")
    devices = tempfile.mkdtemp(prefix="ml-vol-by-id-")
    for d in (cache, devices):
        os.chmod(d, 0o755)
    yield cache, devices
    subprocess.run(["umount", "-l", cache], capture_output=True)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(devices, ignore_errors=True)


@contextmanager
def _volume_fake(env: Path, token: str, monkeypatch, devices: str, seed: str | None) -> Iterator:
    volumes = LoopVolumes(env / "volume-images", Path(devices), seed=Path(seed) if seed else None)
    with fakedo.serve(token, backend=SshdBackend(env / "machines"), polls_to_active=2,
                      volume_backend=volumes) as f:
        monkeypatch.setenv("DIGITALOCEAN_API_URL", f.url)
        yield f
        leftovers, volumes_left = f.leftovers(), f.state.volume_leftovers()
    assert leftovers == {"droplets": [], "firewalls": [], "ssh_keys": []}
    assert volumes_left == [], "a test that keeps a cache volume drops it at its end"
    assert not list(Path(devices).iterdir()) and not list((env / "volume-images").iterdir())  # nothing left behind


@pytest.fixture
def vfake(env, token, monkeypatch, machine_dirs) -> Iterator:
    """The fake API with real sshd droplets and real (blank) loop-device volumes."""
    with _volume_fake(env, token, monkeypatch, machine_dirs[1], None) as f:
        yield f


@pytest.fixture
def vfake_seeded(env, token, monkeypatch, machine_dirs, shared_build_cache) -> Iterator:  # noqa: F811
    """The same, new volumes carrying the cached llama.cpp build (not the weights)."""
    with _volume_fake(env, token, monkeypatch, machine_dirs[1], shared_build_cache) as f:
        yield f


def _options(fake, machine_dirs, **over) -> dict:
    cache, devices = machine_dirs
    return do_tests._options(fake, host_cache=cache, volume_device_dir=devices, cache_volume=True, **over)


def _mounted(path: str) -> str | None:
    r = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--mountpoint", path], capture_output=True, text=True)
    return r.stdout.strip() or None


@needs_root
@do_tests.needs_sshd
def test_a_blank_volume_is_formatted_once_mounted_as_the_cache_kept_and_found_again(vfake, machine_dirs):
    fake, (cache_dir, _) = vfake, machine_dirs
    lines: list[str] = []
    recorded: list = []
    target = DigitalOceanTarget(_options(fake, machine_dirs, cache_volume_gib=1))
    host = target.provision(ProvisionRequest(deployment="vol", gpu_slug=CPU, key_dir=state.deployment_dir("vol"),
                                             record=recorded.append), on_line=lines.append)
    rec = host.record
    vol_id = rec.resource_ids["volume"]
    # Recorded the moment it existed: the first record naming the volume came before the attach was accepted.
    first = next(r for r in recorded if r.resource_ids.get("volume"))
    assert "volume_droplet" not in first.resource_ids and rec.resource_ids["volume_droplet"] == rec.resource_ids["droplet"]
    loop = vfake.state.volume_backend.attached()[vol_id]
    assert _mounted(cache_dir) == loop  # the host cache is the volume
    assert any("volume: formatted" in line for line in lines) and rec.extra["cache_volume"]["formatted"] is True
    probe = subprocess.run(["blkid", "-o", "export", loop], capture_output=True, text=True).stdout
    assert "TYPE=ext4" in probe and "LABEL=mistral-cache" in probe
    host.run(f"echo weights > {cache_dir}/marker")  # as the login user: the volume's root is theirs
    assert Path(cache_dir, "marker").stat().st_uid != 0
    host.close()

    target.destroy(rec, on_line=lines.append)
    assert _mounted(cache_dir) is None and not Path(cache_dir, "marker").exists()
    assert vfake.state.unclean_detaches == []  # unmounted before the detach
    assert any(f"kept cache volume mistral-lab-cache-main-{OWNER} (1 GiB in nyc1): $0.10/month" in line
               for line in lines)
    (item,) = [i for i in find_leftovers(_api(), OWNER) if i.kind == "volume"]
    assert (item.id, item.monthly_usd, item.attached_to, item.region) == (vol_id, 0.10, [], "nyc1")

    # The next provision in the region attaches the same volume: not formatted again, the file still there.
    lines.clear()
    target = DigitalOceanTarget(_options(fake, machine_dirs, cache_volume_gib=1))
    host = target.provision(ProvisionRequest(deployment="vol2", gpu_slug=CPU, key_dir=state.deployment_dir("vol2")),
                            on_line=lines.append)
    assert host.record.resource_ids["volume"] == vol_id and host.record.extra["cache_volume"]["formatted"] is False
    assert Path(cache_dir, "marker").read_text() == "weights\n"
    assert not any("created cache volume" in line for line in lines)
    host.close()
    target.destroy(host.record)
    assert target.drop_cache(host.record) == [f"mistral-lab-cache-main-{OWNER} (1 GiB in nyc1): $0.10/month"]
    assert vfake.state.volume_leftovers() == []


@needs_root
@do_tests.needs_sshd
def test_a_provision_that_fails_after_the_volume_exists_leaves_it_recorded_and_teardown_keeps_it(vfake, machine_dirs):
    fake = vfake
    recorded: list = []
    fake.state.faults.inject("POST /v2/volumes/{id}/actions", 500, after_commit=True)  # attached, answer lost
    target = DigitalOceanTarget(_options(fake, machine_dirs, cache_volume_gib=1))
    with pytest.raises(TargetError, match="attaching cache volume"):
        target.provision(ProvisionRequest(deployment="half", gpu_slug=CPU, key_dir=state.deployment_dir("half"),
                                          record=recorded.append))
    rec = recorded[-1]
    vol_id = rec.resource_ids["volume"]
    assert rec.resource_ids["droplet"] and fake.state.volumes[vol_id]
    lines: list[str] = []
    target.destroy(rec, on_line=lines.append)  # its droplet's destroy lets go of the volume; it is kept
    assert fake.leftovers()["droplets"] == [] and _api().get_volume(vol_id)["droplet_ids"] == []
    assert any("kept cache volume" in line for line in lines)
    assert vols.drop_cache(owner=OWNER, label="main") == [f"mistral-lab-cache-main-{OWNER} (1 GiB in nyc1): "
                                                          "$0.10/month"]


# ---------------------------------------------------------------------------------------------- whole deploys


def _deploy(name: str, options: dict, lines: list[str], region: str | None = None):
    return ml.deploy(PlanRequest(model="ministral-3b", target="digitalocean", name=name, engine="llamacpp", gpu=H100,
                                 context=4096, vision=False, region=region), options=options, say=lines.append)


def _step(lines: list[str], name: str) -> str:
    return next(line for line in lines if line.startswith(f"✔ {name} "))


@needs_root
@do_tests.needs_sshd
def test_a_repeat_deploy_in_the_region_skips_the_download_and_another_region_makes_its_own(
        vfake_seeded, machine_dirs, tiny_gguf, capfd):
    fake, vfake, (cache_dir, _) = vfake_seeded, vfake_seeded, machine_dirs
    plan = make_plan(PlanRequest(model="ministral-3b", target="digitalocean", engine="llamacpp", gpu=H100,
                                 context=4096, vision=False))
    url_path = f"/{plan.repo}/resolve/main/{plan.gguf_file}"
    size = tiny_gguf.stat().st_size
    with serve_files({url_path: tiny_gguf}, bytes_per_s=BANDWIDTH) as hf:
        options = _options(fake, machine_dirs, hf_endpoint=hf.url,
                           cache_volume_gib=vols.volume_gib(plan.memory["weights_gb"]))

        # 1. The first deploy creates the volume in the droplet's region and downloads into it.
        lines: list[str] = []
        dep = _deploy("day1", options, lines)
        vol_id, region = dep.host.resource_ids["volume"], dep.host.resource_ids["volume_region"]
        assert region == "nyc2" and dep.host.extra["cache_volume"]["size_gib"] == 23
        assert hf.served[url_path] == size and "already done" not in _step(lines, "model")
        assert any(f"fetch: downloading {plan.gguf_file} (3 MiB)" in line for line in lines)
        weights = Path(cache_dir, "models", plan.repo, plan.gguf_file)
        assert weights.stat().st_size == size and _mounted(cache_dir) == vfake.state.volume_backend.attached()[vol_id]
        report = teardown("day1", say=lines.append)
        assert report.kept == [f"cache volume mistral-lab-cache-main-{OWNER} (23 GiB in nyc2): "
                               "$2.30/month"]
        assert _mounted(cache_dir) is None and vfake.state.unclean_detaches == []

        # The cache is listed by sweep with its cost, and kept by a sweep that is not asked to drop it.
        owner = OWNER  # the deploys' `owner` option (do_tests._options)
        (item,) = [i for i in sweep(owner=owner, destroy=True, sleep=lambda s: None) if i.kind == "volume"]
        assert (item.id, item.monthly_usd, item.destroyed) == (vol_id, 2.30, False)
        r = do_tests._cli("sweep", "--owner", owner)
        assert r.returncode == 0, r.stderr
        assert re.search(rf"volume:{vol_id}.*23 GiB, nyc2.*\$2\.30", r.stdout), r.stdout
        assert "cache volumes $2.30/month" in r.stdout

        # 2. The next deploy (no region asked) goes where the cache is, attaches it, and skips the download.
        lines2: list[str] = []
        dep2 = _deploy("day2", options, lines2)
        assert dep2.host.resource_ids["volume"] == vol_id and dep2.host.resource_ids["volume_region"] == "nyc2"
        assert "(already done)" in _step(lines2, "model") and hf.served[url_path] == size  # not one byte more
        report = teardown("day2", say=lines2.append, drop_cache=True)  # workshop down --drop-cache
        assert report.dropped == [f"mistral-lab-cache-main-{owner} (23 GiB in nyc2): $2.30/month"]
        assert report.kept == [] and vfake.state.volume_leftovers() == []

        # 3. A deploy in another region makes a volume of its own there, and downloads into it.
        lines3: list[str] = []
        dep3 = _deploy("ams", options, lines3, region="ams3")
        assert dep3.host.resource_ids["volume_region"] == "ams3" and dep3.host.resource_ids["volume"] != vol_id
        assert "already done" not in _step(lines3, "model") and hf.served[url_path] == 2 * size
        teardown("ams", say=lines3.append, drop_cache=True)
    out, err = capfd.readouterr()
    assert os.environ["DIGITALOCEAN_TOKEN"] not in out + err + "\n".join(lines + lines2 + lines3)


@needs_root
@do_tests.needs_sshd
def test_a_repeat_workshop_attaches_its_cache_and_down_drop_cache_deletes_it(vfake_seeded, machine_dirs, tiny_gguf):
    """`workshop up --cache-volume` (the room's plan sizes the volume), `down` keeps it and says its monthly cost,
    the next `up` in the region attaches it and downloads nothing, `down --drop-cache` deletes it."""
    from llamacpp_fixtures import free_port
    from mistral_lab import workshop as ws_mod

    fake = vfake_seeded
    plan = make_plan(PlanRequest(model="ministral-3b", target="digitalocean", engine="llamacpp", gpu=H100,
                                 context=4096, vision=False))
    url_path = f"/{plan.repo}/resolve/main/{plan.gguf_file}"
    size = tiny_gguf.stat().st_size
    with serve_files({url_path: tiny_gguf}, bytes_per_s=BANDWIDTH) as hf:
        options = _options(fake, machine_dirs, hf_endpoint=hf.url)
        del options["cache_volume"]  # the workshop's own field asks for it

        def room(name: str) -> ws_mod.RoomRequest:
            return ws_mod.RoomRequest.of(name=name, learners=1, model="ministral-3b", target="digitalocean",
                                         engine="llamacpp", gpu=H100, context=4096, vision=False, hours=1,
                                         allow=["127.0.0.0/8"], https_port=free_port(), cache_volume=True)

        lines: list[str] = []
        planned = ws_mod.plan_room(room("day1"))
        assert planned.cache_gib == 23 and "cache volume 23 GiB, $2.30/month while kept" in planned.summary()
        ws, _ = ws_mod.up(planned, options=options, say=lines.append)
        assert ws.cache_volume == "main" and hf.served[url_path] == size
        down = ws_mod.down("day1", say=lines.append)
        assert down.kept == [f"cache volume mistral-lab-cache-main-{OWNER} (23 GiB in nyc2): $2.30/month"]
        assert any("kept cache volume" in line and "--drop-cache" in line for line in lines)
        assert len(fake.state.volumes) == 1 and fake.leftovers()["droplets"] == []

        lines2: list[str] = []
        ws_mod.up(room("day2"), options=options, say=lines2.append)
        assert "(already done)" in _step(lines2, "model") and hf.served[url_path] == size  # not one byte more
        down = ws_mod.down("day2", say=lines2.append, drop_cache=True)
        assert down.dropped == [f"mistral-lab-cache-main-{OWNER} (23 GiB in nyc2): $2.30/month"] and not down.kept
        assert fake.state.volume_leftovers() == []


def test_cache_volume_words_mean_the_same_on_every_path():
    # `workshop up --cache-volume no` once made a volume labelled "no": the CLI and the option read the words alike.
    from mistral_lab.cli._options import cache_option
    from mistral_lab.options import DigitalOceanOptions

    for word, meant in (("yes", True), ("True", True), ("no", False), ("off", False), ("main", "main")):
        assert cache_option(word) == meant == DigitalOceanOptions.of({"cache_volume": word}).cache_volume
    assert cache_option(None) is None

"""The fake DigitalOcean API speaks DO's wire format and keeps state like DO does (checked with plain httpx)."""

from __future__ import annotations

import secrets
import subprocess
import time

import httpx
import pytest

import fakedo
from mistral_lab.hosts.cloudinit import generate_ed25519


@pytest.fixture
def token() -> str:
    return "dop_v1_" + secrets.token_hex(32)


@pytest.fixture
def fake(token):
    with fakedo.serve(token) as f:
        yield f


@pytest.fixture
def http(fake, token):
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as c:
        yield c


def _create(http, **over):
    body = {"name": "mistral-lab-t", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64", "region": "nyc3",
            "tags": ["mistral-lab", "mistral-lab:t"]} | over
    return http.post("/v2/droplets", json=body)


def test_wrong_token_is_401_with_do_error_body_and_ratelimit_headers(fake):
    r = httpx.get(f"{fake.url}/v2/account", headers={"Authorization": "Bearer dop_v1_wrong"})
    assert r.status_code == 401
    assert r.json() == {"id": "unauthorized", "message": "Unable to authenticate you"}
    for h in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
        assert r.headers[h].isdigit()
    assert int(r.headers["ratelimit-reset"]) > time.time()


def test_account_and_unknown_route(http):
    assert http.get("/v2/account").json()["account"]["droplet_limit"] == 25
    r = http.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["id"] == "not_found"


def test_ratelimit_remaining_counts_down(http):
    a = int(http.get("/v2/account").headers["ratelimit-remaining"])
    b = int(http.get("/v2/account").headers["ratelimit-remaining"])
    assert (a, b) == (a, a - 1) and a < 5000


def test_sizes_paginate_with_full_links_and_total(http):
    first = http.get("/v2/sizes", params={"per_page": 5}).json()
    assert len(first["sizes"]) == 5 and first["meta"]["total"] == 11
    assert first["links"]["pages"]["next"].endswith("/v2/sizes?page=2&per_page=5")
    assert first["links"]["pages"]["last"].endswith("page=3&per_page=5")
    last = httpx.get(first["links"]["pages"]["last"], headers=http.headers).json()
    assert len(last["sizes"]) == 1 and "next" not in last["links"]["pages"]
    assert last["links"]["pages"]["prev"].endswith("page=2&per_page=5")
    everything = http.get("/v2/sizes", params={"per_page": 200}).json()
    assert everything["links"] == {}
    h100 = next(s for s in everything["sizes"] if s["slug"] == "gpu-h100x1-80gb")
    assert h100["gpu_info"] == {"count": 1, "vram": {"amount": 80, "unit": "gib"}, "model": "nvidia_h100"}
    assert {d["type"] for d in h100["disk_info"]} == {"local", "scratch"}
    assert h100["price_hourly"] == 3.39 and "tor1" in h100["regions"]


def test_droplet_goes_new_then_active_with_networks_then_deleted(http, fake):
    r = _create(http)
    assert r.status_code == 202
    body = r.json()
    d = body["droplet"]
    assert d["status"] == "new" and d["networks"] == {"v4": [], "v6": []} and d["locked"] is True
    assert body["links"]["actions"][0]["rel"] == "create"
    action_href = body["links"]["actions"][0]["href"]
    statuses = [http.get(f"/v2/droplets/{d['id']}").json()["droplet"]["status"] for _ in range(3)]
    assert statuses == ["new", "active", "active"]
    active = http.get(f"/v2/droplets/{d['id']}").json()["droplet"]
    kinds = {n["type"]: n["ip_address"] for n in active["networks"]["v4"]}
    assert kinds["public"].startswith("127.0.0.") and kinds["private"].startswith("10.")
    assert httpx.get(action_href, headers=http.headers).json()["action"]["status"] == "completed"
    r = http.delete(f"/v2/droplets/{d['id']}")
    assert r.status_code == 204 and r.content == b""
    r = http.get(f"/v2/droplets/{d['id']}")
    assert r.status_code == 404 and r.json()["id"] == "not_found"
    assert fake.leftovers()["droplets"] == []


def test_gpu_droplets_hidden_unless_type_gpus_and_type_with_tag_rejected(http):
    cpu = _create(http).json()["droplet"]
    gpu = _create(http, size="gpu-h100x1-80gb", image="gpu-h100x1-base", region="tor1").json()["droplet"]
    assert gpu["gpu_info"]["model"] == "nvidia_h100"
    ids = lambda r: [d["id"] for d in r.json()["droplets"]]  # noqa: E731
    assert ids(http.get("/v2/droplets")) == [cpu["id"]]
    assert ids(http.get("/v2/droplets", params={"type": "gpus"})) == [gpu["id"]]
    assert sorted(ids(http.get("/v2/droplets", params={"tag_name": "mistral-lab"}))) == sorted([cpu["id"], gpu["id"]])
    r = http.get("/v2/droplets", params={"tag_name": "mistral-lab", "type": "gpus"})
    assert r.status_code == 422 and r.json()["id"] == "unprocessable_entity"
    assert http.delete("/v2/droplets", params={"tag_name": "mistral-lab"}).status_code == 204
    assert ids(http.get("/v2/droplets", params={"type": "gpus"})) == []


def test_create_validation_errors(http, fake):
    assert _create(http, size="gpu-nope").json()["message"] == "You specified an invalid size for Droplet creation."
    r = _create(http, size="gpu-h100x1-80gb", image="gpu-h100x1-base", region="nyc3")
    assert (r.status_code, r.json()["message"]) == (422, "Size is not available in this region.")
    fake.state.unavailable.add(("gpu-h100x1-80gb", "nyc2"))
    r = _create(http, size="gpu-h100x1-80gb", image="gpu-h100x1-base", region="nyc2")
    assert r.json()["message"] == "Size is not available in this region."
    r = _create(http, ssh_keys=["aa:bb"])
    assert r.status_code == 422 and "invalid key identifiers" in r.json()["message"]
    assert _create(http, user_data="x" * (64 * 1024 + 1)).status_code == 422
    fake.state.droplet_limit = 0
    r = _create(http)
    assert r.status_code == 422 and "droplet limit" in r.json()["message"]
    assert fake.leftovers()["droplets"] == []


def test_ssh_key_fingerprint_is_md5_like_ssh_keygen_and_duplicates_422(http, tmp_path):
    pub = generate_ed25519("someone").public_openssh
    (tmp_path / "k.pub").write_text(pub + "\n")
    expected = subprocess.run(["ssh-keygen", "-l", "-E", "md5", "-f", str(tmp_path / "k.pub")], capture_output=True,
                              text=True, check=True).stdout.split()[1].removeprefix("MD5:")
    r = http.post("/v2/account/keys", json={"name": "mistral-lab-t", "public_key": pub})
    assert r.status_code == 201
    key = r.json()["ssh_key"]
    assert key["fingerprint"] == expected and isinstance(key["id"], int)
    again = http.post("/v2/account/keys", json={"name": "other", "public_key": pub})
    assert (again.status_code, again.json()["message"]) == (422, "SSH Key is already in use on your account")
    assert http.get(f"/v2/account/keys/{expected}").json()["ssh_key"]["id"] == key["id"]
    assert http.get(f"/v2/account/keys/{key['id']}").json()["ssh_key"]["fingerprint"] == expected
    assert http.delete(f"/v2/account/keys/{expected}").status_code == 204
    assert http.get(f"/v2/account/keys/{expected}").status_code == 404


def test_firewall_needs_existing_tag_and_settles(http, fake):
    body = {"name": "mistral-lab-t", "tags": ["mistral-lab:t"],
            "inbound_rules": [{"protocol": "tcp", "ports": "22", "sources": {"addresses": ["192.0.2.1/32"]}}]}
    r = http.post("/v2/firewalls", json=body)
    assert r.status_code == 422 and "does not exist" in r.json()["message"]
    assert http.post("/v2/tags", json={"name": "mistral-lab:t"}).status_code == 201
    r = http.post("/v2/firewalls", json=body)
    assert r.status_code == 202
    fw = r.json()["firewall"]
    assert fw["status"] == "waiting" and fw["tags"] == ["mistral-lab:t"] and fw["pending_changes"] == []
    statuses = [http.get(f"/v2/firewalls/{fw['id']}").json()["firewall"]["status"] for _ in range(2)]
    assert statuses == ["waiting", "succeeded"]
    assert http.post("/v2/firewalls", json={"name": "x-y"}).status_code == 400
    assert http.delete(f"/v2/firewalls/{fw['id']}").status_code == 204
    assert http.delete(f"/v2/firewalls/{fw['id']}").status_code == 404


def test_faults_429_500_delay_and_after_commit(http, fake):
    fake.state.faults.inject("GET /v2/account", 429, times=2, retry_after=7)
    r = http.get("/v2/account")
    assert (r.status_code, r.headers["retry-after"], r.json()["id"]) == (429, "7", "too_many_requests")
    assert http.get("/v2/account").status_code == 429
    assert http.get("/v2/account").status_code == 200
    fake.state.faults.inject("POST /v2/droplets", 500)
    assert _create(http).status_code == 500 and fake.leftovers()["droplets"] == []
    fake.state.faults.inject("POST /v2/droplets", 500, after_commit=True)
    r = _create(http)
    assert r.status_code == 500 and r.json()["id"] == "server_error"
    assert len(fake.leftovers()["droplets"]) == 1  # it worked, the client just never heard
    fake.state.faults.inject("GET /v2/sizes", delay=0.5)
    t = time.monotonic()
    assert http.get("/v2/sizes").status_code == 200 and time.monotonic() - t >= 0.5
    assert fake.count("POST /v2/droplets") == 2 and fake.count("POST /v2/droplets", status=500) == 2
    assert fake.count("GET /v2/account", status=429) == 2
    http.delete("/v2/droplets", params={"tag_name": "mistral-lab"})

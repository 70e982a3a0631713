"""The fake DigitalOcean API speaks DO's wire format and keeps state like DO does (checked with plain httpx)."""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import time

import httpx
import pytest

import fakedo
from fakedo import app as fakedo_app
from fakedo import conformance as fakedo_conformance
from fakedo import quirks
from fakedo.quirks import Quirks
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


# ------------------------------------------------------------------------------------------- spec conformance


def test_a_response_the_spec_does_not_allow_is_recorded_and_fails_the_fake_when_it_stops(token):
    with pytest.raises(fakedo.NonConformingResponse) as stopped, fakedo.serve(token) as fake:  # on its exit
        fake.state.faults.inject("GET /v2/account", 201)  # a success code the spec does not list for it
        r = httpx.get(f"{fake.url}/v2/account", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201  # the client still gets what the fake meant to send
    assert "GET /v2/account (account_get) answered 201: status 201 is not listed" in str(stopped.value)


def test_mismatches_name_the_field_and_a_test_may_take_them(fake):
    # The fake's own answers conform; a body shaped wrong is caught field by field.
    fake.state.conformance.check("sizes_list", "GET /v2/sizes", 200, {"content-type": "application/json"},
                                 json.dumps({"sizes": [{"slug": "s-1"}], "links": {}, "meta": {}}).encode())
    problems = [m.problem for m in fake.take_mismatches()]
    assert "header ratelimit-limit missing" in problems
    assert "sizes/0: 'price_hourly' is a required property" in problems
    assert "meta: 'total' is a required property" in problems
    assert fake.take_mismatches() == []


def test_the_bundle_names_its_source_and_every_route_has_its_operation():
    source = fakedo_conformance.source()
    assert source["repository"] == "https://github.com/digitalocean/openapi"
    assert len(source["commit"]) == 40 and source["read"] == "2026-12-07"
    ops = fakedo_conformance.operations()
    assert {fakedo_app.OPERATION_IDS[r] for r in fakedo.ROUTE_KEYS} <= set(ops)
    assert ops["droplets_destroy"].response_for(204).content_type is None
    assert ops["droplets_create"].response_for(422) is ops["droplets_create"].responses["default"]
    assert ops["droplets_create"].response_for(200) is None


def test_tag_create_400_is_the_root_causes_shape_of_the_spec(http):
    r = http.post("/v2/tags", json={"name": "no spaces"})
    assert r.status_code == 400
    message = 'Error validating resource tag: "tag-name \\"no spaces\\" contains invalid characters"'
    assert r.json() == {"error": message, "messages": None,
                        "root_causes": [f"rpc error: code = InvalidArgument desc = {message}"]}


def test_icmp_rules_come_back_with_ports_0_and_droplet_actions_are_served(http):
    assert http.post("/v2/tags", json={"name": "mistral-lab:t"}).status_code == 201
    body = {"name": "mistral-lab-t", "tags": ["mistral-lab:t"],
            "outbound_rules": [{"protocol": "icmp", "destinations": {"addresses": ["0.0.0.0/0"]}}]}
    fw = http.post("/v2/firewalls", json=body).json()["firewall"]
    everywhere = {"addresses": ["0.0.0.0/0"]}
    assert fw["outbound_rules"] == [{"protocol": "icmp", "ports": "0", "destinations": everywhere}]
    assert http.delete(f"/v2/firewalls/{fw['id']}").status_code == 204
    created = _create(http).json()
    droplet_id, action_id = created["droplet"]["id"], created["links"]["actions"][0]["id"]
    listed = http.get(f"/v2/droplets/{droplet_id}/actions").json()
    assert [a["id"] for a in listed["actions"]] == [action_id] and listed["meta"]["total"] == 1
    assert http.get(f"/v2/droplets/{droplet_id}/actions/{action_id}").json()["action"]["type"] == "create"
    assert http.get(f"/v2/droplets/{droplet_id}/actions/1").status_code == 404
    assert http.delete(f"/v2/droplets/{droplet_id}").status_code == 204


# ------------------------------------------------------------------------------------------ unkind behaviours


@contextlib.contextmanager
def _unkind(token, **serve_kwargs):
    """A fake with some of the real API's unkindness on, and an httpx client for it."""
    with fakedo.serve(token, **serve_kwargs) as fake, httpx.Client(
            base_url=fake.url, headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        yield fake, client


def test_async_destroy_keeps_the_droplet_listed_off_and_refuses_a_second_delete(token):
    with _unkind(token, quirks=Quirks(destroy_polls=2), polls_to_active=1) as (fake, http):
        d = _create(http).json()["droplet"]
        assert http.get(f"/v2/droplets/{d['id']}").json()["droplet"]["status"] == "active"
        assert http.delete(f"/v2/droplets/{d['id']}").status_code == 204
        again = http.delete(f"/v2/droplets/{d['id']}")
        assert (again.status_code, again.json()) == (422, {"id": "unprocessable_entity",
                                                           "message": quirks.PENDING_EVENT})
        tagged = http.get("/v2/droplets", params={"tag_name": "mistral-lab"}).json()["droplets"]  # look 1
        assert [(x["id"], x["status"]) for x in tagged] == [(d["id"], "off")]
        assert http.get(f"/v2/droplets/{d['id']}").json()["droplet"]["status"] == "off"  # look 2
        assert http.get(f"/v2/droplets/{d['id']}").status_code == 404
        assert http.get("/v2/droplets", params={"tag_name": "mistral-lab"}).json()["droplets"] == []
        assert http.delete(f"/v2/droplets/{d['id']}").status_code == 404


def test_async_destroy_by_time_and_by_tag(token):
    with _unkind(token, quirks=Quirks(destroy_seconds=0.5)) as (fake, http):
        d = _create(http).json()["droplet"]
        assert http.delete("/v2/droplets", params={"tag_name": "mistral-lab"}).status_code == 204
        assert fake.leftovers()["droplets"] == []  # asked to go: not a leftover, though still listed
        listed = http.get("/v2/droplets").json()["droplets"]
        assert [(x["id"], x["status"], x["locked"]) for x in listed] == [(d["id"], "off", True)]
        assert http.delete("/v2/droplets", params={"tag_name": "mistral-lab"}).status_code == 204
        time.sleep(0.6)
        assert http.get(f"/v2/droplets/{d['id']}").status_code == 404


def test_a_create_accepted_then_errored_or_stuck(token):
    with _unkind(token, quirks=Quirks(create_failure="errored"), polls_to_active=2) as (fake, http):
        created = _create(http).json()
        d, action = created["droplet"], created["links"]["actions"][0]
        statuses = [http.get(f"/v2/droplets/{d['id']}").json()["droplet"]["status"] for _ in range(4)]
        assert statuses == ["new"] * 4
        assert http.get(action["href"]).json()["action"]["status"] == "errored"
        assert http.get(f"/v2/droplets/{d['id']}").json()["droplet"]["networks"] == {"v4": [], "v6": []}
        fake.state.quirks.create_failure = "stuck"
        stuck = _create(http, name="mistral-lab-u").json()
        for _ in range(5):
            assert http.get(f"/v2/droplets/{stuck['droplet']['id']}").json()["droplet"]["status"] == "new"
        assert http.get(stuck["links"]["actions"][0]["href"]).json()["action"]["status"] == "in-progress"
        assert http.delete("/v2/droplets", params={"tag_name": "mistral-lab"}).status_code == 204
        assert fake.leftovers()["droplets"] == []


def test_422s_that_mean_not_here(token):
    q = Quirks(closed_regions={"nyc3"}, restricted_sizes={"gpu-h200x1-141gb"},
               image_unavailable={("gpu-h100x1-base", "tor1")})
    with _unkind(token, quirks=q) as (fake, http):
        def refusal(**over):
            r = _create(http, **over)
            assert r.status_code == 422 and r.json()["id"] == "unprocessable_entity"
            return r.json()["message"]

        assert refusal() == "Region is not available"
        nyc3 = next(r for r in http.get("/v2/regions").json()["regions"] if r["slug"] == "nyc3")
        assert nyc3["available"] is False
        assert refusal(size="gpu-h200x1-141gb", image="gpu-h100x1-base", region="nyc2") == \
            quirks.SIZE_RESTRICTED
        assert refusal(size="gpu-h100x8-640gb", image="gpu-h100x8-base", region="atl1") == \
            "Size is not available in this region."
        assert refusal(size="gpu-h100x1-80gb", image="gpu-h100x1-base", region="tor1") == \
            quirks.IMAGE_NOT_IN_REGION
        image = next(i for i in http.get("/v2/images").json()["images"] if i["slug"] == "gpu-h100x1-base")
        assert "tor1" not in image["regions"] and "nyc2" in image["regions"]
        assert fake.count("POST /v2/droplets", status=422) == 4 and fake.leftovers()["droplets"] == []


def test_sizes_8_gpus_with_total_vram_monthly_at_744_hours_and_prices_that_move(http, fake):
    sizes = {s["slug"]: s for s in http.get("/v2/sizes", params={"per_page": 200}).json()["sizes"]}
    h100x8 = sizes["gpu-h100x8-640gb"]
    # The real /v2/sizes (public dumps, see catalog.py): vram is the droplet's total, monthly is hourly x 744.
    assert h100x8["gpu_info"] == {"count": 8, "vram": {"amount": 640, "unit": "gib"}, "model": "nvidia_h100"}
    assert (h100x8["price_hourly"], h100x8["price_monthly"]) == (23.92, 17796.48)
    assert sizes["gpu-mi300x8-1536gb"]["gpu_info"]["vram"]["amount"] == 1536
    gpus = [s for s in sizes.values() if "gpu_info" in s]
    assert all(s["price_monthly"] == round(s["price_hourly"] * 744, 2) for s in gpus) and len(gpus) == 9
    assert (sizes["s-1vcpu-1gb"]["price_hourly"], sizes["s-1vcpu-1gb"]["price_monthly"]) == (0.00893, 6.0)
    fake.state.set_price("gpu-h100x8-640gb", 21.6)
    moved = next(s for s in http.get("/v2/sizes", params={"per_page": 200}).json()["sizes"]
                 if s["slug"] == "gpu-h100x8-640gb")
    assert (moved["price_hourly"], moved["price_monthly"]) == (21.6, 16070.4)


def test_ssh_key_listing_has_its_own_limit_and_429s_without_retry_after(token):
    with _unkind(token, quirks=Quirks(ssh_key_list_limit=2, ssh_key_list_window_s=0.5)) as (fake, http):
        assert [http.get("/v2/account/keys").status_code for _ in range(2)] == [200, 200]
        r = http.get("/v2/account/keys")
        assert (r.status_code, r.json()["id"]) == (429, "too_many_requests")
        assert "retry-after" not in r.headers
        assert int(r.headers["ratelimit-remaining"]) > 0  # the hourly quota is not what ran out
        assert http.get("/v2/account").status_code == 200  # other routes are not limited by it
        time.sleep(0.6)
        assert http.get("/v2/account/keys").status_code == 200


def test_a_spent_hourly_limit_429s_without_retry_after_and_the_burst_limit_with_it(token):
    with _unkind(token, quirks=Quirks(hourly_limit=3)) as (fake, http):
        assert [http.get("/v2/account").headers["ratelimit-remaining"] for _ in range(3)] == ["2", "1", "0"]
        r = http.get("/v2/sizes")
        assert r.status_code == 429
        assert r.json() == {"id": "too_many_requests", "message": "API Rate limit exceeded."}
        assert "retry-after" not in r.headers and r.headers["ratelimit-limit"] == "3"
        assert r.headers["ratelimit-remaining"] == "0"
        assert int(r.headers["ratelimit-reset"]) > time.time() + 3500  # when the oldest request expires
    with _unkind(token, quirks=Quirks(burst_limit=2)) as (fake, http):
        assert [http.get("/v2/account").status_code for _ in range(2)] == [200, 200]
        r = http.get("/v2/account")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert r.headers["ratelimit-remaining"] == "0" and r.headers["ratelimit-limit"] == "5000"


def test_a_scoped_token_gets_the_real_403_and_the_spec_names_the_scopes(token):
    with _unkind(token, scopes={"droplet:read", "droplet:create", "image:read"}) as (fake, http):
        assert http.get("/v2/droplets").status_code == 200
        for r in (http.post("/v2/account/keys", json={"name": "k", "public_key": "ssh-ed25519 AAAA"}),
                  http.get("/v2/droplets", params={"tag_name": "mistral-lab"}),  # tag_name needs tag:read
                  _create(http)):  # tags in the body need tag:create
            assert (r.status_code, r.json()) == (403, {"id": "forbidden", "message": quirks.NOT_AUTHORIZED})
        assert _create(http, tags=[]).status_code == 202
        (droplet_id,) = fake.state.droplets
        assert http.delete(f"/v2/droplets/{droplet_id}").status_code == 403  # droplet:delete not held
        fake.state.scopes = None  # a full-access token again, to clean up
        assert http.delete(f"/v2/droplets/{droplet_id}").status_code == 204
    assert fakedo.required_scopes("POST /v2/droplets") == (("droplet:create",),)
    assert fakedo.required_scopes("GET /v2/sizes") == (("sizes:read", "regions:read"),)

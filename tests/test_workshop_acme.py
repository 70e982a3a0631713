"""A workshop with --domain gets its certificate from an ACME CA through certbot (issue 16, part 3), tested against
Debian's `pebble`, the ACME test server by Let's Encrypt, on loopback: pebble-challtestsrv answers DNS for the
test name with 127.0.0.1, pebble checks HTTP-01 on the proxy's plain-HTTP port, the real nginx serves the token
and then the issued certificate, which verifies against pebble's root for the name. A renewal runs the deploy hook
that certbot recorded and nginx serves the new certificate without a restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
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
from mistral_lab.errors import BadInput
from mistral_lab.hosts import do_resources as res

DOMAIN = "ws.mistral-lab.test"
NAME = "wsacme"

pytestmark = pytest.mark.slow


def test_a_domain_is_checked_before_anything_is_made():
    for bad in ("203.0.113.9", "Not A Name", "localhost"):
        with pytest.raises(BadInput) as e:
            ws_mod.plan_room(ws_mod.RoomRequest.of(name="room", learners=2, model="tiny-random", domain=bad))
        assert e.value.field == "domain"
    # On DigitalOcean the CA's port is opened to everyone (the CA checks from places it does not list), and only
    # that port: the proxy's stays the room's.
    body = res.firewall_body(res.Names("room", "abcd1234"), ["192.0.2.1/32"], https_from=["203.0.113.0/24"],
                             https_port=443, acme_port=80)
    assert body["inbound_rules"][1:] == [
        {"protocol": "tcp", "ports": "443", "sources": {"addresses": ["203.0.113.0/24"]}},
        {"protocol": "tcp", "ports": "80", "sources": {"addresses": ["0.0.0.0/0", "::/0"]}}]
    assert len(res.firewall_body(res.Names("room", "abcd1234"), ["192.0.2.1/32"])["inbound_rules"]) == 1


def test_waiting_for_the_a_record_is_bounded_and_says_what_to_set(tmp_path):
    from mistral_lab.hosts.local import LocalHost

    lines: list[str] = []
    host = LocalHost(tmp_path)
    assert "127.0.0.1" in ws_mod.resolves_to(host, "localhost")
    ws_mod.wait_for_dns(host, "localhost", "127.0.0.1", minutes=0.01, say=lines.append)  # there already: no wait
    assert lines == []
    with pytest.raises(BadInput) as e:
        ws_mod.wait_for_dns(host, "nowhere.mistral-lab.test", "192.0.2.7", minutes=0.02, say=lines.append,
                            every_s=0.2)
    assert e.value.field == "domain" and "192.0.2.7" in (e.value.fix or "") and "resolves to nothing" in str(e.value)
    assert lines == ["  set nowhere.mistral-lab.test's DNS A record to 192.0.2.7 now; waiting up to 0.02 min for "
                     "it to resolve"]


def test_the_fingerprint_on_record_is_the_leafs_not_the_chains():
    leaf = ws_mod.make_certificate("127.0.0.1", valid_hours=1, name="leaf")
    ca = ws_mod.make_certificate("127.0.0.1", valid_hours=1, name="ca")
    assert ws_mod.fingerprint_of(ws_mod.first_certificate(leaf.cert_pem + ca.cert_pem)) == leaf.fingerprint
    assert ws_mod.first_certificate(leaf.cert_pem) == leaf.cert_pem


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"exited early:\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail(f"port {port} never opened:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def pebble(tmp_path_factory):
    """pebble on 127.0.0.1 with its own TLS certificate (made here), resolving names through challtestsrv."""
    if not (shutil.which("pebble") and shutil.which("pebble-challtestsrv") and shutil.which("certbot")):
        pytest.skip("pebble and certbot are not installed (scripts/bootstrap.sh installs them)")
    d = tmp_path_factory.mktemp("pebble")
    tls = ws_mod.make_certificate("127.0.0.1", valid_hours=2, name="pebble")
    (d / "cert.pem").write_text(tls.cert_pem)
    (d / "key.pem").write_text(tls.key_pem)
    acme, mgmt, dns, http01 = free_port(), free_port(), free_port(), free_port()
    (d / "config.json").write_text(json.dumps({"pebble": {
        "listenAddress": f"127.0.0.1:{acme}", "managementListenAddress": f"127.0.0.1:{mgmt}",
        "certificate": str(d / "cert.pem"), "privateKey": str(d / "key.pem"), "httpPort": http01,
        "tlsPort": free_port(), "ocspResponderURL": "", "externalAccountBindingRequired": False}}))
    procs = []
    mgmt_dns = free_port()
    dns_log, log = d / "challtestsrv.log", d / "pebble.log"
    procs.append(subprocess.Popen(
        ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{dns}", "-http01", "", "-https01", "", "-tlsalpn01", "",
         "-management", f"127.0.0.1:{mgmt_dns}", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
        stdout=dns_log.open("wb"), stderr=subprocess.STDOUT))
    # No random waits or refused nonces: pebble's test knobs, so the run is quick and certain.
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    procs.append(subprocess.Popen(["pebble", "-config", str(d / "config.json"), "-dnsserver", f"127.0.0.1:{dns}"],
                                  stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env))
    try:
        _wait_port(mgmt_dns, procs[0], dns_log)
        _wait_port(acme, procs[1], log)
        _wait_port(mgmt, procs[1], log)
        yield {"directory": f"https://127.0.0.1:{acme}/dir", "mgmt": f"https://127.0.0.1:{mgmt}",
               "http01": http01, "tls_ca": str(d / "cert.pem"), "log": log}
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)


def _pebble_root(pebble: dict) -> str:
    """The root pebble signs with (new each run), from its management interface."""
    ctx = ssl.create_default_context(cafile=pebble["tls_ca"])
    r = httpx.get(pebble["mgmt"] + "/roots/0", verify=ctx, timeout=30)
    assert r.status_code == 200
    return r.text


def _served_chain_check(port: int, root_pem: str, domain: str = DOMAIN) -> tuple[str, dict]:
    """Connect to 127.0.0.1 for DOMAIN, trusting pebble's root only: the served certificate's fingerprint and
    subject/issuer, or an SSLError when it does not verify for the name."""
    ctx = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=domain) as tls:
        return ws_mod.fingerprint_of(tls.getpeercert(binary_form=True)), tls.getpeercert()


@pytest.mark.timeout(900)
def test_up_with_a_domain_serves_a_ca_certificate_and_renews_it(llamacpp_bin, pebble):
    if not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        pytest.skip("nginx is not installed")
    lines: list[str] = []
    req = ws_mod.RoomRequest.of(name=NAME, learners=2, model="tiny-random", hours=1, https_port=free_port(),
                                domain=DOMAIN, acme_server=pebble["directory"], acme_http_port=pebble["http01"],
                                acme_ca_bundle=pebble["tls_ca"])
    ws, files = ws_mod.up(req, say=lines.append)
    renewer = 0
    try:
        assert ws.base_url == f"https://{DOMAIN}:{ws.https_port}/v1"
        assert any("asking https://127.0.0.1:" in line and DOMAIN in line for line in lines), lines
        root = _pebble_root(pebble)
        first, cert = _served_chain_check(ws.https_port, root)
        assert first == ws.fingerprint == ws_mod.load(NAME).fingerprint
        issuer = dict(x[0] for x in cert["issuer"])
        assert "Pebble" in issuer.get("commonName", "") and ("DNS", DOMAIN) in cert["subjectAltName"]
        # The self-signed certificate it started with is gone; a client that trusts only pebble's root and asks
        # for another name is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx = ssl.create_default_context(cadata=root)
            with socket.create_connection(("127.0.0.1", ws.https_port), timeout=30) as raw:
                ctx.wrap_socket(raw, server_hostname="other.mistral-lab.test")
        # Cards: no fingerprint to pin, the snippet trusts the system's CAs; the page's address is on them.
        html = Path(files["html"]).read_text()
        assert "SHA-256" not in html and f"https://{DOMAIN}:{ws.https_port}/" in html
        (card, *_) = ws_mod.cards(ws, ws_mod.load_keys(NAME))
        assert card.fingerprint is None and "create_default_context" not in ws_mod.snippet(card)
        # The renewer runs beside the proxy; a renewal (forced: pebble's certificates last years) runs the hook
        # certbot recorded, and nginx serves the new certificate on the same master.
        renewal = Path(ws.proxy_root, "acme/config/renewal/workshop.conf").read_text()
        assert "webroot" in renewal and "renew_hook" in renewal and pebble["directory"] in renewal
        renewer = int(Path(ws.proxy_root, "acme/serve.pid").read_text())
        assert Path(f"/proc/{renewer}").exists()
        master = int(Path(ws.proxy_root, "nginx.pid").read_text())
        with ws_mod.session.open_host(state.load(NAME)) as host:
            ws_mod.acme_script(host, ws, "renew", FORCE="1")
        deadline = time.monotonic() + 60
        second = first
        while second == first and time.monotonic() < deadline:
            time.sleep(0.5)
            second, _ = _served_chain_check(ws.https_port, root)
        assert second != first and int(Path(ws.proxy_root, "nginx.pid").read_text()) == master
        # A learner's request over the CA's certificate, checked for the name.
        key = ws_mod.load_keys(NAME)["l01"]
        ctx = ssl.create_default_context(cadata=root)
        transport = httpx.HTTPTransport(verify=ctx)
        with httpx.Client(transport=transport, timeout=60) as c:
            r = c.get(f"https://127.0.0.1:{ws.https_port}/v1/models", extensions={"sni_hostname": DOMAIN},
                      headers={"Host": DOMAIN, "Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        ws_mod.down(NAME, say=lines.append)
    assert renewer and not Path(f"/proc/{renewer}").exists() and not state.exists(NAME)


@contextlib.contextmanager
def _a_record_when_asked(lines: list[str], domain: str):
    """What the instructor does when `up` prints the new droplet's address for the A record: add it. Here the
    droplet is this machine, so its resolver's /etc/hosts is the zone; the line is taken out again after."""
    hosts = Path("/etc/hosts")
    before = hosts.read_text()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            asked = [line for line in list(lines) if "A record to" in line]
            if asked:
                address = asked[0].split("A record to ", 1)[1].split()[0]
                time.sleep(3)  # a person reading the line, then typing
                with hosts.open("a") as f:
                    f.write(f"{address} {domain}\n")
                return
            time.sleep(0.2)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(10)
        hosts.write_text(before)


@pytest.mark.timeout(1500)
@pytest.mark.skipif(os.geteuid() != 0, reason="the fake droplet's resolver is this machine's /etc/hosts")
def test_a_droplet_workshop_with_a_domain_waits_for_its_a_record_then_gets_the_cas_certificate(
        llamacpp_bin, pebble, shared_build_cache, tmp_path, monkeypatch):  # noqa: F811
    """DigitalOcean: the firewall opens the CA's port to everyone (and only it), `up` prints the droplet's address
    for the A record and waits until the name resolves there, then certbot gets pebble's certificate through the
    droplet's nginx."""
    if sshd.available() is not None:
        pytest.skip(str(sshd.available()))
    domain, name = "ws-do.mistral-lab.test", "wsacmedo"
    token = "dop_v1_" + os.urandom(32).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    lines: list[str] = []
    # The CA bundle is a file on the droplet, read by its login user (pytest's folders are root's alone).
    shared = Path(tempfile.mkdtemp(prefix="ml-acme-ca-"))
    shared.chmod(0o755)
    bundle = shared / "pebble-ca.pem"
    shutil.copy(pebble["tls_ca"], bundle)
    bundle.chmod(0o644)
    with fakedo.serve(token, backend=SshdBackend(tmp_path / "machines"), polls_to_active=2) as fake, \
            _a_record_when_asked(lines, domain):
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.url)
        req = ws_mod.RoomRequest.of(name=name, learners=1, model="tiny-random", target="digitalocean",
                                    engine="llamacpp", gpu="gpu-l40sx1-48gb", hours=1, allow=["127.0.0.0/8"],
                                    ssh_from=["192.0.2.10/32"], https_port=free_port(), domain=domain,
                                    acme_server=pebble["directory"], acme_http_port=pebble["http01"],
                                    acme_ca_bundle=str(bundle))
        options = {"ssh_port": fake.ssh_port, "user": droplet_user(), "poll_interval": 0.1,
                   "host_cache": shared_build_cache}
        ws, _ = ws_mod.up(req, options=options, say=lines.append)
        try:
            (fw,) = fake.state.firewalls.values()
            assert {"protocol": "tcp", "ports": str(pebble["http01"]),
                    "sources": {"addresses": ["0.0.0.0/0", "::/0"]}} in fw["inbound_rules"]
            (droplet,) = fake.state.droplets.values()
            asked = [line for line in lines if "A record" in line]
            assert asked and droplet.address in asked[0] and domain in asked[0]
            assert any(f"{domain} resolves to {droplet.address}" in line for line in lines)
            first, cert = _served_chain_check(ws.https_port, _pebble_root(pebble), domain)
            assert first == ws.fingerprint and ("DNS", domain) in cert["subjectAltName"]
            assert ws.base_url == f"https://{domain}:{ws.https_port}/v1"
        finally:
            ws_mod.down(name, say=lines.append)
        assert fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}
    shutil.rmtree(shared)
    assert not any(token in line for line in lines)

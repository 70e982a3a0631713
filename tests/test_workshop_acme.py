"""A workshop with --domain gets its certificate from an ACME CA through certbot (issue 16, part 3), tested against
Debian's `pebble`, the ACME test server by Let's Encrypt, on loopback: pebble-challtestsrv answers DNS for the
test name with 127.0.0.1, pebble checks HTTP-01 on the proxy's plain-HTTP port, the real nginx serves the token
and then the issued certificate, which verifies against pebble's root for the name. A renewal runs the deploy hook
that certbot recorded and nginx serves the new certificate without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from llamacpp_fixtures import free_port
from mistral_lab import state
from mistral_lab import workshop as ws_mod
from mistral_lab.errors import BadInput

DOMAIN = "ws.mistral-lab.test"
NAME = "wsacme"

pytestmark = pytest.mark.slow


def test_a_domain_is_checked_before_anything_is_made():
    for bad in ("203.0.113.9", "Not A Name", "localhost"):
        with pytest.raises(BadInput) as e:
            ws_mod.plan_room(ws_mod.RoomRequest.of(name="room", learners=2, model="tiny-random", domain=bad))
        assert e.value.field == "domain"
    with pytest.raises(BadInput, match="port 80") as e:
        ws_mod.plan_room(ws_mod.RoomRequest.of(name="room", learners=2, model="ministral-3b", target="digitalocean",
                                               allow=["203.0.113.0/24"], domain="ws.example.org"))
    assert e.value.field == "domain"


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


def _served_chain_check(port: int, root_pem: str) -> tuple[str, dict]:
    """Connect to 127.0.0.1 for DOMAIN, trusting pebble's root only: the served certificate's fingerprint and
    subject/issuer, or an SSLError when it does not verify for the name."""
    ctx = ssl.create_default_context(cadata=root_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname=DOMAIN) as tls:
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

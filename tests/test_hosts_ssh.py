"""SSHHost and the ssh target against real OpenSSH sshd servers on 127.0.0.1, each with its own host key."""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import http.server
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import get_target, shell
from mistral_lab.hosts.base import Host, ProvisionRequest
from mistral_lab.hosts.ssh import (
    ConnectionLost,
    HostKeyMismatch,
    HostKeyUnknown,
    SSHAuthError,
    SSHHost,
    SSHTarget,
)
from sshd import SshdServer, generate_ed25519

CLI = str(Path(sys.executable).parent / "mistral-lab")


@pytest.fixture
def host(sshd: SshdServer) -> Iterator[SSHHost]:
    h = SSHHost(sshd.record())
    yield h
    h.close()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of our own: the default ~/.ssh/known_hosts must not be this machine's real one."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------------- host keys


def test_pinned_key_is_accepted(host: SSHHost, sshd: SshdServer):
    assert isinstance(host, Host)
    r = host.run("whoami; echo $SSH_CONNECTION")
    assert r.stdout.split()[0] == sshd.user
    assert str(sshd.port) in r.stdout
    assert host.host_key == sshd.host_key_pub
    assert host.host_key_fingerprint == f"ssh-ed25519 {sshd.host_key_fingerprint}"


def test_a_different_host_key_is_refused_with_both_fingerprints(sshd: SshdServer, sshd_factory):
    impostor = sshd_factory()
    assert impostor.host_key_pub != sshd.host_key_pub
    # The record pins the first server's key; the second server answers at the address.
    h = SSHHost(impostor.record(host_key=sshd.host_key_pub))
    with pytest.raises(HostKeyMismatch) as e:
        h.run("touch should-not-run")
    msg = str(e.value)
    assert sshd.host_key_fingerprint in msg and impostor.host_key_fingerprint in msg
    assert "CHANGED" in msg and "expected" in msg and "seen" in msg
    assert e.value.exit_code == 3
    assert e.value.expected_fingerprint == sshd.host_key_fingerprint
    assert e.value.seen_fingerprint == impostor.host_key_fingerprint
    # Refused before authentication: the impostor never saw our key.
    assert "Accepted publickey" not in impostor.log()


def test_a_changed_key_in_known_hosts_is_refused_even_with_trust_on_first_use(sshd: SshdServer, sshd_factory,
                                                                              tmp_path: Path):
    rebuilt = sshd_factory()
    known = tmp_path / "known_hosts"
    known.write_text(f"{rebuilt.host_name} {sshd.host_key_pub}\n")
    h = SSHHost(rebuilt.record(host_key=None, known_hosts=str(known)), trust_on_first_use=True)
    with pytest.raises(HostKeyMismatch) as e:
        h.connect()
    assert f"known_hosts file {known}" in str(e.value)
    assert known.read_text() == f"{rebuilt.host_name} {sshd.host_key_pub}\n", "a changed key is never recorded"


def test_known_hosts_file_plain_and_hashed(sshd: SshdServer, tmp_path: Path):
    known = tmp_path / "known_hosts"
    known.write_text(f"other.example ssh-ed25519 {generate_ed25519()[1].split()[1]}\n{sshd.known_hosts_line}\n")
    with SSHHost(sshd.record(host_key=None, known_hosts=str(known))) as h:
        assert h.run("echo ok").stdout == "ok\n"
    if shutil.which("ssh-keygen"):
        subprocess.run(["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True)
        assert sshd.host_name not in known.read_text()
        with SSHHost(sshd.record(host_key=None, known_hosts=str(known))) as h:
            assert h.run("echo ok").stdout == "ok\n"


def test_unknown_host_is_refused_without_trust_on_first_use(sshd: SshdServer, home: Path):
    h = SSHHost(sshd.record(host_key=None))
    with pytest.raises(HostKeyUnknown) as e:
        h.run("true")
    msg = str(e.value)
    assert sshd.host_key_fingerprint in msg and sshd.host_key_pub in msg
    assert str(home / ".ssh" / "known_hosts") in msg
    assert "--trust-on-first-use" in msg
    assert h.record.host_key is None


def test_trust_on_first_use_records_the_key(sshd: SshdServer, tmp_path: Path, sshd_factory):
    known = tmp_path / "new" / "known_hosts"
    record = sshd.record(host_key=None, known_hosts=str(known))
    said: list[str] = []
    with SSHHost(record, trust_on_first_use=True, on_line=said.append) as h:
        assert h.run("echo ok").ok
    assert record.host_key == sshd.host_key_pub
    assert known.read_text() == sshd.known_hosts_line + "\n"
    assert any(sshd.host_key_fingerprint in line for line in said)
    # From now on the key is pinned: the saved record reaches the host without TOFU, and nothing else passes.
    with SSHHost(record) as h:
        assert h.run("echo again").stdout == "again\n"
    other = sshd_factory()
    with pytest.raises(HostKeyMismatch):
        SSHHost(other.record(host_key=record.host_key)).connect()


def test_a_wrong_client_key_is_refused_by_the_host(sshd: SshdServer, tmp_path: Path):
    stranger = tmp_path / "stranger"
    stranger.write_text(generate_ed25519()[0])
    stranger.chmod(0o600)
    with pytest.raises(SSHAuthError) as e:
        SSHHost(sshd.record(key_path=str(stranger))).connect()
    assert "refused our key" in str(e.value) and "authorized_keys" in str(e.value)


def test_nothing_listening_is_a_clear_connect_error(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    record = SSHTarget().record_from({"host": "127.0.0.1", "ssh_port": port, "host_key": generate_ed25519()[1]})
    start = time.monotonic()
    with pytest.raises(TargetError) as e:
        SSHHost(record).connect()
    assert f"127.0.0.1:{port}" in str(e.value) and time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------- run


def test_output_streams_and_exit_codes(host: SSHHost):
    seen: list[tuple[float, str]] = []
    r = host.run("echo first; sleep 1; echo second >&2; exit 3", check=False,
                 on_line=lambda line: seen.append((time.monotonic(), line)))
    end = time.monotonic()
    assert [line for _, line in seen] == ["first", "second"]
    assert end - seen[0][0] > 0.7, "lines arrive while the command runs"
    assert (r.returncode, r.stdout, r.stderr) == (3, "first\n", "second\n")
    with pytest.raises(shell.CommandFailed):
        host.run("false")


def test_timeout_stops_the_remote_command_and_its_children(host: SSHHost, tmp_path: Path):
    pidfile = tmp_path / "remote-child.pid"
    start = time.monotonic()
    with pytest.raises(shell.CommandTimeout) as e:
        host.run(f"sleep 60 & echo $! > {pidfile}; echo started; sleep 60", timeout=3)
    assert time.monotonic() - start < 15
    assert "started" in str(e.value)
    child = int(pidfile.read_text())  # the "remote" host is this machine: look at the process itself
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert host.run("echo still usable").ok


def test_env_travels_on_stdin_never_on_a_command_line_or_in_logs(host: SSHHost, sshd: SshdServer, tmp_path: Path):
    token = "dop_v1_" + secrets.token_hex(32)
    log = tmp_path / "ssh-step.log"
    lines: list[str] = []
    r = host.run_script(
        'set -x\n[ "$DIGITALOCEAN_TOKEN" = "$COPY" ] && echo "token arrived"\n'
        # Every command line on the machine now: the bootstrap, its parents, sshd.
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done > "
        f"{tmp_path / 'cmdlines'}\n",
        env={"DIGITALOCEAN_TOKEN": token, "COPY": token}, on_line=lines.append, log=log,
    )
    assert "token arrived" in r.stdout
    everything = r.stdout + r.stderr + "\n".join(lines) + log.read_text() + sshd.log()
    assert token not in everything
    cmdlines = (tmp_path / "cmdlines").read_text()
    assert "s=$(cat)" in cmdlines and token not in cmdlines and "DIGITALOCEAN_TOKEN" not in cmdlines


def test_stdin_reads_do_not_eat_the_script(host: SSHHost):
    assert host.run_script("cat\necho after\n").stdout == "after\n"


def test_many_sessions_on_one_connection(host: SSHHost):
    def one(i: int) -> str:
        return host.run(f"echo {i}").stdout.strip()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(one, range(16)), key=int) == [str(i) for i in range(16)]
    assert host.connects == 1


# ---------------------------------------------------------------------------------------------- files


def test_put_get_round_trip_over_sftp(host: SSHHost, tmp_path: Path):
    payload = os.urandom(3 * 1024 * 1024 + 11)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    remote_dir = tmp_path / "remote" / "a" / "b"
    host.put(src, str(remote_dir / "c.bin"), mode=0o600)
    assert (remote_dir / "c.bin").read_bytes() == payload
    assert stat.S_IMODE((remote_dir / "c.bin").stat().st_mode) == 0o600
    host.put_text("API_KEY=x\n", str(remote_dir / "s.env"), mode=0o600)
    assert stat.S_IMODE((remote_dir / "s.env").stat().st_mode) == 0o600
    back = tmp_path / "back" / "c.bin"
    host.get(str(remote_dir / "c.bin"), back)
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert not back.with_name("c.bin.part").exists()


def test_home_relative_paths(host: SSHHost):
    name = f"mistral-lab-test-{secrets.token_hex(4)}.txt"
    try:
        host.put_text("in home\n", f"~/{name}")
        assert host.run(f"cat ~/{name}").stdout == "in home\n"
    finally:
        host.run(f"rm -f ~/{name}")


def test_get_of_a_missing_file_names_it(host: SSHHost, tmp_path: Path):
    with pytest.raises(TargetError) as e:
        host.get(str(tmp_path / "missing.txt"), tmp_path / "x")
    assert "missing.txt" in str(e.value)


# ---------------------------------------------------------------------------------------------- tunnel


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    payload = os.urandom(256 * 1024)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/stream":
            # Server-sent events, as an OpenAI-compatible server streams tokens.
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            for i in range(5):
                self.wfile.write(f"data: {i} {time.monotonic()}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
            return
        body = self.payload if self.path == "/big" else f"hello {self.path}".encode()
        time.sleep(0.1)  # keep requests in flight together
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web() -> Iterator[int]:
    """An HTTP server bound to 127.0.0.1 only, like an inference server on a droplet."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as r:
        return r.read()


def test_tunnel_carries_http_including_20_concurrent_requests(host: SSHHost, web: int):
    with host.forward(web) as tunnel:
        assert tunnel.local_port != web
        assert _get(tunnel.local_port, "/one") == b"hello /one"
        assert _get(tunnel.local_port, "/big") == _Handler.payload
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            bodies = list(pool.map(lambda i: _get(tunnel.local_port, f"/r{i}"), range(20)))
        assert bodies == [f"hello /r{i}".encode() for i in range(20)]
        assert tunnel.accepted == 22 and tunnel.refused == 0
        deadline = time.monotonic() + 5
        while tunnel.open_connections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tunnel.open_connections == 0, "finished connections are let go"
        port = tunnel.local_port
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_tunnel_streams_events_as_they_are_sent(host: SSHHost, web: int):
    with host.forward(web) as tunnel, urllib.request.urlopen(
            f"http://127.0.0.1:{tunnel.local_port}/stream", timeout=20) as r:
        arrivals = []
        for raw in r:
            if raw.startswith(b"data:"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 5
    assert arrivals[-1] - arrivals[0] > 0.6, "events must arrive one by one, not all at the end"


def test_tunnel_survives_a_refused_connection(host: SSHHost, web: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    said: list[str] = []
    host._on_line = said.append
    with host.forward(dead_port) as tunnel:
        with pytest.raises(OSError):
            _get(tunnel.local_port, "/")
        deadline = time.monotonic() + 5
        while not tunnel.refused and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tunnel.refused == 1 and any(str(dead_port) in line for line in said)
    with host.forward(web, 0) as tunnel:
        assert _get(tunnel.local_port, "/ok") == b"hello /ok"


# ---------------------------------------------------------------------------------------------- dropped connections


def test_an_idle_dropped_connection_is_reopened(sshd_factory, web: int):
    server = sshd_factory()
    with SSHHost(server.record()) as h:
        tunnel = h.forward(web)
        assert h.run("echo one").ok
        assert server.drop_connections() >= 1
        time.sleep(0.2)
        assert h.facts().hostname == socket.gethostname()
        assert h.connects == 2
        # The tunnel asks for a live transport per connection, so it works on the new one.
        assert _get(tunnel.local_port, "/after") == b"hello /after"


class _CountingProxy:
    """A TCP relay in front of sshd that counts the bytes the client sends: what keepalives look like on the wire."""

    def __init__(self, address: str, port: int):
        self.upstream = (address, port)
        self.client_bytes = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._socks: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while data := src.recv(65536):
                if count:
                    with self._lock:
                        self.client_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()


def test_an_idle_connection_sends_keepalives(sshd: SshdServer):
    """SSH keepalives every keepalive_s (so NATs and the host keep the connection) plus TCP keepalives (so a
    vanished peer is noticed); a connection with a long interval stays silent over the same idle time."""
    fast, slow = _CountingProxy(sshd.address, sshd.port), _CountingProxy(sshd.address, sshd.port)
    try:
        with SSHHost(sshd.record(port=fast.port), keepalive_s=1) as h1, \
                SSHHost(sshd.record(port=slow.port), keepalive_s=600) as h2:
            assert h1.run("true").ok and h2.run("true").ok
            sock = h1._alive().sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            # The last command's channel close is sent by paramiko's transport thread after run() returns: let
            # it pass (a loaded machine is slow to) before counting what an idle connection sends.
            time.sleep(1.0)
            before = (fast.client_bytes, slow.client_bytes)
            time.sleep(3.5)
            sent = (fast.client_bytes - before[0], slow.client_bytes - before[1])
            assert h1.run("echo still here").stdout == "still here\n"
    finally:
        fast.close()
        slow.close()
    assert sent[0] > 0 and sent[1] == 0, f"bytes sent while idle (keepalive 1 s, 600 s): {sent}"


def _drop_after(server: SshdServer, marker: Path, delay: float) -> threading.Thread:
    def drop() -> None:
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
        server.drop_connections()

    t = threading.Thread(target=drop, daemon=True)
    t.start()
    return t


def test_a_drop_during_a_retry_safe_step_runs_it_again(sshd_factory, tmp_path: Path):
    server = sshd_factory()
    runs = tmp_path / "runs"
    said: list[str] = []
    with SSHHost(server.record(), on_line=said.append) as h:
        h.connect()
        dropper = _drop_after(server, runs, 0.3)
        r = h.run(f"echo run >> {runs}; sleep 2; echo done", retry_safe=True, on_line=said.append)
        dropper.join()
    assert r.ok and r.stdout == "done\n"
    assert runs.read_text() == "run\nrun\n"
    assert any("running the step again" in line for line in said)


def test_a_drop_during_an_unsafe_step_is_reported_not_repeated(sshd_factory, tmp_path: Path):
    server = sshd_factory()
    runs = tmp_path / "runs"
    with SSHHost(server.record()) as h:
        h.connect()
        dropper = _drop_after(server, runs, 0.3)
        with pytest.raises(ConnectionLost) as e:
            h.run(f"echo run >> {runs}; sleep 2; echo done")
        dropper.join()
        assert "not marked safe to repeat" in str(e.value)
        assert runs.read_text() == "run\n"
        assert h.run("echo reconnected").stdout == "reconnected\n"


def test_a_restarted_sshd_is_reached_again(sshd_factory, tmp_path: Path):
    key_private = generate_ed25519()[0]
    server = sshd_factory(host_key_private=key_private)
    with SSHHost(server.record()) as h:
        assert h.run("echo before").ok
        port = server.port
        server.stop()
        # Same host key, same port: a reboot. Its client key is new, so let the record use it.
        again = sshd_factory(host_key_private=key_private, port=port)
        h.record.key_path = str(again.client_key_path)
        assert h.facts().cpus >= 1


# ---------------------------------------------------------------------------------------------- target, CLI


def test_ssh_target_provisions_reconnects_and_destroys(sshd: SshdServer):
    options = {"host": sshd.address, "ssh_port": sshd.port, "user": sshd.user, "key": str(sshd.client_key_path),
               "host_key": sshd.host_key_pub}
    target = get_target("ssh", options)
    said: list[str] = []
    host = target.provision(ProvisionRequest(deployment="d"), on_line=said.append)
    assert host.record.target == "ssh" and host.record.host_key == sshd.host_key_pub
    assert any(sshd.host_key_fingerprint in line for line in said)
    again = target.reconnect(host.record.model_copy())
    assert again.run("echo back").stdout == "back\n"
    target.destroy(host.record, on_line=said.append)
    assert host._client is None and again._client is None
    assert "keeps running" in said[-1]


def test_ssh_target_options_are_checked():
    t = SSHTarget()
    with pytest.raises(BadInput) as e:
        t.record_from({})
    assert e.value.field == "host"
    with pytest.raises(BadInput) as e:
        t.record_from({"host": "h", "ssh_port": "x"})
    assert e.value.field == "ssh_port"
    with pytest.raises(BadInput) as e:
        t.record_from({"host": "h", "host_key": "ssh-ed25519 not-base64!"})
    assert e.value.field == "host_key"
    with pytest.raises(BadInput):
        t.record_from({"host": "h", "host_key": generate_ed25519()[1], "known_hosts": "/x"})


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([CLI, "hosts", "check", *args], capture_output=True, text=True, env=env, timeout=60)


def _ssh_args(server: SshdServer) -> list[str]:
    return ["--host", server.address, "--port", str(server.port), "--user", server.user,
            "--key", str(server.client_key_path)]


def test_cli_hosts_check(sshd: SshdServer, sshd_factory, tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    ok = _cli(*_ssh_args(sshd), "--host-key", sshd.host_key_pub, "--json", home=home)
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["facts"]["hostname"] == socket.gethostname()
    assert data["host_key_fingerprint"] == f"ssh-ed25519 {sshd.host_key_fingerprint}"

    table = _cli(*_ssh_args(sshd), "--host-key", sshd.host_key_pub, home=home)
    assert table.returncode == 0 and "hostname" in table.stdout and sshd.host_key_fingerprint in table.stdout

    impostor = sshd_factory()
    changed = _cli(*_ssh_args(impostor), "--host-key", sshd.host_key_pub, home=home)
    assert changed.returncode == 3
    assert sshd.host_key_fingerprint in changed.stderr and impostor.host_key_fingerprint in changed.stderr

    unknown = _cli(*_ssh_args(sshd), home=home)
    assert unknown.returncode == 3 and "unknown" in unknown.stderr and sshd.host_key_fingerprint in unknown.stderr

    known = tmp_path / "kh"
    tofu = _cli(*_ssh_args(sshd), "--known-hosts", str(known), "--trust-on-first-use", home=home)
    assert tofu.returncode == 0, tofu.stderr
    assert known.read_text() == sshd.known_hosts_line + "\n"
    assert sshd.host_key_pub in tofu.stdout  # "pin with --host-key '...'"
    assert _cli(*_ssh_args(sshd), "--known-hosts", str(known), home=home).returncode == 0

    bad = _cli("--target", "ssh", home=home)
    assert bad.returncode == 2 and "host" in bad.stderr


def test_cli_hosts_check_local(tmp_path: Path):
    r = _cli("--target", "local", "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["facts"]["cpus"] == len(os.sched_getaffinity(0))

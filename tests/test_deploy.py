"""The whole flow on each target with the real llama.cpp build and the generated tiny model: deploy, query
through the tunnel, status/logs, deploy again (reused), teardown (nothing left).

local: this machine; ssh: a real sshd on 127.0.0.1 with a pinned host key; digitalocean: the fake DO API whose
droplet is a real sshd on 127.0.0.N logging in a separate user (so the host side runs as that user, in its home).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import fakedo
import mistral_lab as ml
import sshd
from fakedo.sshd_backend import SshdBackend, droplet_user
from llamacpp_fixtures import CACHE, LLAMACPP_KEY
from mistral_lab import state
from mistral_lab.cli import main
from mistral_lab.engines import llamacpp_build as lb
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.lifecycle.notebook import FALLBACK
from mistral_lab.planning import PlanRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
needs_sshd = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))


@pytest.fixture
def home(tmp_path, monkeypatch, llamacpp_bin) -> Path:
    """Own deployment records per test; `llamacpp_bin` makes sure the build is cached before any deploy."""
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _answers(base_url: str, api_key: str) -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", headers={"Authorization": f"Bearer {api_key}"},
                      json={"model": "tiny-random", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                      timeout=60)


def _gone(port: int, api_key: str) -> bool:
    """Nothing answers with the deployment's key there any more (the port may already serve someone else)."""
    try:
        return _answers(f"http://127.0.0.1:{port}/v1", api_key).status_code != 200
    except httpx.HTTPError:
        return True


def _check_up_then_teardown(name: str, lines: list[str]) -> ml.TeardownReport:
    dep = state.load(name)
    assert dep.status == "up" and dep.endpoint is not None
    steps = [t.step for t in dep.timings]
    assert steps[:2] == ["provision", "facts"] and "install llamacpp" in steps and steps[-1] == "start server"
    assert dep.versions["llama.cpp"] == "0c1e57098"
    assert dep.serve_command.startswith(str(Path(dep.tools["llama-bench"]).parent))
    assert f"--port {dep.endpoint.remote_port}" in dep.serve_command  # the command that ran, on the port it got
    assert "--api-key" not in dep.serve_command and dep.api_key() not in json.dumps(dep.model_dump())
    with ml.connect(name) as conn:
        r = _answers(conn.base_url, conn.api_key)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] >= 1
        assert _answers(conn.base_url, "wrong-key").status_code == 401
    assert "llama" in ml.logs(name).lower()
    remote_port, api_key = dep.endpoint.remote_port, dep.api_key()
    report = ml.teardown(name, say=lines.append)
    assert report.stopped and report.leftovers == []
    assert not state.exists(name)
    assert _gone(remote_port, api_key)
    return report


def test_local_deploy_query_reuse_teardown(home, capsys):
    lines: list[str] = []
    t0 = time.monotonic()
    dep = ml.deploy(PlanRequest(model="tiny-random", target="local", name="loc"), say=lines.append)
    first_s = time.monotonic() - t0
    assert dep.plan.engine == "llamacpp" and dep.host.extra["deployment"] == "loc"
    assert any("✔ start server" in line for line in lines)
    # A secret file is readable only by its owner.
    assert stat.S_IMODE((state.deployment_dir("loc") / "api_key").stat().st_mode) == 0o600

    # Deploying the same name again reuses what is up: no step runs.
    again: list[str] = []
    t0 = time.monotonic()
    dep2 = ml.deploy(PlanRequest(model="tiny-random", target="local", name="loc"), say=again.append)
    assert dep2.timings == dep.timings and any("already up" in line for line in again)
    print(f"first deploy {first_s:.1f}s, redeploy {time.monotonic() - t0:.2f}s")
    capsys.readouterr()

    # The CLI's status --json carries the endpoint's base_url; a different model under the same name is refused.
    main(["status", "loc", "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["healthy"] is True and info["endpoint"]["base_url"].startswith("http://127.0.0.1:")
    with pytest.raises(BadInput, match="already runs tiny-random"):
        ml.deploy(PlanRequest(model="ministral-3b", target="local", name="loc", engine="llamacpp"))

    _check_up_then_teardown("loc", lines)


def test_two_local_deployments_get_different_ports(home):
    a = ml.deploy(PlanRequest(model="tiny-random", target="local", name="one"), say=lambda _: None)
    b = ml.deploy(PlanRequest(model="tiny-random", target="local", name="two"), say=lambda _: None)
    try:
        assert a.endpoint.remote_port != b.endpoint.remote_port
        with pytest.raises(BadInput, match="2 deployments are up"):
            ml.find_or_deploy()
        assert ml.find_or_deploy("two") == (state.load("two"), False)
        with pytest.raises(BadInput, match="did you mean two"):
            ml.find_or_deploy("tow")
    finally:
        ml.teardown("one", say=lambda _: None)
        ml.teardown("two", say=lambda _: None)


def test_the_same_name_from_two_clients_on_one_host_keeps_both_up(home, tmp_path, monkeypatch):
    # Two MISTRAL_LAB_HOMEs (two users, two notebooks, two xdist workers) each deploy "shared" on this machine.
    first = ml.deploy(PlanRequest(model="tiny-random", target="local", name="shared"), say=lambda _: None)
    first_key = first.api_key()
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "other-home"))
    second = ml.deploy(PlanRequest(model="tiny-random", target="local", name="shared"), say=lambda _: None)
    try:
        assert second.service.root != first.service.root and second.endpoint.remote_port != first.endpoint.remote_port
        for dep, key in ((first, first_key), (second, second.api_key())):
            r = _answers(f"http://127.0.0.1:{dep.endpoint.remote_port}/v1", key)
            assert r.status_code == 200, r.text  # the second deploy did not stop or replace the first's server
    finally:
        ml.teardown("shared", say=lambda _: None)
        monkeypatch.setenv("MISTRAL_LAB_HOME", str(home))
    assert _answers(f"http://127.0.0.1:{first.endpoint.remote_port}/v1", first_key).status_code == 200
    ml.teardown("shared", say=lambda _: None)
    assert _gone(first.endpoint.remote_port, first_key)


def test_hf_token_reaches_the_server_only_when_the_server_downloads(home):
    token = "hf_test_not_a_real_token_123"
    with pytest.raises(BadInput, match="secrets are not parameters"):
        ml.deploy(PlanRequest(model="tiny-random", target="local", name="tok"), options={"hf_token": token})
    dep = ml.deploy(PlanRequest(model="tiny-random", target="local", name="tok"), secrets=ml.Secrets(hf_token=token),
                    say=lambda _: None)
    try:
        env_file = Path(dep.service.root) / "env"
        assert env_file.is_file() and dep.api_key() in env_file.read_text()  # the file the server reads
        assert token not in env_file.read_text()
        assert token not in dep.model_dump_json() and token not in (Path(dep.service.root) / "serve.sh").read_text()
    finally:
        ml.teardown("tok", say=lambda _: None)


def test_a_notebook_tears_down_only_what_it_deployed(home):
    dep = ml.deploy(PlanRequest(model="tiny-random", name="nb-own"), say=lambda _: None)
    assert dep.status == "up"
    again, made_again = ml.find_or_deploy(say=lambda _: None)  # the only one up: found, not made
    assert again.name == "nb-own" and not made_again
    assert ml.teardown_if_made("nb-own", made_again) is None and state.exists("nb-own")
    assert ml.teardown_if_made(None, True) is None
    report = ml.teardown_if_made("nb-own", made_again, force=True)
    assert report is not None and report.leftovers == [] and not state.exists("nb-own")


def test_a_server_that_dies_at_start_shows_its_log_and_leaves_a_record(home):
    # A flag llama-server does not know makes it exit at start: a real start failure, seen through its log.
    lines: list[str] = []
    with pytest.raises(EngineError) as e:
        ml.deploy(PlanRequest(model="tiny-random", target="local", name="bad"),
                      options={"extra_args": "--no-such-flag"}, say=lines.append, start_timeout=60)
    assert "exited during start" in str(e.value) and "--no-such-flag" in str(e.value)
    dep = state.load("bad")
    assert dep.status == "failed" and dep.error
    ml.teardown("bad", say=lines.append)
    assert not state.exists("bad")


def test_ensure_deploys_the_demo_when_nothing_is_up(home):
    dep, made = ml.find_or_deploy(say=lambda _: None)
    assert made and dep.name == FALLBACK == "tiny-local" and dep.status == "up"
    again, made_again = ml.find_or_deploy(say=lambda _: None)
    assert again.timings == dep.timings and not made_again  # reused
    ml.teardown(dep.name, say=lambda _: None)


@needs_sshd
def test_ssh_deploy_through_a_tunnel(home, sshd):
    lines: list[str] = []
    options = {"host": sshd.address, "ssh_port": sshd.port, "user": sshd.user, "key": str(sshd.client_key_path),
               "host_key": sshd.host_key_pub}
    dep = ml.deploy(PlanRequest(model="tiny-random", target="ssh", name="viassh"), options=options,
                        say=lines.append)
    assert dep.host.address == sshd.address and dep.host.host_key == sshd.host_key_pub
    with ml.connect("viassh") as conn:
        # The client talks to a forwarded local port, not the server's own.
        assert conn.tunnel.local_port != dep.endpoint.remote_port
    _check_up_then_teardown("viassh", lines)


@pytest.fixture
def shared_build_cache() -> Iterator[str]:
    """A copy of the cached llama.cpp build where the droplet's own user can read and write it, so the fake droplet
    finds the build like a second deploy on a real droplet does, instead of compiling for 8 minutes."""
    root = tempfile.mkdtemp(prefix="ml-droplet-cache-")
    os.chmod(root, 0o777)
    src = Path(lb.key_dir(LLAMACPP_KEY, str(CACHE)))
    dst = Path(lb.key_dir(LLAMACPP_KEY, root))
    dst.mkdir(parents=True)
    shutil.copytree(src / "bin", dst / "bin")
    shutil.copy(src / "build.json", dst / "build.json")
    for p in [Path(root), *Path(root).rglob("*")]:
        p.chmod(0o777 if p.is_dir() or os.access(p, os.X_OK) else 0o666)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _as(user: str, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True, timeout=60)


def _check_the_server_runs_with_nothing_it_does_not_need(dep) -> None:
    """The fake droplet is this machine: look at the server as the droplet's root would."""
    assert dep.service.user == dep.host.service_user == "mlserve" != dep.host.user
    root = Path(dep.service.root)
    started = int((root / "serve.pid").read_text())
    server = next(p for p in [started, *map(int, Path(f"/proc/{started}/task/{started}/children").read_text().split())]
                  if Path(f"/proc/{p}/exe").resolve().name == "llama-server")
    assert pwd.getpwuid(Path(f"/proc/{server}").stat().st_uid).pw_name == "mlserve"
    assert _as("mlserve", "sudo", "-n", "true").returncode != 0  # no sudo
    assert _as("mlserve", "cat", str(root / "env")).returncode == 0  # its own key
    login_home = Path(pwd.getpwnam(dep.host.user).pw_dir)
    for private in (login_home / ".ssh" / "authorized_keys", root.parent / "nothing-else-here",
                    *Path(dep.host.key_dir).glob("*")):
        assert _as("mlserve", "cat", str(private)).returncode != 0, private
    assert _as("mlserve", "ls", str(login_home)).returncode != 0


@needs_sshd
def test_digitalocean_deploy_on_the_fake_api(home, tmp_path, monkeypatch, shared_build_cache, capfd):
    token = "dop_v1_" + os.urandom(32).hex()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", token)
    monkeypatch.setenv("HF_TOKEN", "hf_" + os.urandom(17).hex())  # exported, as many users have it: no option
    with fakedo.serve(token, backend=SshdBackend(tmp_path / "machines"), polls_to_active=2) as fake:
        monkeypatch.setenv("DIGITALOCEAN_API_URL", fake.url)
        options = {"allow_from": "192.0.2.10/32", "ssh_port": fake.ssh_port, "ssh_user": droplet_user(),
                   "poll_interval": 0.1, "host_cache": shared_build_cache}
        lines: list[str] = []
        dep = ml.deploy(PlanRequest(model="tiny-random", target="digitalocean", name="dotest", engine="llamacpp",
                                        gpu="gpu-l40sx1-48gb"),
                            options=options, say=lines.append)
        assert any("/hour until torn down" in line for line in lines)
        assert dep.host.user == droplet_user() and dep.host.resource_ids.get("droplet")
        assert fake.leftovers()["droplets"]
        _check_the_server_runs_with_nothing_it_does_not_need(dep)
        report = _check_up_then_teardown("dotest", lines)
        assert report.destroyed and fake.leftovers() == {"droplets": [], "firewalls": [], "ssh_keys": []}
    out, err = capfd.readouterr()
    assert token not in out + err + "\n".join(lines)

"""Least privilege on every host: the server gets only what it needs (its environment, its user), parameter files
cannot send tokens or install code unnoticed, and user text is never markup."""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

import pytest

import mistral_lab as ml
from llamacpp_fixtures import CACHE
from mistral_lab import state
from mistral_lab.engines import get_engine, service
from mistral_lab.engines.base import Layout
from mistral_lab.errors import BadInput
from mistral_lab.hosts import do_api
from mistral_lab.hosts.local import LocalHost
from mistral_lab.lifecycle import services
from mistral_lab.options import TOKEN_HOSTS_ENV, HostOptions
from mistral_lab.planning import PlanRequest, make_plan, split


@pytest.fixture
def home(tmp_path, monkeypatch, llamacpp_bin) -> Path:
    monkeypatch.setenv("MISTRAL_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# ---------------------------------------------------------------------------------------------- 3, 4: the local server


@pytest.mark.slow
def test_the_local_server_gets_its_own_key_and_none_of_the_callers_secrets(home, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_" + "a" * 64)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "b" * 34)
    monkeypatch.setenv("SOMETHING_PRIVATE", "c" * 20)
    dep = ml.deploy(PlanRequest(model="tiny-random", name="lean"), say=lambda _: None)
    try:
        pid = int(Path(dep.service.pid_file).read_text())
        env = _environ(pid)
        assert Path(f"/proc/{pid}/exe").resolve().name == "llama-server"  # the server itself, not a wrapper
        assert env["LLAMA_API_KEY"] == dep.api_key()
        assert not {"DIGITALOCEAN_TOKEN", "HF_TOKEN", "SOMETHING_PRIVATE", "MISTRAL_LAB_HOME"} & set(env), sorted(env)
        # It runs as the user who deployed it, as a supervised process, and status says so.
        assert Path(f"/proc/{pid}").stat().st_uid == os.getuid()
        assert dep.service.kind == "process" and dep.service.user == getpass.getuser()
        assert ml.status("lean")["runs_as"] == f"{getpass.getuser()} (process)"
    finally:
        ml.teardown("lean", say=lambda _: None)


def test_this_machine_runs_a_process_as_the_invoking_user_unless_systemd_is_asked_for():
    assert services.mode_for(True, "auto", local=True) == "process"  # a system unit would need root or sudo
    assert services.mode_for(True, "auto", local=False) == "systemd"  # an SSH host or a droplet: systemd
    assert services.mode_for(True, "systemd", local=True) == "systemd"
    assert services.mode_for(False, "systemd", local=True) == "process"  # no systemd there: nothing else to do
    spec = service.ServiceSpec(name="n", model="m", engine="llamacpp", root="/srv/x", argv=["a"], port=1,
                               key_var="K", mode="systemd", user="alice")
    assert "\nUser=alice\n" in service.render_unit(spec)  # a unit never runs the server as root by default


# ---------------------------------------------------------------------------------------------- 7: parameter files


@pytest.mark.parametrize("path", ["srv/x", "/srv/x; rm -rf /", "/srv/$(id)", "/srv/x y", "/srv/../etc"])
def test_host_root_and_host_cache_are_plain_absolute_paths(path):
    for field in ("host_root", "host_cache"):
        with pytest.raises(BadInput) as e:
            split({field: path})
        assert e.value.field == field and "plain absolute path" in str(e.value)
    assert HostOptions.of({"host_root": "/srv/mistral-lab", "host_cache": "/var/cache/ml_1.0"}).host_root


def test_a_token_goes_to_another_api_host_only_with_the_environments_consent(monkeypatch):
    monkeypatch.delenv(TOKEN_HOSTS_ENV, raising=False)
    monkeypatch.delenv("DIGITALOCEAN_API_URL", raising=False)
    with pytest.raises(BadInput) as e:
        do_api.api_url("https://api.evil.example")
    assert e.value.field == "api_url" and f"export {TOKEN_HOSTS_ENV}=api.evil.example" in (e.value.fix or "")
    assert do_api.api_url("https://api.digitalocean.com") == "https://api.digitalocean.com"
    assert do_api.api_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"  # this machine
    monkeypatch.setenv(TOKEN_HOSTS_ENV, "api.evil.example")
    assert do_api.api_url("https://api.evil.example") == "https://api.evil.example"
    # The environment's own DIGITALOCEAN_API_URL is the user's choice already.
    monkeypatch.delenv(TOKEN_HOSTS_ENV)
    monkeypatch.setenv("DIGITALOCEAN_API_URL", "https://do-compatible.example")
    assert do_api.api_url() == "https://do-compatible.example"


def test_hf_token_goes_to_another_hub_only_with_the_environments_consent(home, monkeypatch):
    monkeypatch.delenv(TOKEN_HOSTS_ENV, raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "d" * 34)
    with pytest.raises(BadInput) as e:
        ml.deploy(PlanRequest(model="tiny-random", name="mirror"), options={"hf_endpoint": "https://hub.evil.example"},
                  say=lambda _: None)
    assert e.value.field == "hf_endpoint" and TOKEN_HOSTS_ENV in (e.value.fix or "")
    assert not state.exists("mirror")  # refused before anything was made


def test_options_that_build_or_install_other_code_are_said_out_loud(tmp_path):
    plan = make_plan(PlanRequest(model="tiny-random"))
    host = LocalHost(tmp_path)
    lines: list[str] = []
    engine = get_engine("llamacpp", {"pypi_url": "https://pypi.example/simple"})
    engine.install(host, plan, host.facts(), Layout(home=str(tmp_path), cache=str(CACHE), root=str(tmp_path / "d")),
                   lines.append)
    assert any("building llama.cpp from https://pypi.example/simple, as the options ask" in line for line in lines)
    quiet: list[str] = []
    get_engine("llamacpp").install(host, plan, host.facts(),
                                   Layout(home=str(tmp_path), cache=str(CACHE), root=str(tmp_path / "d")),
                                   quiet.append)
    assert not any("as the options ask" in line for line in quiet)


# ---------------------------------------------------------------------------------------------- 2: metadata


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and iptables need root (CI runs as root)")
def test_only_root_reaches_the_metadata_service_that_keeps_the_host_key(tmp_path):
    """The droplet's bootcmd, run in a network namespace with a stand-in metadata service on 169.254.169.254:
    root still reads user_data (cloud-init, the droplet agent), any other user (the model server) cannot."""
    import shlex
    import subprocess
    import time

    import yaml

    from mistral_lab.hosts.cloudinit import generate_ed25519, render_user_data

    host = generate_ed25519("h")
    text = render_user_data(hostname="x", user="mistral", host_key=host, service_user="mlserve",
                            authorized_key=generate_ed25519("c").public_openssh)
    (bootcmd,) = yaml.safe_load(text)["bootcmd"]
    (tmp_path / "user-data").write_text(text)
    tmp_path.chmod(0o755)
    ns = f"mlmeta{os.getpid()}"
    run = lambda *cmd: subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,  # noqa: E731
                                      timeout=30)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        assert run("sh", "-c", "ip link set lo up && ip addr add 169.254.169.254/32 dev lo").returncode == 0
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind",
                                   "169.254.169.254", "80", "--directory", str(tmp_path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fetch = ["curl", "-sS", "--max-time", "5", "http://169.254.169.254/user-data"]
        secret_line = host.private_openssh.splitlines()[1]
        for _ in range(50):
            if secret_line in run(*fetch).stdout:
                break
            time.sleep(0.1)
        assert secret_line in run("runuser", "-u", "nobody", "--", *fetch).stdout  # anyone, before the rule
        assert run(*shlex.split(" ".join(bootcmd[:2])), bootcmd[2]).returncode == 0
        as_root = run(*fetch)
        assert secret_line in as_root.stdout, as_root.stderr
        as_other = run("runuser", "-u", "nobody", "--", *fetch)
        assert as_other.returncode != 0, as_other.stdout  # refused or never answered: either way, nothing read
        assert secret_line not in as_other.stdout
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)

"""LocalHost: the same bootstrap, scripts and facts probe a droplet gets, run for real on this machine."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from mistral_lab import infra_files
from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts import facts as facts_mod
from mistral_lab.hosts import get_target, shell
from mistral_lab.hosts.base import Host, HostRecord, ProvisionRequest
from mistral_lab.hosts.local import LocalHost, LocalTarget


@pytest.fixture
def host(tmp_path: Path) -> LocalHost:
    return LocalHost(tmp_path / "work")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purpose.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


# ---------------------------------------------------------------------------------------------- run


def test_is_a_host_and_runs_in_its_workdir(host: LocalHost):
    assert isinstance(host, Host)
    r = host.run("pwd")
    assert r.ok and r.stdout.strip() == str(host.workdir)


def test_output_streams_line_by_line_while_the_command_runs(host: LocalHost):
    seen: list[tuple[float, str]] = []
    r = host.run("echo first; sleep 1; echo second >&2; printf 'no newline'",
                 on_line=lambda line: seen.append((time.monotonic(), line)))
    end = time.monotonic()
    assert [line for _, line in seen] == ["first", "second", "no newline"]
    assert end - seen[0][0] > 0.7, "the first line must arrive before the command ends"
    assert r.stdout == "first\nno newline" and r.stderr == "second\n"


def test_exit_codes_and_check(host: LocalHost):
    assert host.run("exit 3", check=False).returncode == 3
    with pytest.raises(shell.CommandFailed) as e:
        host.run("echo about to fail; echo why >&2; exit 4")
    assert e.value.result.returncode == 4
    assert "exited with 4" in str(e.value) and "why" in str(e.value)


def test_a_killed_command_reports_128_plus_the_signal(host: LocalHost):
    assert host.run("kill -9 $$", check=False).returncode == 137


def test_timeout_stops_the_command_and_its_children(host: LocalHost, tmp_path: Path):
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(shell.CommandTimeout) as e:
        host.run(f"sleep 60 & echo $! > {pidfile}; echo started; sleep 60", timeout=3)
    assert time.monotonic() - start < 15
    assert "within 3 s" in str(e.value) and "started" in str(e.value)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the background child must die with the command"


def test_a_background_server_that_redirects_its_output_does_not_hold_the_step(host: LocalHost, tmp_path: Path):
    pidfile = tmp_path / "server.pid"
    start = time.monotonic()
    host.run(f"setsid sleep 30 >/dev/null 2>&1 </dev/null & echo $! > {pidfile}", timeout=10)
    assert time.monotonic() - start < 5
    pid = int(pidfile.read_text())
    assert _alive(pid), "a server started in its own session outlives the step, as service.sh relies on"
    os.kill(pid, 9)


def test_stdin_reads_do_not_eat_the_script(host: LocalHost):
    r = host.run_script("set -euo pipefail\ncat\nread -r x || echo 'stdin is empty'\necho after\n")
    assert r.stdout == "stdin is empty\nafter\n"


def test_scripts_with_functions_heredocs_and_exit(host: LocalHost):
    script = """#!/usr/bin/env bash
set -euo pipefail
greet() { printf 'hello %s\\n' "$1"; }
greet world
cat <<'EOF'
a "quoted" $literal
EOF
exit 5
echo never
"""
    r = host.run_script(script, check=False)
    assert r.returncode == 5
    assert r.stdout == 'hello world\na "quoted" $literal\n'
    assert r.command == "script: greet() { printf 'hello %s\\n' \"$1\"; }"


def test_env_reaches_the_command_but_never_its_command_line_output_or_log(host: LocalHost, tmp_path: Path):
    token = "hf_" + secrets.token_hex(16)
    log = tmp_path / "logs" / "step.log"
    lines: list[str] = []
    r = host.run_script(
        'set -x\n[ "$HF_TOKEN" = "$EXPECTED_COPY" ] && echo "token arrived"\n'
        'echo "echoed: $HF_TOKEN"\n'
        "tr '\\0' ' ' < /proc/$$/cmdline; echo\n",
        env={"HF_TOKEN": token, "EXPECTED_COPY": token}, on_line=lines.append, log=log,
    )
    assert "token arrived" in r.stdout
    assert "echoed: ***" in r.stdout
    cmdline = r.stdout.splitlines()[-1]
    assert cmdline.startswith("bash -c s=$(cat)") and "HF_TOKEN" not in cmdline
    everything = r.stdout + r.stderr + "\n".join(lines) + log.read_text()
    assert token not in everything
    assert "+ echo 'echoed: ***'" in r.stderr  # set -x output is redacted too
    assert log.read_text().startswith("# ") and "# exit 0 after" in log.read_text()


def test_env_names_are_checked(host: LocalHost):
    with pytest.raises(BadInput) as e:
        host.run("true", env={"BAD-NAME": "x"})
    assert e.value.field == "env"


def test_a_truncated_script_is_never_run(tmp_path: Path):
    """What a dropped connection leaves: the bootstrap gets part of a script and end-of-file."""
    marker = shell.new_marker()
    target = tmp_path / "ran"
    whole = shell.framed(f"touch {target}\necho second line\n", marker)
    cut = whole[: whole.index(b"second")]
    p = subprocess.run(["bash", "-c", shell.bootstrap(marker)], input=cut, capture_output=True)
    assert p.returncode == shell.INCOMPLETE_EXIT and b"arrived incomplete" in p.stderr
    assert not target.exists()
    p = subprocess.run(["bash", "-c", shell.bootstrap(marker)], input=whole, capture_output=True)
    assert p.returncode == 0 and target.exists() and p.stdout == b"second line\n"


# ---------------------------------------------------------------------------------------------- files


def test_put_get_round_trip_with_mode_and_new_directories(host: LocalHost, tmp_path: Path):
    payload = os.urandom(3 * 1024 * 1024 + 7)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    host.put(src, "a/b/c.bin", mode=0o600)
    placed = host.workdir / "a/b/c.bin"
    assert placed.read_bytes() == payload
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    host.put_text("key=value\n", "/" + str(tmp_path / "abs" / "s.env").lstrip("/"), mode=0o640)
    assert stat.S_IMODE((tmp_path / "abs" / "s.env").stat().st_mode) == 0o640
    back = tmp_path / "back" / "c.bin"
    host.get("a/b/c.bin", back)
    assert back.read_bytes() == payload


def test_put_text_tightens_the_mode_of_an_existing_file(host: LocalHost):
    host.put_text("public\n", "f.txt")
    host.put_text("secret\n", "f.txt", mode=0o600)
    assert stat.S_IMODE((host.workdir / "f.txt").stat().st_mode) == 0o600
    assert (host.workdir / "f.txt").read_text() == "secret\n"


def test_get_of_a_missing_file_names_it(host: LocalHost, tmp_path: Path):
    with pytest.raises(TargetError) as e:
        host.get("nope.txt", tmp_path / "x")
    assert "nope.txt" in str(e.value)


# ---------------------------------------------------------------------------------------------- forward, target


def test_forward_is_the_same_port(host: LocalHost):
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with host.forward(port) as tunnel:
            assert tunnel.local_port == port
            socket.create_connection(("127.0.0.1", tunnel.local_port), timeout=2).close()
    with pytest.raises(BadInput):
        host.forward(8000, 9000)


def test_local_target_provisions_reconnects_and_destroys_nothing(tmp_path: Path):
    target = get_target("local", {"workdir": str(tmp_path / "w")})
    assert isinstance(target, LocalTarget)
    said: list[str] = []
    host = target.provision(ProvisionRequest(deployment="d"), on_line=said.append)
    assert host.workdir == tmp_path / "w" and said
    again = target.reconnect(host.record)
    assert again.workdir == host.workdir
    host.put_text("keep me\n", "kept.txt")
    target.destroy(host.record, on_line=said.append)
    assert (tmp_path / "w" / "kept.txt").read_text() == "keep me\n"
    with pytest.raises(BadInput):
        target.reconnect(HostRecord(target="ssh"))


# ---------------------------------------------------------------------------------------------- facts


def test_facts_of_this_machine(host: LocalHost):
    f = host.facts()
    assert f.hostname == socket.gethostname()
    assert f.cpus == len(os.sched_getaffinity(0))
    mem_kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:")).split()[1])
    assert f.ram_mib == mem_kb // 1024
    free_mib = shutil.disk_usage(host.workdir).free // (1024 * 1024)
    assert abs(f.disk_free_mib - free_mib) < 512
    assert f.systemd == Path("/run/systemd/system").is_dir()
    assert f.arch == os.uname().machine
    assert f.python and f.python.count(".") == 2
    if shutil.which("nvidia-smi") is None and shutil.which("rocm-smi") is None:
        assert f.gpus == [] and f.gpu_vendor is None and f.driver_version is None


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by make test's setup")
def test_facts_script_is_shellcheck_clean():
    path = infra_files.path(facts_mod.SCRIPT)
    r = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


H100_HEADER = """Mon Nov 24 10:00:00 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
"""


def test_facts_read_nvidia_gpus_from_nvidia_smi(tmp_path: Path):
    """nvidia-smi is faked (no GPU here); the probe script and the parser are the real ones."""
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "nvidia-smi", f"""
case "$*" in
  *--query-gpu=name,memory.total,compute_cap,driver_version*)
    echo "NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15"
    echo "NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15" ;;
  "") cat <<'EOF'
{H100_HEADER}EOF
  ;;
  *) exit 2 ;;
esac
""")
    host = LocalHost(tmp_path)
    r = host.run_script(facts_mod.script(), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    f = facts_mod.parse(r.stdout)
    assert [g.model_dump() for g in f.gpus] == [
        {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "vendor": "nvidia", "compute_capability": "9.0",
         "gfx": None}] * 2
    assert f.driver_version == "550.54.15" and f.cuda_version == "12.4" and f.gpu_vendor == "nvidia"


def test_facts_fall_back_when_nvidia_smi_lacks_compute_cap_or_fails(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "nvidia-smi", """
case "$*" in
  *compute_cap*) echo 'Field "compute_cap" is not a valid field to query.'; exit 2 ;;
  *--query-gpu=name,memory.total,driver_version*) echo "Tesla V100-SXM2-16GB, 16160 MiB, 470.82.01" ;;
  *) echo "| NVIDIA-SMI 470.82.01    Driver Version: 470.82.01    CUDA Version: 11.4     |" ;;
esac
""")
    host = LocalHost(tmp_path)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    f = facts_mod.parse(host.run_script(facts_mod.script(), env=env).stdout)
    assert [(g.name, g.memory_mib, g.compute_capability) for g in f.gpus] == [("Tesla V100-SXM2-16GB", 16160, None)]
    assert f.driver_version == "470.82.01" and f.cuda_version == "11.4"

    _fake_tool(bin_dir, "nvidia-smi", "echo 'NVIDIA-SMI has failed because it could not communicate with the "
                                      "NVIDIA driver.'; exit 9\n")
    raw = json.loads(host.run_script(facts_mod.script(), env=env).stdout)
    assert "could not communicate" in raw["nvidia_error"]
    assert facts_mod.parse(json.dumps(raw)).gpus == []


def test_facts_read_amd_gpus_from_rocm_smi(tmp_path: Path):
    rocm = {
        "card0": {"Card Series": "AMD Instinct MI300X OAM", "Card Model": "0x74a1", "GFX Version": "gfx942",
                  "VRAM Total Memory (B)": "205822885888", "VRAM Total Used Memory (B)": "296636416"},
        "system": {"Driver version": "6.8.5"},
    }
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "rocm-smi", f"cat <<'EOF'\n{json.dumps(rocm)}\nEOF\n")
    host = LocalHost(tmp_path)
    raw = json.loads(host.run_script(facts_mod.script(), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout)
    raw["rocm_version"] = "6.2.0-66"  # /opt/rocm/.info/version cannot be faked without root on a shared machine
    f = facts_mod.parse(json.dumps(raw))
    assert [g.model_dump() for g in f.gpus] == [
        {"name": "AMD Instinct MI300X OAM", "memory_mib": 196288, "vendor": "amd", "compute_capability": None,
         "gfx": "gfx942"}]
    assert f.driver_version == "6.8.5" and f.rocm_version == "6.2.0" and f.gpu_vendor == "amd"


def test_facts_script_runs_under_set_u_with_almost_no_tools(tmp_path: Path):
    """A bare host: no GPU tools, no python3, no nvcc, no timeout; the script must still print its JSON."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "tr", "awk", "df", "nproc", "uname", "hostname", "head", "tail", "cat"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    r = subprocess.run([str(bin_dir / "bash"), "-u", "-c", facts_mod.script()], capture_output=True, text=True,
                       env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    f = facts_mod.parse(r.stdout)
    assert f.gpus == [] and f.python is None and f.cpus >= 1 and f.ram_mib > 0
    # Off PATH, the script still looks where the CUDA toolkit installs itself.
    assert (f.cuda_version is not None) == os.access("/usr/local/cuda/bin/nvcc", os.X_OK)


def test_facts_json_escapes_awkward_text(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "nvidia-smi", r"""printf 'quote " back\\slash\ttab\x01ctl\n'; exit 3""" + "\n")
    host = LocalHost(tmp_path)
    raw = json.loads(host.run_script(facts_mod.script(), env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}).stdout)
    assert raw["nvidia_error"] == 'quote " back\\slash\ttabctl'


def test_parse_refuses_output_that_is_not_the_probe():
    with pytest.raises(TargetError):
        facts_mod.parse("bash: facts.sh: command not found\n")


def test_parsers_on_tool_output():
    rows = facts_mod.parse_nvidia("NVIDIA L40S, 46068, 8.9, 560.35.03\n\n", "name,memory.total,compute_cap,driver_version")
    assert [(r.gpu.name, r.gpu.memory_mib, r.gpu.compute_capability, r.driver) for r in rows] == [
        ("NVIDIA L40S", 46068, "8.9", "560.35.03")]
    assert facts_mod.cuda_from_nvcc("Cuda compilation tools, release 12.4, V12.4.131") == "12.4"
    assert facts_mod.cuda_from_nvidia_smi("no banner") is None
    assert facts_mod.parse_rocm("not json") == ([], None)

"""Choosing a llama.cpp build from host facts, and the build script's inputs, cache lookup and error messages.

The real build (minutes) is exercised by tests/test_llamacpp_serve.py through the llamacpp_bin fixture; here the
script runs against a prepared cache folder or with tools missing, which takes milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llamacpp_fixtures import build_script
from mistral_lab.engines import llamacpp_build as lb
from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import GPU, HostFacts


def _facts(*gpus: GPU) -> HostFacts:
    return HostFacts(
        hostname="h", os="linux", arch="x86_64", cpus=16, ram_mib=65536, disk_free_mib=10**6, gpus=list(gpus)
    )


H100 = GPU(name="NVIDIA H100 80GB HBM3", memory_mib=81559, vendor="nvidia", compute_capability="9.0")
A100 = GPU(name="NVIDIA A100-SXM4-80GB", memory_mib=81920, vendor="nvidia", compute_capability="8.0")
MI300X = GPU(name="AMD Instinct MI300X", memory_mib=196592, vendor="amd", gfx="gfx942:sramecc+:xnack-")


# ---- pure functions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cc", "arch"), [("9.0", "90"), ("8.9", "89"), ("8.0", "80"), ("12.0", "120"), ("7.5", "75")]
)
def test_cuda_arch_from_compute_capability(cc, arch):
    assert lb.cuda_arch(cc) == arch


def test_bad_compute_capability_names_the_field():
    with pytest.raises(BadInput) as e:
        lb.cuda_arch("sm90")
    assert e.value.field == "gpus[].compute_capability" and "nvidia-smi" in e.value.fix


def test_backend_from_host_facts():
    assert lb.pick_backend(_facts()) == ("cpu", "native")
    assert lb.pick_backend(_facts(H100, H100)) == ("cuda", "90")
    assert lb.pick_backend(_facts(A100, H100)) == ("cuda", "80;90")
    assert lb.pick_backend(_facts(MI300X)) == ("rocm", "gfx942")


def test_gpu_without_capability_asks_for_an_explicit_arch():
    gpu = GPU(name="mystery", memory_mib=1, vendor="nvidia")
    with pytest.raises(BadInput, match="no compute capability"):
        lb.pick_backend(_facts(gpu))
    assert lb.build_key(_facts(gpu), backend="cuda", arch="90").arch == "90"


def test_build_key_and_its_directory():
    key = lb.build_key(_facts(H100))
    assert key == lb.BuildKey(source="pypi", version="0.3.36", backend="cuda", arch="90")
    assert key.dirname == "0.3.36-cuda-90"
    assert (
        lb.bin_dir(key, "/home/llm/.cache/mistral-lab/")
        == "/home/llm/.cache/mistral-lab/llama.cpp/0.3.36-cuda-90/bin"
    )
    assert lb.build_key(_facts(A100, H100)).dirname == "0.3.36-cuda-80_90"
    assert lb.build_key(_facts(H100), backend="cpu").dirname == "0.3.36-cpu-native"
    assert lb.build_key(_facts(), arch="portable").arch == "portable"
    assert lb.build_key(_facts(), source="git", version="b7400").dirname == "b7400-cpu-native"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"version": "0.3.36; rm -rf /"}, "version"),
        ({"backend": "cpu", "arch": "90"}, "arch"),
        ({"backend": "cuda", "arch": "hopper"}, "arch"),
        ({"backend": "rocm", "arch": "mi300"}, "arch"),
        ({"backend": "cuda"}, "arch"),  # a CPU host cannot tell the CUDA arch
    ],
)
def test_build_key_refuses_bad_input_naming_the_field(kwargs, field):
    with pytest.raises(BadInput) as e:
        lb.build_key(_facts(), **kwargs)
    assert e.value.field == field and e.value.fix


def test_build_env_holds_what_the_script_reads():
    key = lb.build_key(_facts(H100))
    env = lb.build_env(key, cache="/c", jobs=16)
    assert env == {
        "SOURCE": "pypi",
        "VERSION": "0.3.36",
        "BACKEND": "cuda",
        "ARCH": "90",
        "CACHE": "/c",
        "TARGETS": "llama-server llama-bench llama-quantize",
        "KEEP_BUILD": "1",
        "JOBS": "16",
    }
    tar = lb.BuildKey(source="tarball", version="0.3.36", backend="cpu", arch="native")
    with pytest.raises(BadInput, match="tarball"):
        lb.build_env(tar)
    assert lb.build_env(tar, tarball="/tmp/src.tar.gz")["TARBALL"] == "/tmp/src.tar.gz"


def test_parse_script_output():
    out = "llamacpp-build: cached: x\nLLAMACPP_BIN=/c/llama.cpp/k/bin\n"
    assert lb.parse_bin_dir(out) == "/c/llama.cpp/k/bin" and lb.was_cached(out)
    with pytest.raises(ValueError, match="did not finish"):
        lb.parse_bin_dir("llamacpp-build: build: still compiling (30 s)\n")


# ---- the script ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by make test's setup")
def test_script_is_shellcheck_clean():
    r = subprocess.run(["shellcheck", str(build_script())], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _tools_without_compilers(tmp_path: Path) -> str:
    """A PATH holding the shell utilities the script needs but no cmake, make or compiler."""
    bin_dir = tmp_path / "tools"
    bin_dir.mkdir()
    for tool in ("bash", "mkdir", "nproc", "flock", "basename", "cat", "tar", "rm", "touch"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _run(tmp_path: Path, path: str | None = None, **env: str) -> subprocess.CompletedProcess:
    full = {
        "HOME": str(tmp_path),
        "PATH": path or os.environ["PATH"],
        "CACHE": str(tmp_path / "cache"),
        **env,
    }
    return subprocess.run(
        [shutil.which("bash") or "bash", str(build_script())],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fake_cached_build(cache: Path, dirname: str, targets=lb.DEFAULT_TARGETS, recipe: int | None = None) -> Path:
    dest = cache / "llama.cpp" / dirname
    (dest / "bin").mkdir(parents=True)
    for t in targets:
        (dest / "bin" / t).write_text("#!/bin/sh\n")
        (dest / "bin" / t).chmod(0o755)
    info = {"key": dirname} if recipe is None else {"key": dirname, "recipe": recipe, "arch": "native"}
    (dest / "build.json").write_text(json.dumps(info, indent=2))
    return dest / "bin"


def _script_recipe() -> int:
    m = re.search(r"^RECIPE=(\d+)$", build_script().read_text(), re.M)
    assert m, "the build script names its recipe"
    return int(m.group(1))


def test_cached_key_skips_the_build_and_needs_no_compiler(tmp_path):
    bin_dir = _fake_cached_build(tmp_path / "cache", "0.3.36-cpu-native", recipe=_script_recipe())
    r = _run(tmp_path, path=_tools_without_compilers(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "cached: 0.3.36-cpu-native already built" in r.stdout and "skipping the build" in r.stdout
    assert lb.parse_bin_dir(r.stdout) == str(bin_dir)


def test_a_cache_from_an_older_recipe_is_rebuilt(tmp_path):
    # e.g. recipe 1 built -march=native with AMX on VMs that cannot run it
    _fake_cached_build(tmp_path / "cache", "0.3.36-cpu-native", recipe=_script_recipe() - 1)
    r = _run(tmp_path, path=_tools_without_compilers(tmp_path))
    assert r.returncode == 2 and "skipping the build" not in r.stdout
    assert "cmake not found" in r.stderr


def test_uploaded_sdist_gets_the_pypi_key(tmp_path):
    bin_dir = _fake_cached_build(tmp_path / "cache", "0.3.36-cpu-portable", recipe=_script_recipe())
    tarball = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    tarball.write_bytes(b"")
    r = _run(tmp_path, SOURCE="tarball", TARBALL=str(tarball), ARCH="portable")
    assert r.returncode == 0, r.stderr
    assert lb.parse_bin_dir(r.stdout) == str(bin_dir)


def test_missing_target_is_built_and_missing_cmake_is_named(tmp_path):
    _fake_cached_build(tmp_path / "cache", "0.3.36-cpu-native", targets=("llama-server",))
    r = _run(tmp_path, path=_tools_without_compilers(tmp_path))
    assert r.returncode == 2
    assert "error: cmake not found on PATH" in r.stderr and "fix: apt-get install -y cmake" in r.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BACKEND": "metal"}, "BACKEND=metal is not one of cpu, cuda, rocm"),
        ({"BACKEND": "cuda"}, "BACKEND=cuda needs ARCH"),
        ({"BACKEND": "rocm", "ARCH": "90"}, "BACKEND=rocm needs ARCH"),
        ({"ARCH": "skylake"}, "ARCH=skylake is not native or portable"),
        ({"SOURCE": "git"}, "SOURCE=git needs VERSION"),
        ({"SOURCE": "tarball"}, "SOURCE=tarball needs TARBALL"),
        ({"SOURCE": "tarball", "TARBALL": "/nonexistent.tar.gz"}, "does not exist"),
        ({"SOURCE": "svn"}, "SOURCE=svn is not one of pypi, git, tarball"),
        ({"VERSION": "1.0 x"}, "unfit for a directory name"),
    ],
)
def test_bad_inputs_exit_2_with_a_fix(tmp_path, env, message):
    r = _run(tmp_path, **env)
    assert r.returncode == 2
    assert message in r.stderr and "fix:" in r.stderr
    assert not (tmp_path / "cache" / "llama.cpp" / "src").exists() or not any(
        (tmp_path / "cache" / "llama.cpp" / "src").iterdir()
    ), "nothing is downloaded for a bad request"


@pytest.mark.skipif(
    Path("/opt/rocm/bin/hipconfig").exists() or shutil.which("hipconfig") is not None,
    reason="this host has ROCm: the script would start a real HIP build",
)
def test_rocm_without_hip_sdk_is_named(tmp_path):
    tools = Path(_tools_without_compilers(tmp_path))
    for tool in ("cmake", "make", "cc", "c++", "gcc", "g++"):
        found = shutil.which(tool)
        if found:
            (tools / tool).symlink_to(found)
    r = _run(tmp_path, path=str(tools), BACKEND="rocm", ARCH="gfx942")
    assert r.returncode == 2
    assert "hipconfig not found on PATH" in r.stderr and "rocm-hip-sdk" in r.stderr

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

from llamacpp_fixtures import CACHE, build_script
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


# ---- CUDA: toolkit checks (a fake nvcc and nvidia-smi; milliseconds) ------------------------------------------

CUDA_CODES = {
    "12.9": "sm_50 sm_52 sm_53 sm_60 sm_61 sm_62 sm_70 sm_72 sm_75 sm_80 sm_86 sm_87 sm_89 sm_90 sm_100 sm_120",
    "13.0": "sm_75 sm_80 sm_86 sm_87 sm_88 sm_89 sm_90 sm_100 sm_110 sm_103 sm_120 sm_121",
}


def _fake_cuda(tmp_path: Path, release: str, driver_cuda: str | None = None) -> Path:
    """A folder with an nvcc that answers --version and --list-gpu-code as CUDA `release` does, and optionally
    an nvidia-smi whose header names the driver's CUDA version."""
    d = tmp_path / f"cuda-{release}"
    d.mkdir()
    codes = CUDA_CODES[release].replace(" ", "\\n")
    (d / "nvcc").write_text(
        "#!/bin/sh\ncase \"$1\" in\n"
        f"  --version) echo 'Cuda compilation tools, release {release}, V{release}.88' ;;\n"
        f"  --list-gpu-code) printf '{codes}\\n' ;;\n"
        "  *) exit 1 ;;\nesac\n"
    )
    if driver_cuda:
        (d / "nvidia-smi").write_text(
            f"#!/bin/sh\necho '| NVIDIA-SMI 575.51.03   Driver Version: 575.51.03   CUDA Version: {driver_cuda}     |'\n"
        )
    for f in d.iterdir():
        f.chmod(0o755)
    return d


def _cuda_path(tmp_path: Path, cuda: Path, compilers: bool) -> str:
    """`cuda` first, then the script's shell tools (with the text tools that read nvcc's answers), and with
    `compilers` cmake, make and a C/C++ compiler too."""
    tools = Path(_tools_without_compilers(tmp_path))
    extra = ("sed", "head", "tr") + (("cmake", "make", "cc", "c++", "gcc", "g++") if compilers else ())
    for tool in extra:
        found = shutil.which(tool)
        if found and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    return f"{cuda}:{tools}"


@pytest.mark.parametrize(("release", "arch", "ok"), [("13.0", "61", False), ("12.9", "61", True),
                                                     ("13.0", "89;90", True), ("12.9", "120", True)])
def test_cuda_arch_is_checked_against_what_nvcc_lists(tmp_path, release, arch, ok):
    # CUDA 13 dropped sm_50..sm_72: asked for sm_61 it stops before configuring, naming the toolkit that can
    cuda = _fake_cuda(tmp_path, release)
    tarball = tmp_path / "llama_cpp_python-0.3.36.tar.gz"
    tarball.write_bytes(b"")  # not an archive: a run that passes the checks stops at extracting it
    r = _run(tmp_path, path=_cuda_path(tmp_path, cuda, compilers=True), BACKEND="cuda", ARCH=arch,
             SOURCE="tarball", TARBALL=str(tarball))
    if ok:
        assert "cannot build" not in r.stderr and "source: extracting" in r.stdout + r.stderr
    else:
        assert r.returncode == 2
        assert f"CUDA {release} cannot build sm_{arch}" in r.stderr and "CUDA 12.x for sm_50..sm_72" in r.stderr


def test_a_toolkit_newer_than_the_driver_is_refused(tmp_path):
    cuda = _fake_cuda(tmp_path, "13.0", driver_cuda="12.9")
    r = _run(tmp_path, path=_cuda_path(tmp_path, cuda, compilers=True), BACKEND="cuda", ARCH="90")
    assert r.returncode == 2
    assert "the driver runs CUDA up to 12.9, nvcc is CUDA 13.0" in r.stderr and "cuda-toolkit-12-x" in r.stderr


def _fake_cuda_cache(cache: Path, cuda_version: str) -> Path:
    bin_dir = _fake_cached_build(cache, "0.3.36-cuda-90", recipe=_script_recipe())
    info = json.loads((bin_dir.parent / "build.json").read_text())
    info["cuda_version"] = cuda_version
    (bin_dir.parent / "build.json").write_text(json.dumps(info, indent=2))
    return bin_dir


def test_a_cuda_cache_is_used_with_the_toolkit_that_built_it(tmp_path):
    bin_dir = _fake_cuda_cache(tmp_path / "cache", "13.0")
    cuda = _fake_cuda(tmp_path, "13.0")
    r = _run(tmp_path, path=_cuda_path(tmp_path, cuda, compilers=False), BACKEND="cuda", ARCH="90")
    assert r.returncode == 0, r.stderr
    assert lb.parse_bin_dir(r.stdout) == str(bin_dir) and lb.was_cached(r.stdout)


def test_a_cuda_cache_from_another_toolkit_is_rebuilt(tmp_path):
    # its programs would look for libcudart.so.12 on a host that now has 13
    _fake_cuda_cache(tmp_path / "cache", "12.9")
    cuda = _fake_cuda(tmp_path, "13.0")
    r = _run(tmp_path, path=_cuda_path(tmp_path, cuda, compilers=False), BACKEND="cuda", ARCH="90")
    assert "built with another CUDA toolkit than nvcc 13.0" in r.stdout and not lb.was_cached(r.stdout)
    assert r.returncode == 2 and "cmake not found" in r.stderr


# ---- CUDA: the cached build's recipe (present only where benchmarks/build_cuda.py ran) -------------------------

CUDA_BUILDS = sorted((CACHE / "llama.cpp").glob("*-cuda-*/build.json"))


def fatbin_archs(data: bytes) -> set[tuple[str, int]]:
    """(kind, sm) of every entry in the CUDA fat binaries of a shared library: ("elf", 90) is sm_90 machine code,
    ("ptx", 90) compute_90 PTX. Layout: a container header (magic 0xBA55ED50, u16 version, u16 header size,
    u64 payload size), then entries (u16 kind 1=PTX 2=ELF, u16, u32 header size, u64 payload size, ..., u32 arch
    at offset 28)."""
    import struct

    found: set[tuple[str, int]] = set()
    start = data.find(b"\x50\xed\x55\xba")
    while start != -1:
        _, _, hsize, payload = struct.unpack_from("<IHHQ", data, start)
        pos, end = start + hsize, start + hsize + payload
        while pos + 32 <= end:
            kind, _, ehsize, esize = struct.unpack_from("<HHIQ", data, pos)
            (arch,) = struct.unpack_from("<I", data, pos + 28)
            found.add(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            pos += ehsize + esize
        start = data.find(b"\x50\xed\x55\xba", max(end, start + 1))
    return found


@pytest.mark.skipif(not CUDA_BUILDS, reason="no CUDA build in this machine's llama.cpp cache: "
                    "benchmarks/build_cuda.py makes one (hours on 2 cores), then this checks its recipe")
@pytest.mark.parametrize("build_json", CUDA_BUILDS, ids=[p.parent.name for p in CUDA_BUILDS])
def test_cached_cuda_build_has_the_scripts_recipe(build_json):
    info = json.loads(build_json.read_text())
    archs = info["arch"].split(";")
    assert info["recipe"] == _script_recipe() and info["backend"] == "cuda"
    flags = info["cmake_flags"]
    for flag in ("-DGGML_CUDA=ON", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF", "-DGGML_CUDA_NCCL=OFF",
                 "-DCMAKE_INSTALL_RPATH=$ORIGIN",
                 "-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(f"{a}-real" for a in archs)):
        assert flag in flags
    assert set(lb.DEFAULT_TARGETS) <= set(info["targets"])
    bin_dir = build_json.parent / "bin"
    cuda_lib = next(bin_dir / n for n in info["libraries"] if n.startswith("libggml-cuda.so.")
                    and not (bin_dir / n).is_symlink())
    major = info["cuda_version"].split(".")[0]
    dyn = subprocess.run(["readelf", "-d", str(cuda_lib)], capture_output=True, text=True, check=True).stdout
    assert f"[libcudart.so.{major}]" in dyn and "[libcublas.so." in dyn and "$ORIGIN" in dyn
    server = subprocess.run(["readelf", "-d", str(bin_dir / "llama-server")], capture_output=True, text=True).stdout
    assert "[$ORIGIN" in server and "[libllama" in server  # the program is a stub over libllama-server-impl.so
    # machine code for exactly the asked architectures, no PTX to JIT
    assert fatbin_archs(cuda_lib.read_bytes()) == {("elf", int(a)) for a in archs}

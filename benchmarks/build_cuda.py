"""llama.cpp compiled with CUDA on this machine (no GPU needed to compile), timed per target architecture.

DigitalOcean's NVIDIA GPUs are two CUDA architectures (lib/mistral_lab/hardware.py): compute capability 8.9
(RTX 4000 Ada, RTX 6000 Ada, L40S) and 9.0 (H100, H200). Each build runs the real build script
(infra/llamacpp-build.sh, BACKEND=cuda) into the ordinary cache, so it leaves the build that the GPU run packs
(benchmarks/gpu/pack.sh) and that tests/test_llamacpp_build.py checks when present.

The machine is shared and compiling is CPU-heavy, so every build runs under `nice -n 19`, and each record holds
both the wall time and the CPU seconds (user + sys of the whole process tree, from wait4's rusage, which counts
every descendant that was waited for: cmake, ninja, nvcc, cicc, ptxas, gcc), with the load average and the CPU
seconds that other processes took meanwhile. Wall time depends on the neighbours; CPU seconds much less.

This machine's CUDA toolkit was assembled from PyPI wheels and has neither cuBLAS nor the driver stub
(lib64/stubs/libcuda.so) that a full toolkit (DigitalOcean's images, `apt-get install cuda-toolkit`) has. Where
they are missing, cuBLAS comes from the nvidia-cublas wheel of the same CUDA release and a stub libcuda.so is
compiled here (it only satisfies the linker; the driver's libcuda.so.1 is the one loaded at run time); the
script receives their paths through CMAKE_EXTRA, recorded in build.json.

    .venv/bin/python benchmarks/build_cuda.py --arch 90                 # the build the GPU run packs
    .venv/bin/python benchmarks/build_cuda.py --arch 89 --arch '89;90'  # per architecture and both
    .venv/bin/python benchmarks/build_cuda.py --arch 90 --rebuild       # time it again from scratch
    .venv/bin/python benchmarks/build_cuda.py --sample                  # per-arch cost from sampled kernels
    .venv/bin/python benchmarks/build_cuda.py --configure-with CMAKE    # the recipe's configure, another cmake

A full build takes hours here, so besides full builds the script can time a stratified sample of the CUDA
translation units (one or more of each kind: plain ops, flash-attention tile/MMA/vector instances, MMQ and MMF
instances) with the exact nvcc command lines of the sm_90 build, recompiled for 89, 90 and 89;90; the counts of
each kind weight the sample, which gives the CPU-seconds ratio between architectures (the kernels are what an
architecture changes; the host C++ is the same). It needs the sm_90 build's cmake tree (KEEP_BUILD=1).

Writes benchmarks/results/build_cuda.json, keeping the records of architectures not built in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "lib"))  # after PYTHONPATH and an installed copy

from mistral_lab import hardware  # noqa: E402
from mistral_lab.engines import llamacpp_build as lb  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "build_cuda.json"
FAILED_OUT = Path(tempfile.gettempdir()) / "build_cuda_failed.json"
SCRIPT = ROOT / "infra" / lb.SCRIPT
CACHE = Path(os.environ.get("MISTRAL_LAB_CACHE", Path.home() / ".cache" / "mistral-lab"))
SAMPLE_S = 15.0
# The driver API calls ggml-cuda makes (VMM pool, error strings); the source is scanned for more when present.
DRIVER_CALLS = ("cuDeviceGet", "cuDeviceGetAttribute", "cuGetErrorString", "cuMemAddressFree", "cuMemAddressReserve",
                "cuMemCreate", "cuMemGetAllocationGranularity", "cuMemMap", "cuMemRelease", "cuMemSetAccess",
                "cuMemUnmap")


def do_archs() -> dict[str, list[str]]:
    """CMAKE arch -> the DigitalOcean NVIDIA GPUs that need it, from hardware.py's compute capabilities."""
    out: dict[str, list[str]] = {}
    for gpu in hardware.GPUS.values():
        if gpu.vendor == "nvidia" and gpu.arch:
            out.setdefault(lb.cuda_arch(gpu.arch), []).append(gpu.name)
    return dict(sorted(out.items()))


# ---- the toolkit --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolkit:
    release: str  # "13.0"
    root: Path  # the folder nvcc's bin/ sits in
    has_cublas: bool
    has_driver_stub: bool


def nvcc_release(text: str) -> str:
    m = re.search(r"release (\d+\.\d+)", text)
    if not m:
        raise SystemExit(f"cannot read the CUDA release from nvcc --version:\n{text}")
    return m.group(1)


def find_toolkit() -> Toolkit:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    release = nvcc_release(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout)
    # nvcc may be a wrapper script (exec /usr/local/cuda-13.0/bin/nvcc); the toolkit is where that points.
    real = Path(nvcc).resolve()
    m = re.search(r"exec\s+(\S+/bin/nvcc)", real.read_text(errors="replace")) if real.stat().st_size < 4096 else None
    root = Path(m.group(1)).resolve().parents[1] if m else real.parents[1]
    libs = [root / "lib64", root / "targets" / "x86_64-linux" / "lib"]
    return Toolkit(
        release=release,
        root=root,
        has_cublas=any(any(d.glob("libcublas.so*")) for d in libs if d.is_dir()),
        has_driver_stub=any((d / "stubs" / "libcuda.so").exists() for d in libs),
    )


def cublas_requirement(release: str) -> str:
    """The wheel with cuBLAS of the toolkit's CUDA release: 13.x ships as nvidia-cublas, 12.x as -cu12."""
    major, minor = release.split(".")
    name = "nvidia-cublas" if int(major) >= 13 else f"nvidia-cublas-cu{major}"
    return f"{name}~={major}.{minor}.0"


def fetch_cublas(release: str, dest: Path) -> Path:
    """cuBLAS headers and libraries of `release` under dest/{include,lib}, from PyPI; cached."""
    if (dest / "lib" / "libcublas.so").exists():
        return dest
    wheels = dest / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux2014_x86_64",
                    "-d", str(wheels), cublas_requirement(release)], check=True)
    wheel = sorted(wheels.glob("nvidia_cublas*.whl"))[-1]
    for sub in ("include", "lib"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            m = re.match(r"nvidia/(?:cu\d+/|cublas/)?(include|lib)/([^/]+)$", name)
            if m:
                with z.open(name) as src, open(dest / m.group(1) / m.group(2), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
    # The wheel holds only the versioned sonames; the linker looks for the plain names.
    for lib in ("cublas", "cublasLt"):
        versioned = sorted((dest / "lib").glob(f"lib{lib}.so.*"))[0]
        (dest / "lib" / f"lib{lib}.so").unlink(missing_ok=True)
        (dest / "lib" / f"lib{lib}.so").symlink_to(versioned.name)
    return dest


def driver_calls(cache: Path) -> list[str]:
    """The cu* driver functions ggml-cuda calls: the known list plus any the extracted source adds."""
    found = set(DRIVER_CALLS)
    for src in (cache / "llama.cpp" / "src").glob("*/*/vendor/llama.cpp/ggml/src/ggml-cuda"):
        for f in [*src.glob("*.cu"), *src.glob("*.cuh"), *src.glob("vendors/*.h")]:
            found |= set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(", f.read_text(errors="replace")))
    return sorted(found - {"cuBLAS"})


def make_driver_stub(toolkit: Toolkit, names: list[str], dest: Path) -> Path:
    """A libcuda.so (soname libcuda.so.1) defining `names` for the linker, as the toolkit's stubs/ folder does,
    and link/libcuda.so.1 beside it: the programs linked against libggml-cuda.so make the linker look for its
    NEEDED libcuda.so.1, which a build machine without a driver lacks. That name sits in its own folder, handed to
    the linker alone (-rpath-link), so no program finds the stub at run time through its RUNPATH.

    cuda.h maps some names to versioned symbols (cuMemGetInfo -> cuMemGetInfo_v2), so the symbols are read off
    an object that references each name through cuda.h, not taken from the names themselves."""
    dest.mkdir(parents=True, exist_ok=True)
    stub = dest / "libcuda.so"
    with tempfile.TemporaryDirectory() as tmp:
        refs = Path(tmp, "refs.c")
        refs.write_text("#include <cuda.h>\nvoid *refs[] = {" + ", ".join(f"(void *){n}" for n in names) + "};\n")
        subprocess.run(["cc", "-c", f"-I{toolkit.root / 'include'}", str(refs), "-o", f"{tmp}/refs.o"], check=True)
        nm = subprocess.run(["nm", "-u", f"{tmp}/refs.o"], capture_output=True, text=True, check=True).stdout
        symbols = sorted(line.split()[-1] for line in nm.splitlines() if line.strip())
        body = Path(tmp, "stub.c")
        body.write_text("".join(f"int {s}(void) {{ return 999; }}\n" for s in symbols))
        subprocess.run(["cc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", str(body), "-o", str(stub)],
                       check=True)
    (dest / "link").mkdir(exist_ok=True)
    (dest / "link" / "libcuda.so.1").unlink(missing_ok=True)
    (dest / "link" / "libcuda.so.1").symlink_to("../libcuda.so")
    return stub


def cmake_extra(toolkit: Toolkit, cache: Path) -> list[str]:
    """Paths for what the toolkit lacks; empty for a full toolkit."""
    extra_root = cache / "cuda-extra" / toolkit.release
    args: list[str] = []
    if not toolkit.has_cublas:
        cublas = fetch_cublas(toolkit.release, extra_root)
        args += [f"-DCUDA_cublas_LIBRARY={cublas}/lib/libcublas.so",
                 f"-DCUDA_cublasLt_LIBRARY={cublas}/lib/libcublasLt.so",
                 f"-DCMAKE_CUDA_FLAGS=-I{cublas}/include"]
    if not toolkit.has_driver_stub:
        stub = make_driver_stub(toolkit, driver_calls(cache), extra_root / "stubs")
        link = f"-Wl,-rpath-link,{stub.parent / 'link'}"
        args += [f"-DCUDA_cuda_driver_LIBRARY={stub}", f"-DCMAKE_EXE_LINKER_FLAGS={link}",
                 f"-DCMAKE_SHARED_LINKER_FLAGS={link}"]
    return args


# ---- measuring a build --------------------------------------------------------------------------------------


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


@dataclass
class Measured:
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    load_at_start: tuple[float, float, float]
    load_mean_1m: float
    load_max_1m: float
    machine_busy_core_s: float  # every process on the machine, ours included, from /proc/stat
    others_core_s: float  # machine_busy_core_s less our user+sys: what the neighbours took meanwhile
    stdout_tail: str

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def measure(argv: list[str], env: dict[str, str]) -> Measured:
    """Run argv and account for its whole process tree's CPU time; sample the load average while it runs."""
    hz = os.sysconf("SC_CLK_TCK")
    start_load = os.getloadavg()
    busy0, _ = cpu_jiffies()
    samples: list[float] = [start_load[0]]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            samples.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        done.set()
        out.seek(0)
        tail = out.read()[-4000:]
    busy1, _ = cpu_jiffies()
    machine = (busy1 - busy0) / hz
    return Measured(
        returncode=proc.returncode,
        wall_s=round(wall, 1),
        user_s=round(usage.ru_utime, 1),
        sys_s=round(usage.ru_stime, 1),
        load_at_start=tuple(round(x, 2) for x in start_load),
        load_mean_1m=round(sum(samples) / len(samples), 2),
        load_max_1m=round(max(samples), 2),
        machine_busy_core_s=round(machine, 1),
        others_core_s=round(max(0.0, machine - usage.ru_utime - usage.ru_stime), 1),
        stdout_tail=tail,
    )


def build_record(arch: str, key: lb.BuildKey, m: Measured, cache: Path) -> dict:
    info = json.loads(Path(lb.key_dir(key, str(cache)), "build.json").read_text())
    bin_dir = Path(lb.bin_dir(key, str(cache)))
    sizes = {p.name: p.stat().st_size for p in sorted(bin_dir.iterdir()) if p.is_file() and not p.is_symlink()}
    return {
        "arch": arch,
        "gpus": [g for a in arch.split(";") for g in do_archs().get(a, [])],
        "key": key.dirname,
        "wall_s": m.wall_s,
        "cpu_s": round(m.cpu_s, 1),
        "user_s": m.user_s,
        "sys_s": m.sys_s,
        "cpu_s_per_wall_s": round(m.cpu_s / m.wall_s, 2) if m.wall_s else None,
        "load_avg_at_start": m.load_at_start,
        "load_avg_1m_mean": m.load_mean_1m,
        "load_avg_1m_max": m.load_max_1m,
        "machine_busy_core_s": m.machine_busy_core_s,
        "others_core_s": m.others_core_s,
        "nice": 19,
        "jobs": info.get("jobs"),
        "libggml_cuda_mib": round(sizes.get(_cuda_lib(bin_dir), 0) / 2**20, 1),
        "bin_mib": round(sum(sizes.values()) / 2**20, 1),
        "build_json": info,
    }


def _cuda_lib(bin_dir: Path) -> str:
    libs = sorted(p.name for p in bin_dir.glob("libggml-cuda.so*") if not p.is_symlink())
    return libs[0] if libs else ""


def machine_facts(toolkit: Toolkit) -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    gcc = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    cmake = subprocess.run(["cmake", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1), "os": platform.platform(),
            "cuda_toolkit": toolkit.release, "host_compiler": gcc, "cmake": cmake,
            "toolkit_supplemented": {"cublas_from_wheel": not toolkit.has_cublas,
                                     "driver_stub_compiled_here": not toolkit.has_driver_stub}}


def run_one(arch: str, toolkit: Toolkit, extra: list[str], cache: Path, rebuild: bool, jobs: int,
            resume: bool = False) -> dict | None:
    key = lb.BuildKey(source=lb.DEFAULT_SOURCE, version=lb.DEFAULT_VERSION, backend="cuda", arch=arch)
    kdir = Path(lb.key_dir(key, str(cache)))
    if (kdir / "build.json").exists() and not rebuild:
        print(f"build_cuda: {key.dirname} is cached; --rebuild times it again", flush=True)
        return None
    if not resume:
        shutil.rmtree(kdir, ignore_errors=True)  # a timed build starts from nothing (the source stays cached)
    env = {**os.environ, **lb.build_env(key, cache=str(cache), jobs=jobs), "CMAKE_EXTRA": " ".join(extra)}
    print(f"build_cuda: building {key.dirname} (nice 19, {jobs} jobs{', resuming the kept tree' if resume else ''})",
          flush=True)
    m = measure(["nice", "-n", "19", "bash", str(SCRIPT)], env)
    if m.returncode != 0:
        # A failed build's time is still a measurement of the steps it got through: keep it beside the log tail.
        failed = {k: v for k, v in asdict(m).items() if k != "stdout_tail"}
        FAILED_OUT.write_text(json.dumps({"arch": arch, **failed, "tail": m.stdout_tail[-2000:]}, indent=2))
        raise SystemExit(f"build of {arch} failed ({m.returncode}, {m.wall_s:.0f} s wall, {m.cpu_s:.0f} CPU s; "
                         f"{FAILED_OUT}):\n{m.stdout_tail}")
    rec = build_record(arch, key, m, cache)
    rec["resumed"] = resume
    print(f"build_cuda: {arch}: {m.wall_s:.0f} s wall, {m.cpu_s:.0f} CPU s, load {m.load_mean_1m} mean", flush=True)
    return rec


# ---- what DigitalOcean's images hold, and what the recipe needs of them ---------------------------------------

CUDA_ON_DIGITALOCEAN = [
    {"image": "NVIDIA AI/ML-ready (gpu-h100x1-base, gpu-h100x8-base)", "os": "Ubuntu 22.04",
     "cuda": "cuda-toolkit-12-9", "driver": "cuda-drivers-575",
     "source": "https://docs.digitalocean.com/products/droplets/getting-started/recommended-gpu-setup/ "
               "(validated 13 Aug 2025, edited 25 Aug 2025; read 2026-12-07)"},
    {"image": "Inference-optimized (NVIDIA)", "os": "Ubuntu 24.04", "cuda": "12.9", "driver": "575.51.03",
     "source": "same page, read 2026-12-07"},
    {"image": "NVIDIA AI/ML Ready as booted on 2026-09-14 (gpu-h100x1-80gb, nyc2)", "os": "Ubuntu 22.04.5",
     "cuda": "13.0 (nvidia-smi)", "driver": "580.173.02",
     "source": "https://github.com/timurista/unalloc (its GPU validation addendum, nvidia-smi captured on the "
               "droplet; read 2026-12-07): third-party, but a reading of the image after the docs were written"},
]
RECIPE_NEEDS = {
    "toolkit": "CUDA 12.x or 13.x with cuBLAS (full cuda-toolkit package); sm_89/sm_90 need 11.8+, and the script "
               "asks nvcc --list-gpu-code, so 13.x refusing sm_50..sm_72 is caught before configuring",
    "driver": "at least the toolkit's CUDA major (12.x runs on R525+ through minor-version compatibility, 13.x "
              "needs R580+); the script refuses a toolkit newer than nvidia-smi's CUDA version",
    "cmake": "3.18+ for CMAKE_CUDA_ARCHITECTURES with -real (ggml-cuda asks 3.18); Ubuntu 22.04 has 3.22",
    "host_compiler": "gcc 11 (Ubuntu 22.04) and 13 (24.04) are within both 12.9's and 13.0's supported range",
    "arch_spelling": "89-real;90-real in both: one --generate-code=arch=compute_XX,code=[sm_XX] per arch",
}


def configure_check(cmake: str, cache: Path, extra: list[str], archs: str = "89;90") -> dict:
    """The build script's configure alone (CONFIGURE_ONLY=1) with another cmake, from the cached sdist, in a
    scratch cache: does that cmake find this toolkit and spell the architectures as nvcc wants them?"""
    sdist = cache / "llama.cpp" / "src" / f"llama_cpp_python-{lb.DEFAULT_VERSION}.tar.gz"
    version = subprocess.run([cmake, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    with tempfile.TemporaryDirectory() as tmp:
        key = lb.BuildKey("tarball", lb.DEFAULT_VERSION, "cuda", archs)
        env = {**os.environ, **lb.build_env(key, cache=tmp, tarball=str(sdist)), "CMAKE_BIN": cmake,
               "CONFIGURE_ONLY": "1", "CMAKE_EXTRA": " ".join(extra)}
        r = subprocess.run(["nice", "-n", "19", "bash", str(SCRIPT)], env=env, capture_output=True, text=True)
        build_dir = next((ln.partition("=")[2] for ln in r.stdout.splitlines()
                          if ln.startswith("LLAMACPP_BUILD_DIR=")), "")
        ninja = Path(build_dir, "build.ninja").read_text() if build_dir else ""
        log = Path(lb.key_dir(key, tmp), "configure.log")
        lines = [ln for ln in log.read_text().splitlines() if "CUDA" in ln and "Detecting" not in ln] \
            if log.exists() else r.stderr.splitlines()[-10:]
    gencode = " ".join(f"--generate-code=arch=compute_{a},code=[sm_{a}]" for a in archs.split(";"))
    return {"cmake": version, "archs": archs, "returncode": r.returncode, "lines": lines,
            "cuda_units_with_expected_gencode": ninja.count(gencode)}


# ---- sampled translation units ---------------------------------------------------------------------------------

SAMPLE = ("norm", "getrows", "mmvq", "mmq-instance-q4_k", "fattn-mma-f16-instance-ncols1_8-ncols2_4",
          "fattn-tile-instance-dkq128-dv128", "mmf-instance-ncols_8", "fattn-vec-instance-f16-f16")
KINDS = ("fattn-tile-instance", "fattn-mma-f16-instance", "fattn-vec-instance", "mmq-instance", "mmf-instance")


def kind_of(unit: str) -> str:
    return next((k for k in KINDS if unit.startswith(k)), "op")


def cuda_commands(build_dir: Path) -> dict[str, list[str]]:
    """{unit: nvcc argv} for every CUDA translation unit of the cmake tree, from ninja's own manifest."""
    out = subprocess.run(["ninja", "-C", str(build_dir), "-t", "commands", "ggml-cuda"], capture_output=True,
                         text=True, check=True).stdout
    cmds = {}
    for line in out.splitlines():
        m = re.search(r"/([A-Za-z0-9_.-]+)\.cu\.o(\s|$)", line)
        if "nvcc" in line and " -c " in line and m:
            cmds[m.group(1)] = shlex.split(line)
    return cmds


def for_archs(argv: list[str], archs: str, out_dir: Path) -> list[str]:
    """The same nvcc command for other machine code (one --generate-code per arch), writing into out_dir."""
    new: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--generate-code="):
            if not any(x.startswith("--generate-code=") for x in new):
                new += [f"--generate-code=arch=compute_{x},code=[sm_{x}]" for x in archs.split(";")]
            continue
        if a in ("-o", "-MF", "-MT"):
            skip = True
            continue
        if a == "-MD":
            continue
        new.append(a)
    return [*new, "-o", str(out_dir / "unit.o")]


def sample_units(build_dir: Path, archs: list[str], units: list[str], earlier: list[dict]) -> dict:
    """Time `units` at each arch set; rows measured earlier (other units) are kept in the estimate."""
    cmds = cuda_commands(build_dir)
    counts: dict[str, int] = {}
    for unit in cmds:
        counts[kind_of(unit)] = counts.get(kind_of(unit), 0) + 1
    rows = [r for r in earlier if r["unit"] not in units]
    for unit in units:
        for arch in archs:
            with tempfile.TemporaryDirectory() as tmp:
                m = measure(["nice", "-n", "19", *for_archs(cmds[unit], arch, Path(tmp))], dict(os.environ))
            if m.returncode != 0:
                raise SystemExit(f"nvcc failed for {unit} at {arch}:\n{m.stdout_tail}")
            rows.append({"unit": unit, "kind": kind_of(unit), "arch": arch, "cpu_s": round(m.cpu_s, 1),
                         "wall_s": m.wall_s, "load_avg_1m_mean": m.load_mean_1m})
            print(f"build_cuda: sample {unit} @ {arch}: {m.cpu_s:.1f} CPU s", flush=True)
    return {"units": rows, "unit_counts": counts, "estimate": weighted_estimate(rows, counts, archs)}


def weighted_estimate(rows: list[dict], counts: dict[str, int], archs: list[str]) -> dict:
    """CPU seconds of all CUDA units per arch set: each kind's sampled mean times its count (a template-instance
    kind left unsampled takes the mean of the sampled instance kinds); ratios to "90"."""
    # Only units timed at every arch set: a kind's mean must compare the same units across architectures.
    complete = {r["unit"] for r in rows if all(any(x["unit"] == r["unit"] and x["arch"] == a for x in rows)
                                                 for a in archs)}
    rows = [r for r in rows if r["unit"] in complete]
    est = {}
    for arch in archs:
        at = [r for r in rows if r["arch"] == arch]
        instances = [r["cpu_s"] for r in at if r["kind"] != "op"]
        total = 0.0
        for kind, n in counts.items():
            got = [r["cpu_s"] for r in at if r["kind"] == kind] or (instances if kind != "op" else [])
            total += n * (sum(got) / len(got)) if got else 0.0
        est[arch] = round(total, 0)
    base = est.get("90") or 1.0
    return {"cuda_units_cpu_s": est, "ratio_to_90": {a: round(v / base, 2) for a, v in est.items()}}


def write_out(doc: dict) -> None:
    """The result file, with this machine's home folder written as ~ (the paths are the recipe's, not a place)."""
    OUT.write_text(json.dumps(doc, indent=2).replace(str(Path.home()) + "/", "~/") + "\n")


def merge(old: dict, new_records: list[dict], facts: dict) -> dict:
    records = {r["arch"]: r for r in old.get("builds", [])}
    records.update({r["arch"]: r for r in new_records})
    order = sorted(records, key=lambda a: (a.count(";"), a))
    return {
        "what": "llama.cpp (llama-cpp-python 0.3.36 sdist) compiled with CUDA by infra/llamacpp-build.sh, "
                "per DigitalOcean GPU architecture and both",
        "how": "each build from an empty build folder (source extracted once; a record with resumed: true "
               "continued a failed build's kept tree, and its first_attempt says how far that got), under nice -n 19; "
               "cpu_s = user+sys "
               "of the whole process tree (wait4 rusage); load_avg_* = 1-minute load sampled every 15 s; "
               "others_core_s = CPU seconds the rest of the machine used meanwhile (/proc/stat). The machine is "
               "shared with other developers: compare cpu_s between builds, wall_s only with the load beside it.",
        "architectures": do_archs(),
        "machine": facts,
        "builds": [records[a] for a in order],
        "sampled_units": old.get("sampled_units"),
        "cuda_on_digitalocean": CUDA_ON_DIGITALOCEAN,
        "recipe_needs": RECIPE_NEEDS,
        "configure_checks": old.get("configure_checks", {}),
        "pack": old.get("pack"),  # benchmarks/gpu/pack.sh's sizes of the sm_90 build, as carried to a GPU
        "full_build_cpu_s_estimate": old.get("full_build_cpu_s_estimate"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", help="CUDA arch(s), e.g. 90 or '89;90' (repeatable)")
    ap.add_argument("--rebuild", action="store_true", help="time a build again even where the cache has it")
    ap.add_argument("--resume", action="store_true", help="continue a failed build's kept cmake tree (timed as such)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--sample", nargs="?", const=",".join(SAMPLE), default=None, metavar="UNIT,...",
                    help="time these CUDA units (default: the stratified sample) at 89, 90 and 89;90; units timed "
                         "in an earlier run stay in the estimate")
    ap.add_argument("--configure-with", metavar="CMAKE", help="run the recipe's configure with this cmake binary")
    args = ap.parse_args()
    if args.configure_with:
        toolkit = find_toolkit()
        check = configure_check(args.configure_with, args.cache, cmake_extra(toolkit, args.cache))
        doc = merge(json.loads(OUT.read_text()) if OUT.exists() else {}, [], machine_facts(toolkit))
        doc["configure_checks"][check["cmake"]] = check
        write_out(doc)
        print(json.dumps(check, indent=2))
        return
    if args.sample:
        build_dir = Path(lb.key_dir(lb.BuildKey("pypi", lb.DEFAULT_VERSION, "cuda", "90"), str(args.cache))) / "build"
        toolkit = find_toolkit()
        doc = json.loads(OUT.read_text()) if OUT.exists() else merge({}, [], machine_facts(toolkit))
        earlier = (doc.get("sampled_units") or {}).get("units", [])
        result = sample_units(build_dir, ["90", "89", "89;90"], args.sample.split(","), earlier)
        doc["sampled_units"] = {"how": "each unit compiled alone under nice -n 19 with the sm_90 build's nvcc "
                                       "command, its --generate-code swapped; cpu_s = user+sys (wait4)", **result}
        write_out(doc)
        print(f"build_cuda: wrote {OUT.relative_to(ROOT)}")
        return
    archs = args.arch or ["90", "89", "89;90"]
    toolkit = find_toolkit()
    extra = cmake_extra(toolkit, args.cache)
    records = [r for a in archs if (r := run_one(a, toolkit, extra, args.cache, args.rebuild, args.jobs, args.resume))]
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    write_out(merge(old, records, machine_facts(toolkit)))
    print(f"build_cuda: wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

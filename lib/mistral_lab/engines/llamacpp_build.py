"""Which llama.cpp build a host needs, and the environment that makes `infra/llamacpp-build.sh` produce it.

Pure functions: HostFacts in, a BuildKey and a dict of env vars out. The script keys its cache directory the
same way (`<version>-<backend>-<arch>`), so `bin_dir()` here names the folder the script fills there. A CUDA
build puts llama.cpp's shared libraries beside the programs in that folder (RUNPATH $ORIGIN), and rebuilds when
the host's CUDA toolkit is not the one it was built with (its programs name libcudart.so.<major>).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import HostFacts

Source = Literal["pypi", "git", "tarball"]
Backend = Literal["cpu", "cuda", "rocm"]

SCRIPT = "llamacpp-build.sh"
# llama-cpp-python 0.3.36 vendors llama.cpp 0c1e57098 (its CHANGELOG), which knows the mistral3 and mistral4 archs.
DEFAULT_SOURCE: Source = "pypi"
DEFAULT_VERSION = "0.3.36"
# llama-quantize is small and lets modelgen make K-quants (Q4_K_M) from an F16 file on the same host.
DEFAULT_TARGETS: tuple[str, ...] = ("llama-server", "llama-bench", "llama-quantize")

_VERSION_RE = re.compile(r"^[A-Za-z0-9._+-]+$")
_GFX_RE = re.compile(r"^gfx[0-9a-f]+$")


@dataclass(frozen=True)
class BuildKey:
    source: Source
    version: str
    backend: Backend
    arch: str  # cpu: native | portable; cuda: "90" or "80;90" (machine code only: 90-real); rocm: gfx942

    @property
    def dirname(self) -> str:
        return f"{self.version}-{self.backend}-{self.arch.replace(';', '_')}"


def cuda_arch(compute_capability: str) -> str:
    """'9.0' -> '90' (H100/H200), '8.9' -> '89' (L40S), '12.0' -> '120': what CMAKE_CUDA_ARCHITECTURES takes."""
    m = re.fullmatch(r"\s*(\d+)\.(\d)\s*", compute_capability or "")
    if not m:
        raise BadInput(
            f"compute capability {compute_capability!r} is not MAJOR.MINOR",
            field="gpus[].compute_capability",
            fix="read it with `nvidia-smi --query-gpu=compute_cap --format=csv,noheader` (e.g. 9.0)",
        )
    return f"{int(m.group(1))}{m.group(2)}"


def pick_backend(facts: HostFacts) -> tuple[Backend, str]:
    """The backend and arch for a host's GPUs; every distinct GPU generation on the host is compiled for."""
    if not facts.gpus:
        return "cpu", "native"
    vendor = facts.gpus[0].vendor.lower()
    if vendor == "nvidia":
        caps = []
        for gpu in facts.gpus:
            if not gpu.compute_capability:
                raise BadInput(
                    f"GPU {gpu.name!r} reports no compute capability",
                    field="gpus[].compute_capability",
                    fix="pass arch= explicitly, e.g. '90' for H100/H200",
                )
            caps.append(cuda_arch(gpu.compute_capability))
        return "cuda", ";".join(sorted(set(caps), key=int))
    if vendor == "amd":
        gfx = sorted({(g.gfx or "").split(":")[0] for g in facts.gpus})
        if not all(_GFX_RE.match(g) for g in gfx):
            raise BadInput(
                f"AMD GPU target {gfx!r} is not a gfx name",
                field="gpus[].gfx",
                fix="pass arch= explicitly, e.g. 'gfx942' for MI300X (rocminfo lists it)",
            )
        return "rocm", ";".join(gfx)
    raise BadInput(
        f"GPU vendor {vendor!r} is not nvidia or amd", field="gpus[].vendor", fix="use backend='cpu'"
    )


def build_key(
    facts: HostFacts,
    *,
    source: Source = DEFAULT_SOURCE,
    version: str = DEFAULT_VERSION,
    backend: Backend | None = None,
    arch: str | None = None,
) -> BuildKey:
    """The cache key for `facts`' host; `backend`/`arch` override detection (e.g. a portable CPU build for CI)."""
    if not _VERSION_RE.match(version):
        raise BadInput(
            f"version {version!r} has characters unfit for a directory name",
            field="version",
            fix="use letters, digits and . _ + - (a PyPI version or a llama.cpp tag like b7400)",
        )
    if backend is None:
        backend, detected = pick_backend(facts)
        arch = arch or detected
    elif arch is None:
        if backend == "cpu":
            arch = "native"
        elif backend == pick_backend(facts)[0]:
            arch = pick_backend(facts)[1]
        else:
            raise BadInput(
                f"backend {backend!r} needs an arch this host cannot tell",
                field="arch",
                fix="pass arch='90' (cuda) or arch='gfx942' (rocm)",
            )
    if backend == "cpu" and arch not in ("native", "portable"):
        raise BadInput(
            f"cpu arch {arch!r} is not native or portable",
            field="arch",
            fix="native: this CPU, fastest; portable: any AVX2 x86-64, for caches shared between machines",
        )
    if backend == "cuda" and not re.fullmatch(r"\d+[a-z]?(;\d+[a-z]?)*", arch):
        raise BadInput(
            f"cuda arch {arch!r} is not CMAKE_CUDA_ARCHITECTURES", field="arch", fix="e.g. '90' or '80;90'"
        )
    if backend == "rocm" and not all(_GFX_RE.match(a) for a in arch.split(";")):
        raise BadInput(f"rocm arch {arch!r} is not a gfx target", field="arch", fix="e.g. 'gfx942'")
    return BuildKey(source=source, version=version, backend=backend, arch=arch)


def build_env(
    key: BuildKey,
    *,
    cache: str | None = None,
    tarball: str | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    jobs: int | None = None,
    pypi_url: str | None = None,
    keep_build: bool = True,
) -> dict[str, str]:
    """Environment for the build script; values only, no secrets. Unset keys take the script's defaults."""
    if key.source == "tarball" and not tarball:
        raise BadInput(
            "a tarball build needs the archive's path on the host",
            field="tarball",
            fix="upload the sdist (or a llama.cpp source .tar.gz) and pass its remote path",
        )
    env = {
        "SOURCE": key.source,
        "VERSION": key.version,
        "BACKEND": key.backend,
        "ARCH": key.arch,
        "TARGETS": " ".join(targets),
        "KEEP_BUILD": "1" if keep_build else "0",
    }
    if cache:
        env["CACHE"] = cache
    if tarball:
        env["TARBALL"] = tarball
    if jobs:
        env["JOBS"] = str(jobs)
    if pypi_url:
        env["PYPI_URL"] = pypi_url
    return env


def key_dir(key: BuildKey, cache: str) -> str:
    return f"{cache.rstrip('/')}/llama.cpp/{key.dirname}"


def bin_dir(key: BuildKey, cache: str) -> str:
    return f"{key_dir(key, cache)}/bin"


def parse_bin_dir(output: str) -> str:
    """The `LLAMACPP_BIN=<dir>` line the script ends with."""
    for line in reversed(output.splitlines()):
        if line.startswith("LLAMACPP_BIN="):
            return line.partition("=")[2].strip()
    raise ValueError("build output has no LLAMACPP_BIN= line; the script did not finish")


def was_cached(output: str) -> bool:
    return any(line.startswith("llamacpp-build: cached:") for line in output.splitlines())

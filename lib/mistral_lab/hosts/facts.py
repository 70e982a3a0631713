"""Host facts: one script (`infra/facts.sh`) gathers raw text on the host in one round trip; pure functions here
turn it into HostFacts, so every parsing rule is tested without a GPU.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from mistral_lab import infra_files
from mistral_lab.errors import TargetError
from mistral_lab.hosts.base import GPU, HostFacts, Result

SCRIPT = "facts.sh"
TIMEOUT_S = 120


class _Runs(Protocol):
    def run_script(self, script: str, *, timeout: float | None = None, check: bool = True,
                   retry_safe: bool = False) -> Result: ...


def script() -> str:
    return infra_files.read(SCRIPT)


def gather(host: _Runs) -> HostFacts:
    """Run the probe on a host and parse it. Reading facts changes nothing, so it is safe to repeat."""
    result = host.run_script(script(), timeout=TIMEOUT_S, retry_safe=True)
    return parse(result.stdout)


def _int(text: Any, default: int = 0) -> int:
    try:
        return int(float(str(text).strip()))
    except ValueError:
        return default


def parse(stdout: str) -> HostFacts:
    try:
        raw = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except json.JSONDecodeError:
        raw = None
    if not isinstance(raw, dict):
        raise TargetError(f"the facts probe printed something that is not its JSON: {stdout[-300:]!r}",
                          fix="run infra/facts.sh on the host by hand to see what fails")
    gpus = parse_nvidia(raw.get("nvidia_query", ""), raw.get("nvidia_fields", ""))
    driver = gpus[0].driver if gpus else None
    cuda = cuda_from_nvidia_smi(raw.get("nvidia_header", "")) or cuda_from_nvcc(raw.get("nvcc", ""))
    amd, amd_driver = parse_rocm(raw.get("rocm_smi", ""))
    return HostFacts(
        hostname=raw.get("hostname") or "unknown",
        os=raw.get("os") or "unknown",
        arch=raw.get("arch") or "unknown",
        cpus=_int(raw.get("cpus")),
        ram_mib=_int(raw.get("mem_kb")) // 1024,
        disk_free_mib=_int(raw.get("disk_free_kb")) // 1024,
        gpus=[g.gpu for g in gpus] + amd,
        driver_version=driver or amd_driver,
        cuda_version=cuda,
        rocm_version=rocm_version(raw.get("rocm_version", "")),
        systemd=raw.get("systemd") == "1",
        python=raw.get("python") or None,
    )


class _NvidiaRow:
    def __init__(self, gpu: GPU, driver: str | None):
        self.gpu = gpu
        self.driver = driver


def parse_nvidia(query: str, fields: str) -> list[_NvidiaRow]:
    """Rows of `nvidia-smi --query-gpu=<fields> --format=csv,noheader,nounits`."""
    names = [f.strip() for f in fields.split(",") if f.strip()]
    rows = []
    for line in query.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(names) or not line.strip():
            continue
        row = dict(zip(names, cells, strict=True))
        memory = _int(re.sub(r"[^\d.]", "", row.get("memory.total", "")) or 0)
        if memory <= 0:
            continue
        cc = row.get("compute_cap")
        rows.append(_NvidiaRow(
            GPU(name=row["name"], memory_mib=memory, vendor="nvidia",
                compute_capability=cc if cc and cc not in ("[N/A]", "N/A") else None),
            row.get("driver_version") or None,
        ))
    return rows


def cuda_from_nvidia_smi(header: str) -> str | None:
    """The newest CUDA the driver supports, from nvidia-smi's banner ("CUDA Version: 12.4")."""
    m = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return m.group(1) if m else None


def cuda_from_nvcc(text: str) -> str | None:
    """The installed toolkit's version, from `nvcc --version` ("release 12.4, V12.4.131")."""
    m = re.search(r"release ([\d.]+)", text)
    return m.group(1) if m else None


def rocm_version(text: str) -> str | None:
    """/opt/rocm/.info/version holds e.g. "6.2.0-66"; the build number after the dash is noise."""
    text = text.strip()
    return text.split("-")[0] if text else None


def parse_rocm(text: str) -> tuple[list[GPU], str | None]:
    """`rocm-smi --showproductname --showmeminfo vram --showdriverversion --json`: one "cardN" object per GPU
    (strings: "Card Series", "GFX Version", "VRAM Total Memory (B)") and a "system" object with the driver."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return [], None
    if not isinstance(data, dict):
        return [], None
    gpus = []
    cards = sorted((k for k in data if re.fullmatch(r"card\d+", k)), key=lambda k: int(k[4:]))
    for key in cards:
        card = data[key]
        if not isinstance(card, dict):
            continue
        memory = _int(card.get("VRAM Total Memory (B)", 0)) // (1024 * 1024)
        if memory <= 0:
            continue
        name = next((str(card[k]).strip() for k in ("Card Series", "Card Model", "Device Name", "Card SKU")
                     if str(card.get(k, "")).strip() not in ("", "N/A")), "AMD GPU")
        gfx = str(card.get("GFX Version", "")).strip() or None
        gpus.append(GPU(name=name, memory_mib=memory, vendor="amd", gfx=gfx if gfx != "N/A" else None))
    system = data.get("system")
    driver = None
    if isinstance(system, dict):
        driver = next((str(v).strip() for k, v in system.items() if k.lower() == "driver version"), None)
    return gpus, driver

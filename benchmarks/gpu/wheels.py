"""The Python wheels the GPU run carries: what our code imports on that path, minus what the device image has.

The lent GPU machine has no network; its python3 holds PyTorch and a list of packages (the device notes, read
2026-11-17, copied below). The run imports mistral_lab (CLI, modelgen, bench) and gguf; every distribution that
import pulls in here is carried at this machine's version, except the numeric stack the device's own packages
are built against (numpy, matplotlib and theirs), which the run takes from the device.

    python benchmarks/gpu/wheels.py DEST        # downloads cp312 manylinux wheels into DEST
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON_VERSION = "3.12"  # the device's python3 (3.12.3, device notes)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux_2_34_x86_64", "manylinux1_x86_64")
# Taken from the device: binary packages its torch, numpy and matplotlib were installed with.
FROM_DEVICE = {"numpy", "matplotlib", "contourpy", "cycler", "fonttools", "kiwisolver", "pillow", "pyparsing",
               "python-dateutil", "packaging", "six", "setuptools"}
# Imported here only inside try blocks (rich's notebook check): absent on the device, and not needed.
OPTIONAL = {"ipython", "traitlets"}
# What the run imports: the CLI (make-model), the benchmark, the report.
IMPORTS = ("mistral_lab.cli", "mistral_lab.modelgen", "mistral_lab.bench.runner", "mistral_lab.bench.plots", "gguf")


def norm(name: str) -> str:
    return name.lower().replace("_", "-")


def imported_distributions() -> dict[str, str]:
    """{distribution: version} for every module a fresh interpreter imports on the run's path."""
    code = (
        "import importlib, json, sys, importlib.metadata as md\n"
        f"for m in {IMPORTS!r}: importlib.import_module(m)\n"
        "pd = md.packages_distributions()\n"
        "dists = {d for m in list(sys.modules) for d in pd.get(m.split('.')[0], [])}\n"
        "print(json.dumps({d: md.version(d) for d in sorted(dists)}))\n"
    )
    env_path = str(ROOT / "lib")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}).stdout
    return {norm(k): v for k, v in json.loads(out).items() if norm(k) != "mistral-lab"}


def to_carry(imported: dict[str, str]) -> dict[str, str]:
    return {d: v for d, v in sorted(imported.items()) if d not in FROM_DEVICE and d not in OPTIONAL}


def download(pins: dict[str, str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    subprocess.run(argv + [f"{d}=={v}" for d, v in pins.items()], check=True)


def main() -> None:
    dest = Path(sys.argv[1])
    pins = to_carry(imported_distributions())
    print("wheels: " + ", ".join(f"{d}=={v}" for d, v in pins.items()), flush=True)
    download(pins, dest)


if __name__ == "__main__":
    main()

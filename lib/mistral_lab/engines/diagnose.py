"""Turn a failed server's log tail into the likely cause and what to do. Pure."""

from __future__ import annotations

import re

# Checked in order: the first pattern found wins. Catalog hints (per model and engine) come first.
COMMON: list[tuple[str, str]] = [
    (r"address already in use|bind.*failed|couldn't bind", "the port is busy: another server runs there; "
     "stop it, or deploy with another --port"),
    (r"out of memory|OutOfMemoryError|CUDA error: out of memory|cudaMalloc failed|failed to allocate|"
     r"KV cache .* larger than|larger than the maximum number of tokens that can be stored in KV cache",
     "out of memory: lower --context or --concurrency, pick a smaller quant/precision, or a larger GPU "
     "(`mistral-lab plan` shows the largest context that fits)"),
    (r"no kernel image is available|unsupported gpu|compute capability|CUDA driver version is insufficient|"
     r"not compiled with CUDA|hipErrorNoBinaryForGpu",
     "the engine build does not support this GPU or driver: rebuild for the detected architecture, "
     "or install a vLLM build matching the driver's CUDA version"),
    (r"tekken\.json|params\.json|consolidated.*safetensors|tokenizer_mode|Found 0 files matching",
     "tokenizer/format mismatch: the mistral tokenizer/config/load formats need a repo with params.json and "
     "consolidated*.safetensors; use HF formats for HF-only repos (the catalog's `formats`)"),
    (r"failed to load model|No such file or directory|error loading model|gguf_init_from_file",
     "the model file is missing or unreadable: re-run deploy to download it again"),
    (r"unknown model architecture|unknown architecture", "this llama.cpp build is too old for the model's "
     "architecture: rebuild from a newer source (catalog min_build)"),
    (r"40[13] Client Error|gated repo|Access to model .* is restricted|Invalid credentials",
     "Hugging Face refused the download: the repo may be gated; accept its terms and set HF_TOKEN"),
]


def diagnose(log_tail: str, hints: dict[str, str] | None = None) -> str | None:
    for pattern, fix in [*(hints or {}).items(), *COMMON]:
        if re.search(pattern, log_tail, re.IGNORECASE):
            return fix
    return None

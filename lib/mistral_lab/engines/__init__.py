"""Inference servers: llama.cpp and vLLM, rendered from a Plan and run on a Host. A registry finds them by name."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mistral_lab.errors import BadInput

if TYPE_CHECKING:  # plan imports engines.render, so nothing here may import plan at load time
    from mistral_lab.engines.base import Engine

_ENGINES: dict[str, str] = {
    "llamacpp": "mistral_lab.engines.llamacpp:LlamaCppEngine",
    "vllm": "mistral_lab.engines.vllm:VllmEngine",
}


def get_engine(name: str, options: dict[str, Any] | None = None) -> Engine:
    if name not in _ENGINES:
        raise BadInput(f"unknown engine {name!r}", field="engine", fix=f"one of: {', '.join(_ENGINES)}")
    module, _, cls = _ENGINES[name].partition(":")
    return getattr(import_module(module), cls)(options or {})

"""Inference servers: llama.cpp and vLLM, each the one author of its serve command. A registry finds them by name,
papermill-style, and imports an engine only when it is asked for."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mistral_lab.errors import BadInput

if TYPE_CHECKING:  # type names only: the engines themselves are imported on first use
    from mistral_lab.engines.base import Engine

__all__ = ["get_engine", "names"]

_ENGINES: dict[str, str] = {
    "llamacpp": "mistral_lab.engines.llamacpp:LlamaCppEngine",
    "vllm": "mistral_lab.engines.vllm:VllmEngine",
}


def names() -> list[str]:
    return list(_ENGINES)


def get_engine(name: str, options: dict[str, Any] | None = None) -> Engine:
    if name not in _ENGINES:
        raise BadInput(f"unknown engine {name!r}", field="engine", fix=f"one of: {', '.join(_ENGINES)}")
    module, _, cls = _ENGINES[name].partition(":")
    return getattr(import_module(module), cls)(options or {})

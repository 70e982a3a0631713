"""What every engine provides to `deploy`: install on a Host, fetch the model there, and the serve command.

An engine gets a Host, the Plan and the host's facts; it knows nothing about where the host runs. It is the one
author of its serve command: `serve_argv` builds it once from its inputs, and nothing edits it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from mistral_lab.hosts.base import Host, HostFacts, LineSink
from mistral_lab.planning.resolve import Plan

__all__ = ["Engine", "Installed", "Layout", "ModelFiles"]


@dataclass(frozen=True)
class Installed:
    """An engine ready on a host: the argv prefix that starts its server and the versions to record."""

    serve_prefix: list[str]
    versions: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)  # non-secret variables the server needs
    skipped: bool = False  # true when the cached install was reused
    tools: dict[str, str] = field(default_factory=dict)  # other binaries, e.g. llama-bench
    features: tuple[str, ...] = ()  # what the installed version accepts beyond the pinned floor (vLLM: max_model_len_auto)
    image: str | None = None  # the container image the server runs in (vLLM's docker mode); None: on the host


@dataclass(frozen=True)
class ModelFiles:
    ref: str  # what the server loads: an absolute path on the host, or a repo id in a filled cache
    mmproj: str | None = None
    skipped: bool = False
    weight_format: str | None = None  # the layout found in the files (vLLM: mistral | hf), when it was looked at
    hub: bool = False  # `ref` is a hub reference the server downloads itself at start (llama-server -hf)


@dataclass(frozen=True)
class Layout:
    """Where things live on the host. Caches are shared by deployments; the deployment folder is not."""

    home: str
    cache: str  # e.g. /home/llm/.cache/mistral-lab
    root: str  # this deployment's folder
    user: str = ""  # the login user on the host

    @property
    def models(self) -> str:
        return f"{self.cache}/models"


class Engine(Protocol):
    name: str
    key_var: str  # the environment variable the server reads its API key from
    weights: Literal["gguf", "hf"]  # what it loads: one GGUF file, or a Hugging Face folder
    downloads_at_start: bool  # the server fetches weights itself, so it needs HF_TOKEN in its environment

    def install(self, host: Host, plan: Plan, facts: HostFacts, layout: Layout, on_line: LineSink | None) -> Installed: ...

    def fetch_model(self, host: Host, plan: Plan, layout: Layout, env: dict[str, str],
                    on_line: LineSink | None) -> ModelFiles: ...

    def serve_argv(self, plan: Plan, files: ModelFiles | None = None, installed: Installed | None = None) -> list[str]:
        """The serve command, built once. Without `files`/`installed` it is the preview `plan` shows: the default
        binary and the weights where deploy will put them, relative to the deployment's folder on the host."""
        ...

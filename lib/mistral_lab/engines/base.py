"""What every engine provides to `deploy`: install on a Host, fetch the model there, and the serve argv.

An engine gets a Host, the Plan and the host's facts; it knows nothing about where the host runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from mistral_lab.catalog.schema import Model
from mistral_lab.hosts.base import Host, HostFacts, LineSink
from mistral_lab.plan import Plan


@dataclass(frozen=True)
class Installed:
    """An engine ready on a host: the argv prefix that starts its server and the versions to record."""

    serve_prefix: list[str]
    versions: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)  # non-secret variables the server needs
    skipped: bool = False  # true when the cached install was reused
    tools: dict[str, str] = field(default_factory=dict)  # other binaries, e.g. llama-bench
    features: tuple[str, ...] = ()  # what the installed version accepts beyond the pinned floor (vLLM: max_model_len_auto)


@dataclass(frozen=True)
class ModelFiles:
    ref: str  # what the server loads: an absolute path on the host, or a repo id in a filled cache
    mmproj: str | None = None
    skipped: bool = False
    weight_format: str | None = None  # the layout found in the files (vLLM: mistral | hf), when it was looked at


@dataclass(frozen=True)
class Layout:
    """Where things live on the host. Caches are shared by deployments; the deployment folder is not."""

    home: str
    cache: str  # e.g. /home/llm/.cache/mistral-lab
    root: str  # this deployment's folder

    @property
    def models(self) -> str:
        return f"{self.cache}/models"


class Engine(Protocol):
    name: str
    key_var: str  # the environment variable the server reads its API key from
    downloads_at_start: bool  # the server fetches weights itself, so it needs HF_TOKEN in its environment

    def install(self, host: Host, plan: Plan, facts: HostFacts, layout: Layout, on_line: LineSink | None) -> Installed: ...

    def fetch_model(self, host: Host, plan: Plan, model: Model, layout: Layout, env: dict[str, str],
                    on_line: LineSink | None) -> ModelFiles: ...

    def argv(self, plan: Plan, model: Model, installed: Installed, files: ModelFiles) -> list[str]: ...

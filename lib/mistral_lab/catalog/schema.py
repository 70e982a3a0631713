"""The shape of `models.yaml`: every model, variant, weight file and serving recipe, each fact with its source.

Validation is strict (unknown keys are errors) so a typo in the YAML fails loudly at load time instead of
silently changing a plan.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Precision = Literal["bf16", "fp8", "nvfp4", "gguf"]
WeightFormat = Literal["mistral", "hf", "gguf"]
Modality = Literal["text", "image"]
Effort = Literal["none", "high"]
EngineName = Literal["vllm", "llamacpp"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sourced(_Strict):
    """A block of facts read from one place. `unverified` names the fields that no primary source confirmed."""

    source: str = Field(min_length=3, description="URL or seed file name the facts come from")
    unverified: list[str] = Field(default_factory=list)


class Architecture(Sourced):
    kind: Literal["dense", "moe"]
    attention: Literal["gqa", "mla"] = "gqa"
    total_params_b: float = Field(gt=0, description="all parameters, billions, vision encoder included")
    active_params_b: float = Field(gt=0, description="parameters read per token, billions")
    vision_params_b: float = 0.0
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    heads: int = Field(gt=0)
    kv_heads: int | None = None
    head_dim: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int = Field(gt=0)
    experts: int | None = None
    experts_per_token: int | None = None
    shared_experts: int | None = None
    rope_theta: float | None = None
    yarn_factor: float | None = None
    yarn_original_context: int | None = None
    tie_embeddings: bool = False

    @model_validator(mode="after")
    def _kv_numbers_present(self) -> Architecture:
        if self.attention == "gqa" and not (self.kv_heads and self.head_dim):
            raise ValueError("GQA attention needs kv_heads and head_dim for the KV-cache estimate")
        if self.attention == "mla" and not (self.kv_lora_rank and self.qk_rope_head_dim):
            raise ValueError("MLA attention needs kv_lora_rank and qk_rope_head_dim for the KV-cache estimate")
        if self.active_params_b > self.total_params_b:
            raise ValueError("active_params_b cannot exceed total_params_b")
        if self.kind == "moe" and not (self.experts and self.experts_per_token):
            raise ValueError("a MoE model needs experts and experts_per_token")
        return self


class GGUFQuant(_Strict):
    file: str
    size_gb: float | None = Field(default=None, description="file size in GB (1e9 bytes) where known")
    source: str | None = None


class Weights(Sourced):
    """One published set of weights: a repo at one precision."""

    precision: Precision
    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    formats: list[WeightFormat] = Field(
        min_length=1,
        description="file layouts the repo ships: mistral (params.json + consolidated*.safetensors), hf, gguf",
    )
    size_gb: float | None = None
    quants: dict[str, GGUFQuant] = Field(default_factory=dict)
    recommended_quant: str | None = None
    mmproj: str | None = Field(default=None, description="vision projector file inside the GGUF repo")
    mmproj_size_gb: float | None = None
    max_context: int | None = Field(default=None, description="where this file is meant for less than the model's")

    @model_validator(mode="after")
    def _gguf_shape(self) -> Weights:
        if self.precision == "gguf":
            if "gguf" not in self.formats:
                raise ValueError("GGUF weights must list the gguf format")
            if not self.quants or self.recommended_quant not in self.quants:
                raise ValueError("GGUF weights need quants and a recommended_quant among them")
        return self


class Variant(_Strict):
    id: Literal["instruct", "reasoning", "base", "random"]
    default: bool = False
    thinks: bool = Field(default=False, description="always reasons (Ministral Reasoning) regardless of effort")
    weights: list[Weights] = Field(min_length=1)

    def precisions(self) -> list[str]:
        return [w.precision for w in self.weights]


class Sampling(Sourced):
    temperature: float = Field(ge=0, le=2)
    top_p: float | None = None


class SamplingDefaults(_Strict):
    default: Sampling
    reasoning_high: Sampling | None = None


class Capabilities(Sourced):
    max_context: int = Field(gt=0)
    modalities: list[Modality]
    tools: bool
    json_output: bool = True
    reasoning_effort: list[Effort] = Field(default_factory=list, description="empty: not a reasoning-effort model")


class VllmRecipe(Sourced):
    min_version: str
    pip_spec: str = Field(description="what `uv pip install` takes, pinned")
    docker_image: str | None = Field(default=None, description="image the card requires, if any")
    tool_parser: str | None = "mistral"
    reasoning_parser: str | None = None
    tensor_parallel: int | None = Field(default=None, description="the card's tensor-parallel size, if it names one")
    gpu_memory_utilization: float = 0.90
    extra_flags: dict[str, list[str]] = Field(
        default_factory=dict,
        description="flags the card adds, keyed by precision, 'precision@vendor' (nvidia | amd) or '*' for all"
    )
    vision_images_per_prompt: int = 10
    mistral_common_min: str | None = None
    hints: dict[str, str] = Field(default_factory=dict, description="log pattern -> what to do")


class LlamaCppRecipe(Sourced):
    supported: bool = True
    min_build: str | None = Field(default=None, description="first llama.cpp commit/PR that loads the GGUF arch")
    flags: list[str] = Field(default_factory=lambda: ["--jinja"])
    reasoning_kwarg: bool = Field(default=False, description="takes --chat-template-kwargs reasoning_effort")
    hints: dict[str, str] = Field(default_factory=dict)


class Engines(_Strict):
    vllm: VllmRecipe | None = None
    llamacpp: LlamaCppRecipe | None = None


class Requirement(Sourced):
    """A published memory figure, kept so sizing can be checked against it."""

    precision: Precision
    quant: str | None = None
    memory_gb: float = Field(gt=0)
    what: Literal["gpu", "total"] = "gpu"
    gpus: str | None = Field(default=None, description="the GPU set the figure names, e.g. 8xh200")
    context: int | None = None
    note: str | None = None


class Model(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]+$")
    name: str
    family: str
    generated: bool = Field(default=False, description="made by mistral_lab.modelgen, not downloaded")
    architecture: Architecture
    capabilities: Capabilities
    variants: list[Variant] = Field(min_length=1)
    engines: Engines
    sampling: SamplingDefaults
    system_prompt: str | None = Field(default=None, description="SYSTEM_PROMPT.txt text with {name} {today} {yesterday}")
    requirements: list[Requirement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_default_variant(self) -> Model:
        defaults = [v.id for v in self.variants if v.default]
        if len(defaults) != 1:
            raise ValueError(f"exactly one variant must be default, found {defaults or 'none'}")
        if len({v.id for v in self.variants}) != len(self.variants):
            raise ValueError("variant ids must be unique")
        if self.engines.vllm is None and self.engines.llamacpp is None:
            raise ValueError("a model needs at least one engine recipe")
        return self

    @property
    def has_vision(self) -> bool:
        return "image" in self.capabilities.modalities

    @property
    def default_variant(self) -> Variant:
        return next(v for v in self.variants if v.default)

    def variant(self, variant_id: str) -> Variant:
        for v in self.variants:
            if v.id == variant_id:
                return v
        raise KeyError(variant_id)

    def thinks(self, variant_id: str | None) -> bool:
        """Whether the variant always reasons (None: the default variant)."""
        return (self.variant(variant_id) if variant_id else self.default_variant).thinks

    def sampling_for(self, variant_id: str | None = None, effort: str | None = None) -> Sampling:
        """The one sampling rule the server flags, the Client and the chat panel all follow: the card's reasoning
        sampling for effort "high" or a variant that always reasons, where the card gives one; else its default."""
        high = self.sampling.reasoning_high
        return high if (high and (effort == "high" or self.thinks(variant_id))) else self.sampling.default


class Catalog(_Strict):
    version: int = 1
    models: list[Model]

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalog:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {dupes}")
        return self

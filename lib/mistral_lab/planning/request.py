"""What a user may ask of the planner (papermill parameters, CLI flags, YAML presets). Everything defaults safely."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mistral_lab.errors import BadInput

__all__ = ["EngineChoice", "PlanRequest", "Target", "request"]

Target = Literal["local", "ssh", "digitalocean"]
EngineChoice = Literal["auto", "vllm", "llamacpp"]


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "tiny-random"
    variant: str | None = None
    engine: EngineChoice = "auto"
    target: Target = "local"
    gpu: str = "auto"
    precision: str | None = None
    quant: str | None = None
    context: int | None = Field(default=None, gt=0)
    concurrency: int | None = Field(default=None, gt=0)
    vision: bool | None = None
    kv_cache_dtype: str = "auto"
    region: str | None = None
    name: str | None = None
    port: int | None = Field(default=None, gt=0, lt=65536)


def request(**fields: Any) -> PlanRequest:
    """A PlanRequest from loose parameters (CLI flags, papermill parameters), with errors that name the field."""
    try:
        return PlanRequest(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        expected = err.get("ctx", {}).get("expected")
        raise BadInput(err["msg"], field=field, fix=f"use {expected}" if expected else None) from None

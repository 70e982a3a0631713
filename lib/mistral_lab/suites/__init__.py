"""Prompt suites: prompts as data (each with its source), run against a Client, scored where the answer is known.

    >>> from mistral_lab import suites
    >>> suite = suites.load("seeds")
    >>> run = suites.run(client, suite, max_tokens=2048)   # doctest: +SKIP
    >>> suites.write_json(run, "runs/eval/seeds.json")     # doctest: +SKIP

A prompt's settings follow what its seed says (reasoning effort high for the math, JSON mode for the OCR, the
calculator tool for the function-calling prompt); a setting the model cannot take is left out, and an image prompt
to a model without vision is recorded as skipped, scored 0, so the suite always runs through. Rows keep the reply,
the reasoning, the tool calls, tokens and latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mistral_lab import assets
from mistral_lab.errors import BadInput, MistralLabError

from .scoring import SCORERS, Score

__all__ = ["EvalRow", "EvalRun", "Score", "Suite", "SuitePrompt", "default_max_tokens", "default_path", "load", "names",
           "run", "show", "table", "write_json"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Check(_Strict):
    kind: str
    expected: Any = None

    @model_validator(mode="after")
    def _known_kind(self) -> Check:
        if self.kind not in SCORERS:
            raise ValueError(f"unknown check kind {self.kind!r}; known: {sorted(SCORERS)}")
        return self


class Document(_Strict):
    source: str = Field(min_length=3)
    text: str


class SuitePrompt(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    category: str
    source: str = Field(min_length=3, description="the seed (file and section) the prompt comes from")
    prompt: str
    system: str | None = None
    document: str | None = Field(default=None, description="id of a suite document put before the question")
    image: str | None = Field(default=None, description="a file under mistral_lab/assets/")
    reasoning_effort: Literal["none", "high"] | None = None
    response_format: Literal["json_object"] | None = None
    tools: list[Literal["calculator"]] = Field(default_factory=list)
    check: Check | None = None


class Suite(_Strict):
    id: str
    description: str
    documents: dict[str, Document] = Field(default_factory=dict)
    prompts: list[SuitePrompt] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Suite:
        ids = [p.id for p in self.prompts]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate prompt ids: {dupes}")
        for p in self.prompts:
            if p.document and p.document not in self.documents:
                raise ValueError(f"prompt {p.id} names document {p.document!r}, not in documents")
            if p.image and not assets.path(p.image).is_file():
                raise ValueError(f"prompt {p.id} names image {p.image!r}, not in mistral_lab/assets/")
        return self


def names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".yaml"))


def load(name_or_path: str | Path) -> Suite:
    """A shipped suite by name (`seeds`), or a YAML file of the same shape."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        text = path.read_text(encoding="utf-8")
    elif str(name_or_path) in names():
        text = resources.files(__package__).joinpath(f"{name_or_path}.yaml").read_text(encoding="utf-8")
    else:
        raise BadInput(f"unknown suite {str(name_or_path)!r}", field="suite",
                       fix=f"use one of {names()}, or the path of a suite YAML file")
    return Suite.model_validate(yaml.safe_load(text))


# ---------------------------------------------------------------------------------------------- running


@dataclass
class EvalRow:
    id: str
    title: str
    category: str
    source: str
    status: Literal["ok", "error", "skipped"]
    scored: bool
    score: float | None = None
    passed: bool | None = None
    detail: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    reply: str = ""
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None


@dataclass
class EvalRun:
    suite: str
    model: str
    catalog_id: str | None
    engine: str | None
    base_url: str
    started_at: str
    max_tokens: int
    rows: list[EvalRow]

    @property
    def scored(self) -> list[EvalRow]:
        return [r for r in self.rows if r.scored]

    @property
    def mean_score(self) -> float | None:
        scored = self.scored
        return sum(r.score or 0.0 for r in scored) / len(scored) if scored else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["summary"] = {
            "prompts": len(self.rows),
            "scored": len(self.scored),
            "passed": sum(1 for r in self.scored if r.passed),
            "mean_score": None if self.mean_score is None else round(self.mean_score, 4),
            "errors": sum(1 for r in self.rows if r.status == "error"),
            "skipped": sum(1 for r in self.rows if r.status == "skipped"),
        }
        return out


def _user_text(suite: Suite, p: SuitePrompt) -> str:
    if not p.document:
        return p.prompt
    doc = suite.documents[p.document]
    return f"请根据下面的文档回答问题。\n\n<document>\n{doc.text}\n</document>\n\n问题：{p.prompt}"


def _settings(client: Any, p: SuitePrompt, reasoning: str, max_tokens: int) -> dict[str, Any]:
    """The request settings for one prompt on this model: a setting the model cannot take is left out."""
    kw: dict[str, Any] = {"max_tokens": max_tokens}
    model = client.catalog
    effort = p.reasoning_effort if reasoning == "auto" else reasoning
    allowed = model.capabilities.reasoning_effort if model is not None else []
    if effort and effort in allowed:
        kw["reasoning_effort"] = effort
    if p.response_format:
        kw["response_format"] = {"type": p.response_format}
    if p.system is not None:
        kw["system"] = p.system
    return kw


def _score(p: SuitePrompt, text: str) -> Score:
    assert p.check is not None
    return SCORERS[p.check.kind](text, p.check.expected, p.prompt)


DEFAULT_MAX_TOKENS = 4096  # per reply: the math prompts reason at length
GENERATED_MAX_TOKENS = 24  # a generated model's random weights only babble: a few tokens prove each request


def default_max_tokens(client: Any) -> int:
    """The reply budget when none is given: room for reasoning, or a few tokens for a generated random model."""
    return GENERATED_MAX_TOKENS if client.catalog is not None and client.catalog.generated else DEFAULT_MAX_TOKENS


def run_prompt(client: Any, suite: Suite, p: SuitePrompt, *, reasoning: str = "auto", max_tokens: int | None = None,
               **extra: Any) -> EvalRow:
    """One prompt: the request, the reply, its score. Errors of the server are recorded in the row."""
    from mistral_lab import calculator

    kw = _settings(client, p, reasoning, default_max_tokens(client) if max_tokens is None else max_tokens)
    row = EvalRow(id=p.id, title=p.title, category=p.category, source=p.source, status="ok",
                  scored=p.check is not None, settings={k: v for k, v in kw.items() if k != "system"})
    if p.image:
        if client.catalog is not None and not client.catalog.has_vision:
            row.status, row.detail = "skipped", f"{client.catalog.id} has no vision"
            return _zero(row)
        kw["image"] = assets.path(p.image)
        row.settings["image"] = p.image
    if p.tools:
        row.settings["tools"] = list(p.tools)
    t0 = time.monotonic()
    try:
        if p.tools:
            trace: list[dict[str, Any]] = []
            reply = client.run_tools(_user_text(suite, p), {"calculator": calculator.calculate},
                                     [calculator.TOOL_SPEC], trace=trace, **kw, **extra)
            row.tool_calls = trace
        else:
            reply = client.chat(_user_text(suite, p), **kw, **extra)
    except MistralLabError as e:
        row.latency_s = round(time.monotonic() - t0, 3)
        row.status, row.detail = "error", str(e).splitlines()[0]
        return _zero(row)
    row.latency_s = round(time.monotonic() - t0, 3)
    row.reply, row.reasoning, row.finish_reason = reply.content, reply.reasoning, reply.finish_reason
    row.prompt_tokens = reply.usage.get("prompt_tokens")
    row.completion_tokens = reply.usage.get("completion_tokens")
    if p.check is not None:
        s = _score(p, reply.content)
        row.score, row.passed, row.detail = round(s.score, 4), s.passed, s.detail
    return row


def _zero(row: EvalRow) -> EvalRow:
    """A prompt with a known answer that got no reply scores 0 (the model did not answer it)."""
    if row.scored:
        row.score, row.passed = 0.0, False
    return row


def run(client: Any, suite: Suite | str = "seeds", *, reasoning: str = "auto", max_tokens: int | None = None,
        only: list[str] | None = None, say: Callable[[EvalRow], None] | None = None, **extra: Any) -> EvalRun:
    """Every prompt of the suite in order (or those in `only`), one request at a time.

    `reasoning`: auto (each prompt's own setting), none or high for all; `max_tokens` per reply (None:
    `default_max_tokens(client)`); `extra` goes into every request (e.g. temperature, seed)."""
    if max_tokens is None:
        max_tokens = default_max_tokens(client)
    if isinstance(suite, str):
        suite = load(suite)
    if reasoning not in ("auto", "none", "high"):
        raise BadInput(f"reasoning {reasoning!r}", field="reasoning", fix="use auto, none or high")
    prompts = suite.prompts
    if only:
        unknown = sorted(set(only) - {p.id for p in prompts})
        if unknown:
            raise BadInput(f"no prompt {unknown} in suite {suite.id}", field="only",
                           fix=f"pick from {[p.id for p in prompts]}")
        prompts = [p for p in prompts if p.id in only]
    result = EvalRun(suite=suite.id, model=client.model, catalog_id=client.catalog.id if client.catalog else None,
                     engine=client.engine, base_url=client.base_url,
                     started_at=datetime.now(UTC).isoformat(timespec="seconds"), max_tokens=max_tokens, rows=[])
    for p in prompts:
        row = run_prompt(client, suite, p, reasoning=reasoning, max_tokens=max_tokens, **extra)
        result.rows.append(row)
        if say:
            say(row)
    return result


def default_path(label: str, suite_id: str) -> Path:
    """Where a run is saved unless told: next to the deployment records, one file per run."""
    from mistral_lab import state

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return state.home() / "evals" / f"{label}-{suite_id}-{stamp}.json"


def write_json(result: EvalRun, path: str | Path | None = None, label: str | None = None) -> Path:
    """Save the run as JSON (rows, settings, summary); without a path, under `default_path`."""
    out = Path(path) if path else default_path(label or result.catalog_id or "url", result.suite)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out


def show(result: EvalRun) -> None:
    from rich.console import Console

    Console(markup=False, highlight=False).print(table(result))  # model replies are not markup


def table(result: EvalRun) -> Any:
    """A rich Table: one row per prompt, with the score where the answer is known."""
    from rich.table import Table

    t = Table(title=f"{result.suite} on {result.model} ({result.engine or 'unknown engine'})")
    t.add_column("prompt", no_wrap=True)
    for col in ("status", "score", "tokens", "s"):
        t.add_column(col, no_wrap=True)
    t.add_column("detail", overflow="fold", min_width=16)
    for r in result.rows:
        score = "—" if not r.scored else (f"{r.score:.2f} {'✔' if r.passed else '✘'}")
        t.add_row(r.id, r.status, score, str(r.completion_tokens or ""),
                  "" if r.latency_s is None else f"{r.latency_s:.1f}", r.detail[:120])
    mean = result.mean_score
    t.caption = (f"{sum(1 for r in result.scored if r.passed)}/{len(result.scored)} passed, mean score "
                 f"{mean:.2f}" if mean is not None else "no scored prompts")
    return t

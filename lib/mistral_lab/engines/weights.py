"""Putting a model's weights on a host: the engine downloads real ones there; a generated model (`modelgen`) is
made on this machine and uploaded. This is the one place that tells the two apart, so engines never look at
whether a catalog model is generated."""

from __future__ import annotations

import shlex
from pathlib import Path

from mistral_lab import modelgen
from mistral_lab.catalog import get_model
from mistral_lab.engines.base import Engine, Layout, ModelFiles
from mistral_lab.errors import BadInput
from mistral_lab.hosts.base import Host, LineSink
from mistral_lab.planning.resolve import Plan

__all__ = ["fetch", "remote_sizes", "upload_changed"]


def remote_sizes(host: Host, paths: list[str]) -> dict[str, int]:
    """Sizes of files on the host, -1 for each one absent, in one round trip."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    out = host.run(f'for p in {quoted}; do stat -c %s "$p" 2>/dev/null || echo -1; done', retry_safe=True).stdout
    sizes = out.split()[-len(paths):] if paths else []
    try:
        return {p: int(s) for p, s in zip(paths, sizes, strict=True)}
    except ValueError:
        return dict.fromkeys(paths, -1)


def upload_changed(host: Host, files: dict[str, Path], on_line: LineSink | None) -> bool:
    """Put each local file at its remote path (the keys) unless a file of the same size is there; True when any
    was uploaded. One round trip compares the sizes and one moves the uploads into place, however many files."""
    sizes = remote_sizes(host, list(files))
    todo = {remote: local for remote, local in files.items() if sizes[remote] != local.stat().st_size}
    for remote, local in todo.items():
        if on_line:
            on_line(f"uploading {local.name} ({local.stat().st_size / 2**20:.1f} MiB)")
        host.put(local, remote + ".part")  # put makes the parent folders
    if todo:
        host.run(" && ".join(f"mv -f {shlex.quote(r + '.part')} {shlex.quote(r)}" for r in todo))
    return bool(todo)


def _upload_generated(host: Host, plan: Plan, layout: Layout, weights: str, on_line: LineSink | None) -> ModelFiles:
    folder = f"{layout.models}/{plan.repo}"
    if weights == "gguf":
        path = f"{folder}/{plan.gguf_file}"
        uploaded = upload_changed(host, {path: modelgen.make_model(plan.model, plan.quant or "F16")}, on_line)
        return ModelFiles(ref=path, skipped=not uploaded)
    local = Path(modelgen.make_model(plan.model, "hf"))
    files = {f"{folder}/{p.relative_to(local).as_posix()}": p for p in sorted(local.rglob("*")) if p.is_file()}
    uploaded = upload_changed(host, files, on_line)
    return ModelFiles(ref=folder, skipped=not uploaded, weight_format="hf")


def fetch(engine: Engine, host: Host, plan: Plan, layout: Layout, env: dict[str, str],
          on_line: LineSink | None) -> ModelFiles:
    """The plan's weights on the host, in the form the engine loads."""
    if engine.weights == "gguf" and not plan.gguf_file:
        raise BadInput(f"plan for {plan.model} names no GGUF file", field="quant",
                       fix="pick a GGUF quant (--quant Q4_K_M) or the vllm engine")
    if get_model(plan.model).generated:
        return _upload_generated(host, plan, layout, engine.weights, on_line)
    return engine.fetch_model(host, plan, layout, env, on_line)

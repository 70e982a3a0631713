"""llama.cpp on a Host: build llama-server (cached by source version, backend, GPU arch), fetch the GGUF, serve.

The build runs `infra/llamacpp-build.sh` on the host in one round trip; the model is either generated here and
uploaded (the `generated` tiny model), downloaded on the host with resume and progress (`infra/fetch-url.sh`),
or left to llama-server's own `-hf repo:quant` download (option `model_source: hf`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from mistral_lab import infra_files, modelgen
from mistral_lab.catalog.schema import Model
from mistral_lab.engines import llamacpp_build as lb
from mistral_lab.engines.base import Installed, Layout, ModelFiles
from mistral_lab.engines.render import API_KEY_ENV, llamacpp_argv
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import Host, HostFacts, LineSink
from mistral_lab.plan import Plan

HF_ENDPOINT = "https://huggingface.co"
MODEL_SOURCES = ("download", "hf")


def hf_url(repo: str, filename: str, endpoint: str | None = None, revision: str = "main") -> str:
    return f"{(endpoint or HF_ENDPOINT).rstrip('/')}/{repo}/resolve/{revision}/{filename}"


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


def upload_if_changed(host: Host, local: Path, remote: str, on_line: LineSink | None) -> bool:
    """Put `local` at `remote` unless a file of the same size is there; True when it was uploaded."""
    return upload_changed(host, {remote: local}, on_line)


class LlamaCppEngine:
    name = "llamacpp"
    key_var = API_KEY_ENV["llamacpp"]

    def __init__(self, options: dict[str, Any] | None = None):
        self.options = dict(options or {})
        source = self.options.get("model_source", "download")
        if source not in MODEL_SOURCES:
            raise BadInput(f"model_source {source!r} is not one of {', '.join(MODEL_SOURCES)}",
                           field="model_source", fix="download: fetched first with progress; hf: llama-server -hf")

    # ------------------------------------------------------------------ install

    @property
    def downloads_at_start(self) -> bool:
        """llama-server fetches the model itself (`-hf`), so only then does the server need HF_TOKEN."""
        return self.options.get("model_source") == "hf"

    def build_key(self, facts: HostFacts) -> lb.BuildKey:
        o = self.options
        return lb.build_key(facts, source=o.get("llamacpp_source", lb.DEFAULT_SOURCE),
                            version=str(o.get("llamacpp_version", lb.DEFAULT_VERSION)),
                            backend=o.get("llamacpp_backend"), arch=o.get("llamacpp_arch"))

    def install(self, host: Host, plan: Plan, facts: HostFacts, layout: Layout,
                on_line: LineSink | None) -> Installed:
        key = self.build_key(facts)
        tarball = None
        if key.source == "tarball":
            local = self.options.get("llamacpp_tarball")
            if not local or not Path(local).is_file():
                raise BadInput("llamacpp_source=tarball needs the archive on this machine",
                               field="llamacpp_tarball",
                               fix="download the llama-cpp-python sdist or a llama.cpp source .tar.gz and give its path")
            tarball = f"{layout.cache}/llama.cpp/src/{Path(local).name}"
            upload_if_changed(host, Path(local), tarball, on_line)
        env = lb.build_env(key, cache=layout.cache, tarball=tarball, pypi_url=self.options.get("pypi_url"))
        script = infra_files.with_env(infra_files.read(lb.SCRIPT), env)
        r = host.run_script(script, check=False, timeout=float(self.options.get("build_timeout", 7200)),
                            on_line=on_line, retry_safe=True)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            raise EngineError(f"building llama.cpp {key.dirname} failed (exit {r.returncode}):\n{tail}",
                              field="engine", fix=_build_fix(r.stdout + r.stderr))
        bin_dir = lb.parse_bin_dir(r.stdout)
        info = json.loads(host.run(f"cat {shlex.quote(lb.key_dir(key, layout.cache))}/build.json").stdout)
        versions = {"llama.cpp": info.get("llama_cpp_commit", "?"), "llama.cpp_source": info.get("source_desc", "?"),
                    "llama.cpp_build": key.dirname}
        return Installed(serve_prefix=[f"{bin_dir}/llama-server"], versions=versions, skipped=lb.was_cached(r.stdout),
                         tools={"llama-bench": f"{bin_dir}/llama-bench", "llama-quantize": f"{bin_dir}/llama-quantize"})

    # ------------------------------------------------------------------ model

    def fetch_model(self, host: Host, plan: Plan, model: Model, layout: Layout, env: dict[str, str],
                    on_line: LineSink | None) -> ModelFiles:
        if not plan.gguf_file:
            raise BadInput(f"plan for {plan.model} names no GGUF file", field="quant",
                           fix="pick a GGUF quant (--quant Q4_K_M) or the vllm engine")
        folder = f"{layout.models}/{plan.repo}"
        path = f"{folder}/{plan.gguf_file}"
        if model.generated:
            quant = plan.quant or "F16"
            local = modelgen.make_model(model.id, quant)
            uploaded = upload_if_changed(host, local, path, on_line)
            return ModelFiles(ref=path, skipped=not uploaded)
        if self.options.get("model_source") == "hf":
            return ModelFiles(ref=f"{plan.repo}:{plan.quant}")  # llama-server downloads it at start
        skipped = True
        for filename in [plan.gguf_file, plan.mmproj_file]:
            if filename:
                skipped &= self._download(host, plan.repo, filename, f"{folder}/{filename}", env, on_line)
        mmproj = f"{folder}/{plan.mmproj_file}" if plan.mmproj_file else None
        return ModelFiles(ref=path, mmproj=mmproj, skipped=skipped)

    def _download(self, host: Host, repo: str, filename: str, dest: str, env: dict[str, str],
                  on_line: LineSink | None) -> bool:
        """Fetch one file on the host; True when it was already there."""
        endpoint = self.options.get("hf_endpoint")
        script = infra_files.with_env(infra_files.read("fetch-url.sh"),
                                      {"URL": hf_url(repo, filename, endpoint), "DEST": dest})
        r = host.run_script(script, env={k: v for k, v in env.items() if k == "HF_TOKEN"}, check=False,
                            on_line=on_line, timeout=float(self.options.get("download_timeout", 7200)), retry_safe=True)
        if r.returncode != 0:
            gated = "" if env.get("HF_TOKEN") else " (set HF_TOKEN in the environment if the repository is gated)"
            raise EngineError(f"downloading {repo}/{filename} failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}", field="repo",
                              fix=f"check that {repo} has {filename}{gated}")
        return "fetch: cached:" in r.stdout

    # ------------------------------------------------------------------ serve

    def argv(self, plan: Plan, model: Model, installed: Installed, files: ModelFiles) -> list[str]:
        binary = installed.serve_prefix[0]
        argv = llamacpp_argv(plan, model, binary=binary, model_path=files.ref, mmproj_path=files.mmproj)
        if self.options.get("model_source") == "hf" and not model.generated:
            i = argv.index("-m")
            argv[i:i + 2] = ["-hf", files.ref]
        return argv


def _build_fix(output: str) -> str:
    for line in output.splitlines():
        if "fix:" in line:
            return line.split("fix:", 1)[1].strip()
    if "nvcc" in output or "CUDA" in output:
        return "install the CUDA toolkit matching the driver (nvcc on PATH), or build for CPU: llamacpp_backend=cpu"
    return "read the build log under the host's cache folder (llama.cpp/<key>/build.log)"

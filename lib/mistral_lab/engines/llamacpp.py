"""llama.cpp on a Host: build llama-server (cached by source version, backend, GPU arch), fetch the GGUF, serve.

The build runs `infra/llamacpp-build.sh` on the host in one round trip; the model is downloaded on the host with
resume and progress (`infra/fetch-url.sh`) or left to llama-server's own `-hf repo:quant` download (option
`model_source: hf`). The API key never reaches the command line: llama-server reads LLAMA_API_KEY.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from mistral_lab import infra_files
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import LlamaCppRecipe
from mistral_lab.engines import llamacpp_build as lb
from mistral_lab.engines.base import Installed, Layout, ModelFiles
from mistral_lab.engines.weights import upload_changed
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import Host, HostFacts, LineSink
from mistral_lab.options import LlamaCppOptions
from mistral_lab.planning.resolve import Plan

__all__ = ["HF_ENDPOINT", "LlamaCppEngine", "hf_url"]

HF_ENDPOINT = "https://huggingface.co"
# Relative to the deployment's folder on the host (the service runs there), so the preview reads the same everywhere.
MODELS_DIR = "models"


def hf_url(repo: str, filename: str, endpoint: str | None = None, revision: str = "main") -> str:
    return f"{(endpoint or HF_ENDPOINT).rstrip('/')}/{repo}/resolve/{revision}/{filename}"


def _recipe(plan: Plan) -> LlamaCppRecipe:
    recipe = get_model(plan.model).engines.llamacpp
    if recipe is None:
        raise BadInput(f"{plan.model} has no llama.cpp recipe", field="engine", fix="use --engine vllm")
    return recipe


class LlamaCppEngine:
    name = "llamacpp"
    key_var = "LLAMA_API_KEY"
    weights: Literal["gguf"] = "gguf"

    def __init__(self, options: dict[str, Any] | LlamaCppOptions | None = None):
        self.options = LlamaCppOptions.of(options)

    @property
    def downloads_at_start(self) -> bool:
        """llama-server fetches the model itself (`-hf`), so only then does the server need HF_TOKEN."""
        return self.options.model_source == "hf"

    # ------------------------------------------------------------------ install

    def build_key(self, facts: HostFacts) -> lb.BuildKey:
        o = self.options
        return lb.build_key(facts, source=o.llamacpp_source, version=o.llamacpp_version or lb.DEFAULT_VERSION,
                            backend=o.llamacpp_backend, arch=o.llamacpp_arch)

    def install(self, host: Host, plan: Plan, facts: HostFacts, layout: Layout,
                on_line: LineSink | None) -> Installed:
        key = self.build_key(facts)
        o = self.options
        if on_line and (key.source != "pypi" or o.pypi_url):  # parameter files are code: say what gets built
            on_line(f"note: building llama.cpp from {o.llamacpp_tarball or o.pypi_url or key.source}, as the options "
                    "ask (not the pinned PyPI sdist)")
        tarball = None
        if key.source == "tarball":
            local = self.options.llamacpp_tarball
            if not local or not Path(local).is_file():
                raise BadInput("llamacpp_source=tarball needs the archive on this machine",
                               field="llamacpp_tarball",
                               fix="download the llama-cpp-python sdist or a llama.cpp source .tar.gz and give its path")
            tarball = f"{layout.cache}/llama.cpp/src/{Path(local).name}"
            upload_changed(host, {tarball: Path(local)}, on_line)
        env = lb.build_env(key, cache=layout.cache, tarball=tarball, pypi_url=self.options.pypi_url)
        script = infra_files.with_env(infra_files.read(lb.SCRIPT), env)
        r = host.run_script(script, check=False, timeout=self.options.build_timeout, on_line=on_line, retry_safe=True)
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

    def fetch_model(self, host: Host, plan: Plan, layout: Layout, env: dict[str, str],
                    on_line: LineSink | None) -> ModelFiles:
        if self.options.model_source == "hf":
            return self.planned_files(plan)  # llama-server downloads it at start
        folder = f"{layout.models}/{plan.repo}"
        skipped = True
        for filename in [plan.gguf_file, plan.mmproj_file]:
            if filename:
                skipped &= self._download(host, plan.repo, filename, f"{folder}/{filename}", env, on_line)
        mmproj = f"{folder}/{plan.mmproj_file}" if plan.mmproj_file else None
        return ModelFiles(ref=f"{folder}/{plan.gguf_file}", mmproj=mmproj, skipped=skipped)

    def _download(self, host: Host, repo: str, filename: str, dest: str, env: dict[str, str],
                  on_line: LineSink | None) -> bool:
        """Fetch one file on the host; True when it was already there."""
        script = infra_files.with_env(infra_files.read("fetch-url.sh"),
                                      {"URL": hf_url(repo, filename, self.options.hf_endpoint), "DEST": dest})
        r = host.run_script(script, env={k: v for k, v in env.items() if k == "HF_TOKEN"}, check=False,
                            on_line=on_line, timeout=self.options.download_timeout, retry_safe=True)
        if r.returncode != 0:
            gated = "" if env.get("HF_TOKEN") else " (set HF_TOKEN in the environment if the repository is gated)"
            raise EngineError(f"downloading {repo}/{filename} failed (exit {r.returncode}): "
                              f"{(r.stderr or r.stdout).strip().splitlines()[-1:]}", field="repo",
                              fix=f"check that {repo} has {filename}{gated}")
        return "fetch: cached:" in r.stdout

    # ------------------------------------------------------------------ serve

    def planned_files(self, plan: Plan) -> ModelFiles:
        """Where the weights will be before any host exists: relative to the deployment folder, or the hub."""
        if self.options.model_source == "hf":
            return ModelFiles(ref=f"{plan.repo}:{plan.quant}", hub=True)
        folder = f"{MODELS_DIR}/{plan.repo}"
        gguf = plan.gguf_file or plan.repo.split("/")[-1] + ".gguf"
        return ModelFiles(ref=f"{folder}/{gguf}", mmproj=f"{folder}/{plan.mmproj_file}" if plan.mmproj_file else None)

    def serve_argv(self, plan: Plan, files: ModelFiles | None = None, installed: Installed | None = None) -> list[str]:
        files = files or self.planned_files(plan)
        binary = installed.serve_prefix if installed else ["llama-server"]
        argv = [*binary, "-hf" if files.hub else "-m", files.ref, "--alias", plan.model,
                "--host", "127.0.0.1", "--port", str(plan.port)]
        if files.mmproj:
            argv += ["--mmproj", files.mmproj]
        # -c is the KV budget shared by all slots: give each of the parallel slots the planned context.
        argv += ["-c", str(plan.context * plan.concurrency), "-np", str(plan.concurrency)]
        if plan.gpu_vendor in ("nvidia", "amd"):
            argv += ["-ngl", "999"]
        if plan.kv_cache_dtype in ("q8_0", "q4_0"):
            argv += ["-ctk", plan.kv_cache_dtype, "-ctv", plan.kv_cache_dtype]
        argv += list(_recipe(plan).flags)
        argv += ["--temp", f"{plan.temperature:g}"]
        if plan.top_p is not None:
            argv += ["--top-p", f"{plan.top_p:g}"]
        return [*argv, "--metrics", *self.options.extra_args]


def _build_fix(output: str) -> str:
    for line in output.splitlines():
        if "fix:" in line:
            return line.split("fix:", 1)[1].strip()
    if "nvcc" in output or "CUDA" in output:
        return "install the CUDA toolkit matching the driver (nvcc on PATH), or build for CPU: llamacpp_backend=cpu"
    return "read the build log under the host's cache folder (llama.cpp/<key>/build.log)"

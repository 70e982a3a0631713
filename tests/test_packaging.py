"""The conda environment and pyproject list the same pinned dependencies; CI runs the README's test command;
notebooks are committed without outputs."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _split(spec: str) -> tuple[str, str]:
    """'ml_dtypes >= 0.4' -> ('ml-dtypes', '>=0.4'): pip and conda spell names and spacing differently."""
    spec = spec.split(";")[0].replace(" ", "")
    name = re.split(r"[<>=!~\[]", spec, maxsplit=1)[0]
    return name.lower().replace("_", "-"), spec[len(name):]


def _environment() -> tuple[dict[str, str], str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    have: dict[str, str] = {}
    python = ""
    for dep in env["dependencies"]:
        for spec in dep["pip"] if isinstance(dep, dict) else [dep]:
            if spec.startswith("-e"):
                continue
            name, version = _split(spec)
            if name == "python":
                python = version.lstrip("=")
            elif name != "pip":
                have[name] = version
    return have, python


def test_environment_yml_has_the_same_dependencies_and_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"])
    have, python = _environment()
    assert set(wanted) == set(have), (f"only in pyproject: {sorted(set(wanted) - set(have))}; "
                                      f"only in environment.yml: {sorted(set(have) - set(wanted))}")
    differ = {n: (wanted[n], have[n]) for n in wanted if wanted[n] != have[n]}
    assert not differ, f"pins differ (pyproject, environment.yml): {differ}"
    # conda's python=3.11 must be one pyproject accepts.
    floor = project["requires-python"].removeprefix(">=")
    assert tuple(map(int, python.split("."))) >= tuple(map(int, floor.split("."))), (python, floor)


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(make \w+)\s+#", readme, flags=re.M)
    assert commands[:2] == ["make demo", "make test"], commands
    ci = (ROOT / ".ci" / "run").read_text()
    (ran,) = [line.removeprefix("exec ").strip() for line in ci.splitlines() if line.startswith("exec ")]
    assert ran == "make test"
    makefile = (ROOT / "Makefile").read_text()
    test_recipe = makefile[makefile.index("\ntest:"):].split("\n\n")[0]
    # One run: the lint prerequisite (ruff), then pytest with xdist over the tests and nbval over the notebooks.
    assert "test: lint" in test_recipe and "ruff check" in makefile
    assert all(flag in test_recipe for flag in ("pytest", "-n ", "--nbval-lax", "tests", "notebooks"))
    assert re.search(r"^demo: setup$", makefile, flags=re.M) and re.search(r"^lint: setup$", makefile, flags=re.M)


def test_notebooks_are_committed_without_outputs_and_with_a_parameters_cell():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), nb_path.name
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), nb_path.name


def test_every_command_the_readme_shows_exists():
    import typer.main

    from mistral_lab.cli import app

    root = typer.main.get_command(app)
    shown = re.findall(r"mistral-lab ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", (ROOT / "README.md").read_text())
    assert shown
    for name, sub in shown:
        assert name in root.commands, f"README shows `mistral-lab {name}`, which does not exist"
        group = root.commands[name]
        if hasattr(group, "commands"):  # a command group: the next word is one of its commands
            assert sub in group.commands, f"README shows `mistral-lab {name} {sub}`, which does not exist"


def test_deploy_notebook_parameters_default_to_nothing_billable():
    nb = json.loads((ROOT / "notebooks" / "deploy.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    values: dict = {}
    exec("".join(cell["source"]), {}, values)  # plain assignments, as papermill overrides them
    assert (values["model"], values["target"], values["dry_run"]) == ("tiny-random", "local", False)
    assert {"model", "target", "engine", "gpu", "context", "concurrency", "name", "dry_run"} <= set(values)
    assert not any(k in values for k in ("token", "api_key", "hf_token")), "secrets are never parameters"

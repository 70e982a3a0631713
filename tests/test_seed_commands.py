"""Our rendered vLLM commands against the ones the seed documents (model cards and guides) print.

Every flag a seed's `vllm serve` command passes must be in ours with the same value, except the listen address
(we bind 127.0.0.1 behind an SSH tunnel on purpose) and the tensor-parallel size where DigitalOcean sells no
machine with that GPU count (1x and 8x only).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from mistral_lab.catalog import load_catalog
from mistral_lab.engines import get_engine
from mistral_lab.planning import PlanRequest, make_plan
from mistral_lab.planning.show import serve_preview

# The seeds live in the project workspace, beside the checkout; CI checks out the repository alone, so the commands
# are kept in tests/data, and checked against the seeds wherever those are at hand.
SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
KEPT = Path(__file__).resolve().parent / "data" / "seed_serve_commands.json"
IGNORED = {"--host", "--port"}


def _argv(plan) -> list[str]:
    """The serve command the plan's engine previews (its one author)."""
    return get_engine(plan.engine).serve_argv(plan)


def _seed_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted(SEEDS.glob("*.txt")):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if "vllm serve " not in line:
                continue
            cmd = line[line.index("vllm serve "):]
            while cmd.rstrip().endswith("\\") and i + 1 < len(lines):  # shell line continuations
                i += 1
                cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
            cmd = re.split(r"[\u3000-\u9fff]", cmd)[0]  # a guide's prose may follow on the same line
            found.append((path.name, cmd.replace(" \\ ", " ")))
    return found


def _flags(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            key = a.replace("_", "-")
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out[key] = argv[i + 1]
                i += 2
                continue
            out[key] = ""
        i += 1
    return out


def _norm(key: str, value: str) -> str:
    if key == "--limit-mm-per-prompt" and value.startswith("{"):
        return ",".join(f"{k}={v}" for k, v in json.loads(value).items())
    try:
        return f"{float(value):g}"  # 0.90 and 0.9 are the same number
    except ValueError:
        return value


def _model_for(repo: str) -> tuple[str, str, str]:
    for model in load_catalog().models:
        for variant in model.variants:
            for w in variant.weights:
                if w.repo == repo:
                    return model.id, variant.id, w.precision
    raise AssertionError(f"no catalog model has the repo {repo}")


COMMANDS = [(c["seed"], c["command"]) for c in json.loads(KEPT.read_text())["commands"]]


def test_the_seeds_hold_serve_commands():
    assert len(COMMANDS) >= 3, COMMANDS
    assert {seed for seed, _ in COMMANDS} >= {"001_d9ebe039e2535e48.txt"}


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the workspace's seeds are not beside this checkout")
def test_the_kept_commands_are_the_seeds_commands():
    assert _seed_commands() == COMMANDS, f"regenerate {KEPT.name} from the seeds"


@pytest.mark.parametrize(("seed", "command"), COMMANDS, ids=[f"{s}:{i}" for i, (s, _) in enumerate(COMMANDS)])
def test_rendered_command_carries_every_flag_of_the_seed(seed, command):
    argv = shlex.split(command)
    repo = argv[2]
    seed_flags = _flags(argv[3:])
    model_id, variant, precision = _model_for(repo)
    tp = int(seed_flags.get("--tensor-parallel-size", "1"))
    gpu = "gpu-h100x8-640gb" if tp > 1 else "gpu-h100x1-80gb"
    vision = "--limit-mm-per-prompt" in seed_flags
    req = PlanRequest(model=model_id, variant=variant, precision=precision, engine="vllm", target="digitalocean",
                      gpu=gpu, context=int(seed_flags.get("--max-model-len", 4096)), vision=vision)
    plan = make_plan(req)
    ours = _flags(_argv(plan)[3:])
    assert _argv(plan)[:3] == ["vllm", "serve", repo]
    for key, value in seed_flags.items():
        if key in IGNORED or (key == "--tensor-parallel-size" and plan.gpu_count != tp):
            continue
        assert key in ours, f"{seed}: {key} missing from {serve_preview(plan)}"
        assert _norm(key, ours[key]) == _norm(key, value), f"{seed}: {key} {ours[key]!r} != {value!r}"
    assert ours["--host"] == "127.0.0.1"

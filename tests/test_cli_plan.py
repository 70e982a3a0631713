"""`mistral-lab models` and `mistral-lab plan` as a user runs them: the real console script, exit codes, JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CLI = [str(Path(sys.executable).with_name("mistral-lab"))]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_models_json_lists_every_id():
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    ids = [m["id"] for m in json.loads(r.stdout)]
    assert "tiny-random" in ids and "ministral-3b" in ids and len(ids) == len(set(ids))


def test_plan_json_has_the_contract_fields():
    r = run("plan", "ministral-3b", "--target", "digitalocean", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    for key in ("model", "variant", "engine", "gpu", "fits", "memory", "hourly_usd", "serve_command"):
        assert key in plan, key
    assert plan["fits"] is True and plan["hourly_usd"] > 0
    assert set(plan["memory"]) >= {"weights_gb", "kv_cache_gb", "overhead_gb", "total_gb", "available_gb"}
    assert plan["serve_command"].startswith("vllm serve mistralai/")


def test_unknown_model_exits_2_with_the_close_names():
    r = run("plan", "ministal-3b")
    assert r.returncode == 2
    assert "ministral-3b" in r.stderr and "Traceback" not in r.stderr


def test_does_not_fit_exits_2_with_needed_and_available():
    r = run("plan", "ministral-3b", "--target", "digitalocean", "--gpu", "rtx4000ada", "--context", "262144",
            "--concurrency", "4")
    assert r.returncode == 2
    assert "needs" in r.stderr and "GB usable" in r.stderr and "cheapest size that fits" in r.stderr


def test_bad_option_value_exits_2_naming_the_field():
    r = run("plan", "ministral-3b", "--target", "aws")
    assert r.returncode == 2 and "target" in r.stderr


def test_a_typo_in_the_model_id_names_the_intended_one():
    r = run("plan", "mistral-lage-3")
    assert r.returncode == 2 and r.stdout == ""
    assert "model" in r.stderr and "'mistral-lage-3'" in r.stderr
    assert "did you mean mistral-large-3" in r.stderr


def test_every_plan_option_reaches_the_plan():
    r = run("plan", "ministral-8b", "--target", "digitalocean", "--engine", "llamacpp", "--gpu", "l40s",
            "--context", "8192", "--concurrency", "2", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["target"], plan["engine"], plan["gpu"]) == ("digitalocean", "llamacpp", "gpu-l40sx1-48gb")
    assert (plan["context"], plan["concurrency"], plan["precision"]) == (8192, 2, "gguf")
    assert plan["hourly_usd"] == 1.57 and plan["serve_command"].startswith("llama-server ")


def test_a_plan_that_does_not_fit_still_prints_its_json_and_exits_2():
    r = run("plan", "ministral-14b", "--target", "digitalocean", "--gpu", "gpu-4000adax1-20gb", "--context", "262144",
            "--json")
    assert r.returncode == 2
    plan = json.loads(r.stdout)
    assert plan["fits"] is False and plan["memory"]["total_gb"] > plan["memory"]["available_gb"]
    assert "cheapest size that fits" in r.stderr


def test_usage_errors_exit_2_with_a_message_not_a_traceback():
    for args, says in [(("plan", "ministral-3b", "--context", "abc"), "--context"),
                       (("plan",), "Missing argument 'model'"),
                       (("no-such-command",), "No such command"),
                       (("hosts", "sweep"), "No such command 'sweep'")]:
        r = run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert says in r.stderr and "Traceback" not in r.stderr + r.stdout, (args, r.stderr)


def test_errors_print_user_text_as_it_is_not_as_markup():
    """A deployment name with brackets, as a host like [::1]:2222 or a server's message may have: printed as is,
    and no MarkupError on a closing tag."""
    for name in ("[/x]", "[host]:2222"):
        r = run("teardown", name, "--yes")
        assert r.returncode == 2 and f"invalid deployment name {name!r}" in r.stderr, r.stderr

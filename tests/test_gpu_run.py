"""benchmarks/gpu_run.sh, the packed run for a lent GPU: its dry run on this machine's CPU build, end to end, and
the pure parts of its Python half (benchmarks/gpu/gpu_bench.py) and of the wheel list (benchmarks/gpu/wheels.py).

The dry run is every step the GPU run takes (tools, imports, bandwidth, make-model, llama-quantize, llama-bench,
llama-server, the served sweep through mistral_lab.bench, the report and its plot) with tiny-random, a short
sweep, and a bandwidth and a GPU line marked FAKE: a typo in any step fails here, not on the first GPU call.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
PACK = ROOT / "benchmarks" / "gpu" / "pack.sh"
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

import gpu_bench as gb  # noqa: E402
import wheels  # noqa: E402

DRY_RUN_TIMEOUT_S = 600


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True,
                          timeout=DRY_RUN_TIMEOUT_S)


# ---- the dry run ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(llamacpp_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    tmp = tmp_path_factory.mktemp("gpu-dry")
    out = tmp / "out"
    r = _run(tmp, "--dry-run", "--out", str(out), LLAMACPP_BIN=str(llamacpp_bin), BUDGET_S="400")
    return r, out


def test_dry_run_passes_and_writes_one_json_one_png_one_log(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.json", "gpu_run.log", "gpu_run.png"]
    png = (out / "gpu_run.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "done in" in (out / "gpu_run.log").read_text()


def test_dry_run_labels_its_stand_ins(dry_run):
    doc = json.loads((dry_run[1] / "gpu_run.json").read_text())
    assert doc["dry_run"] is True and doc["run"]["mode"] == "dry-run"
    assert doc["bandwidth"]["fake"] is True and doc["bandwidth"]["method"].startswith("FAKE")
    assert "FAKE" in doc["gpu"]["name"]
    # the stand-in GPU line goes through the same datasheet lookup a real nvidia-smi line does
    assert doc["bandwidth"]["datasheet_gbs"] == 3350 and doc["gpu"]["datasheet"]["key"] == "h100"


def test_dry_run_measures_every_model_against_both_rooflines(dry_run):
    doc = json.loads((dry_run[1] / "gpu_run.json").read_text())
    rows = {(m["like"], m["quant"]): m for m in doc["models"]}
    assert set(rows) == {("tiny-random", q) for q in ("BF16", "Q8_0", "Q4_K_M")}
    for (_, quant), m in rows.items():
        assert "skipped" not in m, m
        assert m["make"].startswith("make-model --like tiny-random" if quant == "BF16" else f"llama-quantize {quant}")
        facts = m["facts"]
        assert 0 < facts["read_bytes_per_token"] <= facts["file_bytes"] and facts["kv_bytes_per_token"] > 0
        tg, pp = m["llama_bench"]["tg128"], m["llama_bench"]["pp512"]
        assert tg["tokens_per_s"] > 0 and pp["tokens_per_s"] > 0
        assert tg["pct_measured_bw"] is not None and tg["pct_datasheet_bw"] is not None
        assert pp["pct_bf16_compute"] is not None
        assert [p["concurrency"] for p in m["sweep"]] == [1, 4]
        for p in m["sweep"]:
            assert p["errors"] == 0 and p["output_tokens_per_s"] > 0
            assert p["pct_measured_bw"] is not None and p["pct_datasheet_bw"] is not None
    # the quantized files are smaller than BF16: llama-quantize ran on what make-model wrote
    assert rows[("tiny-random", "Q4_K_M")]["facts"]["file_bytes"] < rows[("tiny-random", "BF16")]["facts"]["file_bytes"]


def _stand_in_pack(dist: Path, llamacpp_bin: Path) -> None:
    """What benchmarks/gpu/pack.sh makes, from the CPU build: the archive layout, one wheel, a manifest."""
    stage = dist / "stage" / "llama.cpp"
    stage.mkdir(parents=True)
    for name in ("llama-server", "llama-bench", "llama-quantize"):
        shutil.copy2(llamacpp_bin / name, stage / name)
    shutil.copy2(llamacpp_bin.parent / "build.json", stage / "build.json")
    with tarfile.open(dist / "llama.cpp-cuda-sm90.tar.xz", "w:xz", preset=0) as tar:
        tar.add(stage, arcname="llama.cpp")
    shutil.rmtree(dist / "stage")
    (dist / "wheels").mkdir()
    info = "rehearsal_probe-0.0.0.dist-info"
    with zipfile.ZipFile(dist / "wheels" / "rehearsal_probe-0.0.0-py3-none-any.whl", "w") as whl:
        whl.writestr("rehearsal_probe.py", "CARRIED = True\n")
        whl.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: rehearsal-probe\nVersion: 0.0.0\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")
    (dist / "manifest.json").write_text(json.dumps({"archive": "llama.cpp-cuda-sm90.tar.xz", "stand_in": True}))


def test_rehearsal_of_the_gpu_path_with_a_stand_in_pack(llamacpp_bin, tmp_path):
    # unpacking, the wheels' install, the library lookup and nvidia-smi's line: the steps the dry run skips
    dist, fake = tmp_path / "dist", tmp_path / "fake-bin"
    _stand_in_pack(dist, llamacpp_bin)
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3 (FAKE: rehearsal), 81559 MiB, 580.00'\n")
    smi.chmod(0o755)
    out = tmp_path / "out"
    r = _run(tmp_path, "--rehearse", "--out", str(out), GPU_DIST=str(dist), PATH=f"{fake}:{os.environ['PATH']}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads((out / "gpu_run.json").read_text())
    assert doc["run"]["mode"] == "rehearsal" and doc["dry_run"] is True and doc["bandwidth"]["fake"] is True
    assert doc["gpu"]["name"] == "NVIDIA H100 80GB HBM3 (FAKE: rehearsal)" and doc["gpu"]["driver"] == "580.00"
    assert doc["pack"]["stand_in"] is True and doc["llama_cpp_build"]["backend"] == "cpu"
    assert [m["quant"] for m in doc["models"]] == ["BF16", "Q8_0", "Q4_K_M"]
    assert all("skipped" not in m and m["sweep"] for m in doc["models"])


def test_gpu_mode_without_the_pack_says_how_to_make_it(tmp_path):
    r = _run(tmp_path, "--out", str(tmp_path / "out"), GPU_DIST=str(tmp_path / "no-dist"))
    assert r.returncode == 2
    assert "benchmarks/gpu/pack.sh" in r.stdout and "carry benchmarks/gpu/dist" in r.stdout


def test_out_is_required(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--out DIR" in r.stderr


def test_header_holds_the_device_command_and_the_pack_is_git_ignored():
    text = SCRIPT.read_text()
    assert 'command  bash benchmarks/gpu_run.sh --out "$OUT"' in text
    assert 'carry    ["benchmarks/gpu/dist"]' in text
    ignored = subprocess.run(["git", "check-ignore", "-q", "benchmarks/gpu/dist/llama.cpp-cuda-sm90.tar.xz"],
                             cwd=ROOT)
    assert ignored.returncode == 0, "the packed llama.cpp build must never be committed"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by make test's setup")
def test_scripts_are_shellcheck_clean():
    r = subprocess.run(["shellcheck", str(SCRIPT), str(PACK)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


# ---- pure parts ----------------------------------------------------------------------------------------------

META = {"general.architecture": "mistral3", "mistral3.block_count": 2, "mistral3.attention.head_count": 4,
        "mistral3.attention.head_count_kv": 2, "mistral3.attention.key_length": 64,
        "mistral3.embedding_length": 256}


def _tensors(untied: bool) -> list[tuple[str, tuple[int, ...], int]]:
    t = [("token_embd.weight", (1024, 256), 1024 * 256 * 2), ("blk.0.attn_q.weight", (256, 256), 256 * 256 * 2),
         ("blk.0.attn_norm.weight", (256,), 256 * 4)]
    return t + [("output.weight", (1024, 256), 1024 * 256 * 2)] if untied else t


def test_model_facts_leave_out_an_untied_input_embedding():
    tied = gb.model_facts(_tensors(False), META, 10**6)
    untied = gb.model_facts(_tensors(True), META, 10**6)
    assert tied.tied_embeddings and not untied.tied_embeddings
    # tied: the embedding is the output matrix, read whole; untied: one row of the input embedding per token
    assert tied.read_bytes_per_token == 1024 * 256 * 2 + 256 * 256 * 2 + 256 * 4
    assert untied.read_bytes_per_token == tied.read_bytes_per_token
    assert untied.matmul_params == 1024 * 256 + 256 * 256  # norms are not multiplied
    assert tied.kv_bytes_per_token == 2 * 2 * (64 + 64) * 2  # layers x kv heads x (K + V) x f16


def test_decode_ceiling_counts_weights_once_and_kv_per_stream():
    facts = gb.ModelFacts(file_bytes=0, read_bytes_per_token=2 * 10**9, matmul_params=10**9,
                          kv_bytes_per_token=100_000, tied_embeddings=True)
    assert gb.decode_ceiling(3350, facts, 1, 0) == pytest.approx(1675.0)
    # 16 streams at 1,000 cached tokens add 1.6 GB to each step
    assert gb.decode_ceiling(3350, facts, 16, 1000) == pytest.approx(3350e9 / 3.6e9)
    ceilings = gb.prefill_ceilings(3350, 989.0, facts)
    assert ceilings["memory_tokens_per_s"] == pytest.approx(512 * 1675.0)
    assert ceilings["compute_tokens_per_s"] == pytest.approx(989e12 / 2e9)
    assert gb.pct(837.5, 1675.0) == 50.0 and gb.pct(None, 1.0) is None and gb.pct(1.0, None) is None


def test_llama_bench_json_rows():
    records = [{"n_prompt": 512, "n_gen": 0, "avg_ts": 9000.5, "stddev_ts": 10.0, "model_n_params": 3},
               {"n_prompt": 0, "n_gen": 128, "avg_ts": 250.25, "stddev_ts": 1.0}]
    rows = gb.llama_bench_rows(records)
    assert rows["pp512"]["tokens_per_s"] == 9000.5 and rows["tg128"]["tokens_per_s"] == 250.25


def test_model_row_puts_measured_and_datasheet_side_by_side():
    facts = gb.ModelFacts(file_bytes=0, read_bytes_per_token=10**9, matmul_params=5 * 10**8,
                          kv_bytes_per_token=0, tied_embeddings=True)
    bw = gb.Bandwidth(measured_gbs=3000, method="m", datasheet_gbs=3350, datasheet_source="s", fake=False)
    entry = {"like": "x", "quant": "BF16", "llama_bench": {"tg128": {"tokens_per_s": 1500.0}},
             "sweep": [{"concurrency": 4, "decode_tokens_per_s": 600.0}]}
    row = gb.model_row(entry, facts, bw, 989.0)
    assert row["llama_bench"]["tg128"]["pct_measured_bw"] == 50.0
    assert row["llama_bench"]["tg128"]["pct_datasheet_bw"] == pytest.approx(44.8)
    assert row["sweep"][0]["pct_measured_bw"] == 20.0


def test_cuda_lib_dirs_find_the_wheels_beside_torch(tmp_path):
    for sub, lib in (("cu13", "libcublas.so.13"), ("cuda_runtime", "libcudart.so.12"), ("cudnn", "libcudnn.so.9")):
        d = tmp_path / "nvidia" / sub / "lib"
        d.mkdir(parents=True)
        (d / lib).write_bytes(b"")
    found = gb.cuda_lib_dirs([str(tmp_path)])
    assert str(tmp_path / "nvidia" / "cu13" / "lib") in found
    assert str(tmp_path / "nvidia" / "cuda_runtime" / "lib") in found
    assert not any("cudnn" in d for d in found)


def test_sweep_rows_take_the_median_of_repeats():
    pts = [{"concurrency": 4, "requests": 8, "errors": 0, "output_tokens_per_s": v, "decode_tokens_per_s": v / 4,
            "server_decode_tokens_per_s": None, "ttft_s_p50": 0.1} for v in (300.0, 100.0, 200.0)]
    pts.append({"concurrency": 1, "requests": 8, "errors": 1, "output_tokens_per_s": 90.0,
                "decode_tokens_per_s": 95.0, "server_decode_tokens_per_s": 96.0, "ttft_s_p50": 0.05})
    rows = gb.sweep_points(pts)
    assert [r["concurrency"] for r in rows] == [1, 4]
    assert rows[1]["output_tokens_per_s"] == 200.0 and rows[1]["repeats"] == 3 and rows[1]["requests"] == 24
    assert rows[1]["server_decode_tokens_per_s"] is None and rows[0]["errors"] == 1


def test_sweep_options_go_only_where_the_benchmark_takes_them():
    full = gb.bench_kwargs({"repeats", "stop_at_knee", "duration_s", "requests", "native_bench", "plots",
                            "progress"}, duration=6.0, requests=None)
    assert full["repeats"] == 1 and full["stop_at_knee"] is False and full["duration_s"] == 6.0
    assert gb.bench_kwargs({"duration_s"}, duration=6.0, requests=4) == {"duration_s": 6.0}


def test_wheels_leave_the_devices_numeric_stack_alone():
    imported = {"numpy": "2.4.6", "pydantic": "2.14.4", "gguf": "0.19.0", "matplotlib": "3.10", "ipython": "9"}
    assert wheels.to_carry(imported) == {"gguf": "0.19.0", "pydantic": "2.14.4"}

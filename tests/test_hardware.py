"""The GPU table and DigitalOcean sizes the planner works from (shared/research/digitalocean.md §1.1-1.2)."""

from __future__ import annotations

import re

import pytest

from mistral_lab import hardware
from mistral_lab.errors import BadInput

# GPU -> the DigitalOcean self-serve slugs selling it, 1x and 8x where DO sells both (research §1.1).
DO_SLUGS = {
    "rtx4000ada": ["gpu-4000adax1-20gb"],
    "rtx6000ada": ["gpu-6000adax1-48gb"],
    "l40s": ["gpu-l40sx1-48gb"],
    "h100": ["gpu-h100x1-80gb", "gpu-h100x8-640gb"],
    "h200": ["gpu-h200x1-141gb", "gpu-h200x8-1128gb"],
    "mi300x": ["gpu-mi300x1-192gb", "gpu-mi300x8-1536gb"],
}


def test_every_gpu_the_issue_names_has_its_numbers():
    assert set(hardware.GPUS) == set(DO_SLUGS)
    for key, gpu in hardware.GPUS.items():
        assert gpu.memory_gb > 0 and gpu.bandwidth_gbs and gpu.bf16_tflops and gpu.fp8_tflops, key
        # Dense figures: FP8 tensor throughput is twice BF16 on all of these.
        assert gpu.fp8_tflops == pytest.approx(2 * gpu.bf16_tflops, rel=0.02), key
        assert gpu.fp8 and not gpu.fp4, f"{key}: FP8 tensor cores yes, FP4 (Blackwell, MI355X) no"
        assert gpu.source.startswith("https://"), key


@pytest.mark.parametrize("key", list(DO_SLUGS))
def test_each_do_size_matches_its_slug_and_carries_a_dated_price(key):
    sizes = [s for s in hardware.DO_SIZES.values() if s.gpu.key == key]
    assert sorted(s.slug for s in sizes) == sorted(DO_SLUGS[key])
    for s in sizes:
        count, total_gb = re.fullmatch(r"gpu-[a-z0-9]+x(\d+)-(\d+)gb", s.slug).groups()
        assert s.count == int(count) and s.memory_gb == pytest.approx(int(total_gb), abs=1), s.slug
        assert s.hourly_usd and s.hourly_usd > 0 and s.price_source and s.regions, s.slug
        assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", s.price_date), s.slug
    if len(sizes) == 2:
        one, eight = sorted(sizes, key=lambda s: s.count)
        assert eight.hourly_usd == pytest.approx(8 * one.hourly_usd, rel=0.15), "8x is priced per GPU"


def test_sizes_resolve_from_slugs_names_and_counts():
    assert hardware.resolve_size("gpu-h100x8-640gb") is hardware.DO_SIZES["gpu-h100x8-640gb"]
    assert hardware.resolve_size("8xh200").slug == "gpu-h200x8-1128gb"
    assert hardware.resolve_size("h200x8").slug == "gpu-h200x8-1128gb"
    assert hardware.resolve_size("4000ada").slug == "gpu-4000adax1-20gb"
    off_do = hardware.resolve_size("4xh100")  # not sold by DO: still plannable, with no price
    assert (off_do.count, off_do.hourly_usd) == (4, None)
    with pytest.raises(BadInput) as e:
        hardware.resolve_size("a100")
    assert e.value.field == "gpu" and "gpu-h100x1-80gb" in str(e.value)


def test_host_gpus_are_matched_to_the_table_by_their_reported_names():
    h100 = hardware.size_from_gpus(["NVIDIA H100 80GB HBM3"] * 8, [81559] * 8)
    assert (h100.gpu.key, h100.count) == ("h100", 8)
    assert h100.gpu.memory_gb == pytest.approx(81559 * 2**20 / 1e9)  # what the host reports wins
    assert hardware.size_from_gpus(["NVIDIA RTX 6000 Ada Generation"], [49140]).gpu.key == "rtx6000ada"
    assert hardware.size_from_gpus(["AMD Instinct MI300X OAM"], [196288]).gpu.key == "mi300x"
    unknown = hardware.size_from_gpus(["NVIDIA A10"], [23028])
    assert unknown.gpu.key == "unknown" and unknown.gpu.vendor == "nvidia"

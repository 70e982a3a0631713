"""What the fake sells: sizes, images and regions, shaped like DigitalOcean's `/v2/sizes`, `/v2/images`, `/v2/regions`.

Field names follow the `digitalocean/openapi` spec (specification/resources/sizes/models/{size,gpu_info,disk_info}.yml,
regions/models/region.yml, images in droplets/responses/examples.yml). GPU hourly prices, descriptions and
shapes are the real `/v2/sizes` as public dumps show it (read 2026-12-07): `doctl compute size list` output
quoted in the READMEs of the container images docker.io/polymathrobotics/doctl and docker.io/boxcutter/doctl,
and the recorded response in https://github.com/dstackai/gpuhunt (src/tests/providers/test_digitalocean.py).
Those show two things a guess would get wrong:

- `price_monthly` is `price_hourly` x 744 for GPU sizes (gpu-h100x8-640gb: 23.92/h, 17796.48/month) but x 672
  for the others (the spec's own example, 0.00744/h and 5.00/month; c2-60vcpu-120gb-intel 2.72917/h, 1834.00);
- `gpu_info.vram.amount` is the droplet's total: 640 for the 8 x 80 GiB H100 size, 1536 for 8 x MI300X.

The two CPU sizes are the spec's examples, offered in the regions tests use.
"""

from __future__ import annotations

from typing import Any

REGION_NAMES = {
    "nyc1": "New York 1", "nyc2": "New York 2", "nyc3": "New York 3", "ams3": "Amsterdam 3", "tor1": "Toronto 1",
    "atl1": "Atlanta 1", "sfo3": "San Francisco 3", "fra1": "Frankfurt 1", "lon1": "London 1",
}


def _disk(local_gib: int, scratch_gib: int | None = None) -> list[dict[str, Any]]:
    disks = [{"type": "local", "size": {"amount": local_gib, "unit": "gib"}}]
    if scratch_gib:
        disks.append({"type": "scratch", "size": {"amount": scratch_gib, "unit": "gib"}})
    return disks


GPU_HOURS_A_MONTH = 744
CPU_HOURS_A_MONTH = 672


def monthly_price(hourly: float, *, gpu: bool) -> float:
    return round(hourly * (GPU_HOURS_A_MONTH if gpu else CPU_HOURS_A_MONTH), 2)


def _gpu_size(slug: str, description: str, memory_gib: int, vcpus: int, disk: int, scratch: int | None,
              transfer: float, hourly: float, regions: list[str], count: int, vram_gib_each: int,
              model: str) -> dict[str, Any]:
    return {
        "slug": slug,
        "memory": memory_gib * 1024,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": transfer,
        "price_monthly": monthly_price(hourly, gpu=True),
        "price_hourly": hourly,
        "regions": regions,
        "available": True,
        "description": description,
        "disk_info": _disk(disk, scratch),
        "gpu_info": {"count": count, "vram": {"amount": count * vram_gib_each, "unit": "gib"},
                     "model": model},
    }


def sizes() -> list[dict[str, Any]]:
    cpu_regions = ["nyc1", "nyc3", "ams3", "tor1", "sfo3", "fra1", "lon1"]
    return [
        {"slug": "s-1vcpu-1gb", "memory": 1024, "vcpus": 1, "disk": 25, "transfer": 1.0, "price_monthly": 6.0,
         "price_hourly": 0.00893, "regions": cpu_regions, "available": True, "description": "Basic",
         "disk_info": _disk(25)},
        {"slug": "s-2vcpu-4gb", "memory": 4096, "vcpus": 2, "disk": 80, "transfer": 4.0, "price_monthly": 24.0,
         "price_hourly": 0.03571, "regions": cpu_regions, "available": True, "description": "Basic",
         "disk_info": _disk(80)},
        _gpu_size("gpu-4000adax1-20gb", "RTX 4000 Ada GPU - 1X", 32, 8, 500, None, 10, 0.76, ["tor1"], 1, 20,
                  "nvidia_rtx_4000_ada"),
        _gpu_size("gpu-6000adax1-48gb", "RTX 6000 Ada GPU - 1X", 64, 8, 500, None, 10, 1.57, ["tor1"], 1, 48,
                  "nvidia_rtx6000_ada"),
        _gpu_size("gpu-l40sx1-48gb", "L40S GPU - 1X", 64, 8, 500, None, 10, 1.57, ["tor1"], 1, 48, "nvidia_l40s"),
        _gpu_size("gpu-h100x1-80gb", "H100 GPU - 1X", 240, 20, 720, 5120, 15, 3.39, ["nyc2", "ams3", "tor1"], 1, 80,
                  "nvidia_h100"),
        _gpu_size("gpu-h100x8-640gb", "H100 GPU - 8X", 1920, 160, 2046, 40960, 60, 23.92, ["nyc2", "ams3", "tor1"],
                  8, 80, "nvidia_h100"),
        _gpu_size("gpu-h200x1-141gb", "Nvidia H200 - 1X", 240, 24, 720, 5120, 15, 3.44, ["nyc2", "atl1"],
                  1, 141, "nvidia_h200"),
        _gpu_size("gpu-h200x8-1128gb", "Nvidia H200 - 8X", 1920, 192, 2046, 40960, 60, 27.52,
                  ["nyc2", "atl1"], 8, 141, "nvidia_h200"),
        _gpu_size("gpu-mi300x1-192gb", "AMD MI300X - 1X", 240, 20, 720, 5120, 15, 1.99, ["atl1"], 1, 192,
                  "amd_mi300x"),
        _gpu_size("gpu-mi300x8-1536gb", "AMD MI300X - 8X", 1920, 160, 2046, 40960, 60, 15.92, ["atl1"],
                  8, 192, "amd_mi300x"),
    ]


def images() -> list[dict[str, Any]]:
    everywhere = sorted(REGION_NAMES)

    def image(id_: int, name: str, slug: str, description: str, min_disk: int, size_gb: float) -> dict[str, Any]:
        return {"id": id_, "name": name, "distribution": "Ubuntu", "slug": slug, "public": True,
                "regions": everywhere, "created_at": "2025-12-01T00:00:00Z", "type": "base",
                "min_disk_size": min_disk, "size_gigabytes": size_gb, "description": description, "tags": [],
                "status": "available", "error_message": ""}

    return [
        image(170000001, "24.04 (LTS) x64", "ubuntu-24-04-x64", "Ubuntu 24.04 (LTS) x64", 15, 2.44),
        image(203838782, "NVIDIA AI/ML Ready", "gpu-h100x1-base", "GPU H100 1x Base Image", 25, 18.47),
        image(203839248, "NVIDIA AI/ML Ready with NVLink", "gpu-h100x8-base", "GPU H100 8x Base Image", 30, 21.0),
        image(203838208, "AMD AI/ML Ready", "gpu-amd-base", "AMD GPU Base Image", 30, 24.0),
    ]


def regions(all_sizes: list[dict[str, Any]], *,
            closed: set[str] | frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """`closed`: regions where new droplets are refused; the API shows them `available: false`."""
    return [
        {"name": name, "slug": slug,
         "features": ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"],
         "available": slug not in closed, "sizes": [s["slug"] for s in all_sizes if slug in s["regions"]]}
        for slug, name in sorted(REGION_NAMES.items())
    ]

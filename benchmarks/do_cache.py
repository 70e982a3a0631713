"""Deploy time per phase on DigitalOcean with and without a cache volume, on the fake API (tests/fakedo): its
droplets are real sshd servers on this machine, its volumes real loop devices (root only), and the weights come
from a stand-in Hugging Face serving at a stated bandwidth (tests/fakedo/hf.py).

Three deploys of Ministral 3B (llama.cpp; the file served is the tiny-random GGUF padded to --file-mib, which
llama-server loads as it is), each torn down after, repeated --runs times:

  no cache        host cache a plain folder on the droplet: the weights are downloaded;
  cache, first    `cache_volume`: a new volume is created, attached, mounted at the host cache, downloaded into;
  cache, repeat   the next deploy in the region attaches that volume: the model step finds the weights.

Every scenario starts with the llama.cpp CPU build already in its host cache (a new volume is seeded with it;
building takes about 8 minutes here), so the install step is "already done" everywhere and the difference is the
cache's: the download it saves, and the attach and mount it adds to provision. A seeded volume has a filesystem
already, so the first mount's mkfs is measured apart: one provision on a blank volume of the same size. The fake's droplets boot in
--polls looks at --poll-interval seconds, nothing like DigitalOcean's minutes: compare the phases, not the totals.

    sudo .venv/bin/python benchmarks/do_cache.py [--runs 2] [--file-mib 512] [--mib-per-s 64]

Writes benchmarks/results/do_cache.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fakedo  # noqa: E402
import mistral_lab as ml  # noqa: E402
from fakedo.hf import serve_files  # noqa: E402
from fakedo.sshd_backend import SshdBackend, droplet_user  # noqa: E402
from fakedo.volume_backend import LoopVolumes  # noqa: E402
from llamacpp_fixtures import CACHE, LLAMACPP_KEY, run_build  # noqa: E402
from mistral_lab import modelgen, state  # noqa: E402
from mistral_lab.engines import llamacpp_build as lb  # noqa: E402
from mistral_lab.hosts import do_volumes as vols  # noqa: E402
from mistral_lab.hosts.base import ProvisionRequest  # noqa: E402
from mistral_lab.hosts.digitalocean import DigitalOceanTarget  # noqa: E402
from mistral_lab.planning import PlanRequest, make_plan  # noqa: E402

OWNER = "bench"
GPU = "gpu-h100x1-80gb"
SCENARIOS = ("no cache", "cache, first", "cache, repeat")


def _request(name: str) -> PlanRequest:
    return PlanRequest(model="ministral-3b", target="digitalocean", name=name, engine="llamacpp", gpu=GPU,
                       context=4096, vision=False)


def _build_tree(root: Path) -> Path:
    """The cached llama.cpp CPU build laid out as a host cache holds it, readable by the droplet's users."""
    if run_build().returncode != 0:
        raise SystemExit("the llama.cpp build failed; run the tests' build first")
    src, dst = Path(lb.key_dir(LLAMACPP_KEY, str(CACHE))), Path(lb.key_dir(LLAMACPP_KEY, str(root)))
    dst.mkdir(parents=True)
    shutil.copytree(src / "bin", dst / "bin")
    shutil.copy(src / "build.json", dst / "build.json")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o777 if p.is_dir() or os.access(p, os.X_OK) else 0o666)
    return root


def _padded_model(path: Path, mib: int) -> Path:
    """The tiny-random GGUF with zeros after its tensor data (llama.cpp reads tensors by offset), `mib` MiB long."""
    shutil.copy(modelgen.make_model("tiny-random", "F16"), path)
    with open(path, "r+b") as f:
        f.truncate(max(mib << 20, path.stat().st_size))
    return path


def _fresh_dir(prefix: str, seed: Path | None = None) -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    if seed is not None:
        shutil.copytree(seed, d, dirs_exist_ok=True)
    return d


def _deploy_and_teardown(label: str, name: str, options: dict, fake) -> dict:
    start = len(fake.log)
    t0 = time.monotonic()
    dep = ml.deploy(_request(name), options=options, say=lambda line: print(f"[{label}] {line}", flush=True))
    total = time.monotonic() - t0
    t1 = time.monotonic()
    report = ml.teardown(name, say=lambda line: print(f"[{label}] {line}", flush=True))
    routes = Counter(e.route for e in fake.log[start:] if "/v2/volumes" in e.route)
    cache = dep.host.extra.get("cache_volume") or {}
    return {
        "deploy_s": round(total, 2), "teardown_s": round(time.monotonic() - t1, 2),
        "phases": {t.step: {"seconds": round(t.seconds, 2), "skipped": t.skipped} for t in dep.timings},
        "volume": {k: cache.get(k) for k in ("attach_s", "mount_s", "formatted", "size_gib")} if cache else None,
        "kept": report.kept, "volume_calls": dict(sorted(routes.items())),
    }


def _first_mount(work: Path, token: str, size_gib: int, args: argparse.Namespace) -> dict:
    """One provision with a cache on a blank volume: the attach, and the mount with its mkfs.ext4."""
    devices, mount = _fresh_dir("do-cache-bench-by-id-"), _fresh_dir("do-cache-bench-mount-")
    try:
        with fakedo.serve(token, backend=SshdBackend(work / "machines-blank"), polls_to_active=args.polls,
                          volume_backend=LoopVolumes(work / "volumes-blank", Path(devices))) as fake:
            target = DigitalOceanTarget({"allow_from": "192.0.2.10/32", "ssh_port": fake.ssh_port,
                                         "ssh_user": droplet_user(), "poll_interval": args.poll_interval,
                                         "owner": OWNER, "api_url": fake.url, "cache_volume": True,
                                         "cache_volume_gib": size_gib, "host_cache": mount,
                                         "volume_device_dir": devices})
            host = target.provision(ProvisionRequest(deployment="blank", gpu_slug=GPU,
                                                     key_dir=state.deployment_dir("blank")))
            host.close()
            cache = dict(host.record.extra["cache_volume"])
            target.destroy(host.record)
            target.drop_cache(host.record)
        return {k: cache[k] for k in ("size_gib", "formatted", "attach_s", "mount_s")}
    finally:
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        shutil.rmtree(mount, ignore_errors=True)
        shutil.rmtree(devices, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--file-mib", type=int, default=512, help="size of the model file served (MiB)")
    ap.add_argument("--mib-per-s", type=float, default=64.0, help="the stand-in Hugging Face's bandwidth (MiB/s)")
    ap.add_argument("--polls", type=int, default=3, help="looks before a fake droplet is active")
    ap.add_argument("--poll-interval", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "do_cache.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the fake's volumes are loop devices")
    work = Path(tempfile.mkdtemp(prefix="do-cache-bench-"))
    token = "dop_v1_" + secrets.token_hex(32)
    os.environ.update(DIGITALOCEAN_TOKEN=token, MISTRAL_LAB_HOME=str(work / "home"))
    os.environ.pop("DIGITALOCEAN_ACCESS_TOKEN", None)
    os.environ.pop("HF_TOKEN", None)
    build = _build_tree(work / "build")
    plan = make_plan(_request("x"))
    model = _padded_model(work / "model.gguf", args.file_mib)
    devices = _fresh_dir("do-cache-bench-by-id-")
    runs: dict[str, list[dict]] = {s: [] for s in SCENARIOS}
    try:
        backend = SshdBackend(work / "machines")
        volumes = LoopVolumes(work / "volumes", Path(devices), seed=build)
        with fakedo.serve(token, backend=backend, volume_backend=volumes, polls_to_active=args.polls) as fake, \
                serve_files({f"/{plan.repo}/resolve/main/{plan.gguf_file}": model},
                            bytes_per_s=args.mib_per_s * 2**20) as hf:
            os.environ["DIGITALOCEAN_API_URL"] = fake.url
            base = {"allow_from": "192.0.2.10/32", "ssh_port": fake.ssh_port, "ssh_user": droplet_user(),
                    "poll_interval": args.poll_interval, "owner": OWNER, "hf_endpoint": hf.url}
            cached = {**base, "cache_volume": True, "volume_device_dir": devices,
                      "cache_volume_gib": vols.volume_gib(plan.memory["weights_gb"])}
            for run in range(args.runs):
                plain = _fresh_dir("do-cache-bench-plain-", seed=build)
                runs["no cache"].append(_deploy_and_teardown("no cache", f"plain{run}", {**base, "host_cache": plain},
                                                             fake))
                subprocess.run(["rm", "-rf", plain], check=False)
                mount = _fresh_dir("do-cache-bench-mount-")
                options = {**cached, "host_cache": mount}
                runs["cache, first"].append(_deploy_and_teardown("cache, first", f"first{run}", options, fake))
                runs["cache, repeat"].append(_deploy_and_teardown("cache, repeat", f"again{run}", options, fake))
                dropped = vols.drop_cache(owner=OWNER, api_url=fake.url)
                assert len(dropped) == 1, dropped
                subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
                shutil.rmtree(mount, ignore_errors=True)
            served = dict(hf.served)
            leftovers, volume_leftovers = fake.leftovers(), fake.state.volume_leftovers()
            unclean = list(fake.state.unclean_detaches)
        blank = _first_mount(work, token, cached["cache_volume_gib"], args)
    finally:
        shutil.rmtree(devices, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)

    steps = list(runs["no cache"][0]["phases"])
    summary = {}
    for scenario, rs in runs.items():
        summary[scenario] = {
            "phases_s": {step: round(statistics.mean(r["phases"][step]["seconds"] for r in rs), 2) for step in steps},
            "model_skipped": all(r["phases"]["model"]["skipped"] for r in rs),
            "deploy_s": round(statistics.mean(r["deploy_s"] for r in rs), 2),
            "teardown_s": round(statistics.mean(r["teardown_s"] for r in rs), 2),
        }
        if rs[0]["volume"]:
            summary[scenario]["attach_s"] = round(statistics.mean(r["volume"]["attach_s"] for r in rs), 2)
            summary[scenario]["mount_s"] = round(statistics.mean(r["volume"]["mount_s"] for r in rs), 2)
    download_s = (args.file_mib / args.mib_per_s)
    result = {
        "what": "deploy of ministral-3b (llama.cpp) on the fake DigitalOcean API, per phase, without and with a cache "
                "volume; droplets are real sshd on this machine, volumes real loop devices, the weights served by a "
                "stand-in Hugging Face at the stated bandwidth",
        "settings": {"file_mib": args.file_mib, "bandwidth_mib_per_s": args.mib_per_s,
                     "download_at_that_bandwidth_s": round(download_s, 2), "runs": args.runs,
                     "polls_to_active": args.polls, "poll_interval_s": args.poll_interval,
                     "volume_action_polls": 2, "install": "llama.cpp CPU build already in every host cache"},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": summary,
        "blank_volume_first_mount": blank,
        "bytes_served": served,
        "downloads": round(sum(served.values()) / (args.file_mib << 20), 2),
        "leftovers": {**leftovers, "volumes": volume_leftovers}, "unclean_detaches": unclean,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{args.file_mib} MiB of weights at {args.mib_per_s:g} MiB/s ({download_s:.1f} s at that rate); "
          f"mean of {args.runs} runs, seconds")
    head = f"{'phase':<20}" + "".join(f"{s:>16}" for s in SCENARIOS)
    print(head)
    for step in steps:
        print(f"{step:<20}" + "".join(f"{summary[s]['phases_s'][step]:>16.2f}" for s in SCENARIOS))
    for key in ("attach_s", "mount_s"):
        print(f"{'  of which ' + key[:-2]:<20}" + "".join(f"{summary[s].get(key, 0.0):>16.2f}" for s in SCENARIOS))
    print(f"{'deploy':<20}" + "".join(f"{summary[s]['deploy_s']:>16.2f}" for s in SCENARIOS))
    print(f"{'teardown':<20}" + "".join(f"{summary[s]['teardown_s']:>16.2f}" for s in SCENARIOS))
    print(f"a blank {blank['size_gib']} GiB volume's first mount (mkfs.ext4 included: {blank['formatted']}): "
          f"{blank['mount_s']:.2f} s, its attach {blank['attach_s']:.2f} s")
    print(f"downloads: {result['downloads']} files' worth served for {3 * args.runs} deploys; leftovers: "
          f"{result['leftovers']}; detached while mounted: {unclean}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""API calls and SSH round trips for one DigitalOcean droplet, create -> ready -> facts -> again -> destroy.

Runs the real DigitalOcean target against the fake DO API (tests/fakedo), whose droplet is a real sshd on
127.0.0.N, and counts every API request from the fake's own request log and every SSH connection and session
from the sshd's log. Writes benchmarks/results/do_provision.json and prints a table.

    .venv/bin/python benchmarks/do_provision.py [--runs 3]

What the numbers mean for a real droplet: the API calls per phase are what DigitalOcean's rate limit (250/minute,
5,000/hour) sees; the waiting polls scale with how long DO takes to boot the droplet (here `polls_to_active`
looks) and to destroy it, so they are counted apart: the create action's status while it boots, and after the
DELETE the tag listings and look-ups by id that wait for it to go. `provision_again` deploys the same name a
second time: it must find the droplet by tag and create nothing (no POST that makes a resource). The headline is
create -> ready -> destroy (with teardown's leftovers check): at most 12 calls plus polls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fakedo  # noqa: E402
from fakedo.sshd_backend import SshdBackend  # noqa: E402
from mistral_lab import state  # noqa: E402
from mistral_lab.hosts.base import ProvisionRequest  # noqa: E402
from mistral_lab.hosts.digitalocean import DigitalOceanTarget  # noqa: E402

POLLS_TO_ACTIVE = 3
POLL_INTERVAL = 0.2


def one_run(workdir: Path, run: int) -> dict:
    token = "dop_v1_" + secrets.token_hex(32)
    home = workdir / f"home{run}"
    os.environ.update(DIGITALOCEAN_TOKEN=token, MISTRAL_LAB_HOME=str(home))
    os.environ.pop("DIGITALOCEAN_ACCESS_TOKEN", None)
    backend = SshdBackend(workdir / f"machines{run}")
    with fakedo.serve(token, backend=backend, polls_to_active=POLLS_TO_ACTIVE) as fake:
        os.environ["DIGITALOCEAN_API_URL"] = fake.url
        target = DigitalOceanTarget({"allow_from": "192.0.2.10/32", "ssh_port": fake.ssh_port,
                                     "ssh_user": backend.user, "poll_interval": POLL_INTERVAL, "owner": "bench"})
        marks = {}
        t = time.monotonic()
        host = target.provision(ProvisionRequest(deployment=f"bench{run}", gpu_slug="s-1vcpu-1gb",
                                                 key_dir=state.deployment_dir(f"bench{run}")))
        marks["create_to_ready"] = (len(fake.log), backend.ssh_counts(), time.monotonic() - t)
        t = time.monotonic()
        host.facts()
        host.close()
        marks["facts"] = (len(fake.log), backend.ssh_counts(), time.monotonic() - t)
        # Deploying the same name again finds the droplet by its tag: what idempotency costs in calls.
        t = time.monotonic()
        again = DigitalOceanTarget(target.options).provision(
            ProvisionRequest(deployment=f"bench{run}", gpu_slug="s-1vcpu-1gb", key_dir=state.deployment_dir(f"bench{run}")))
        again.close()
        marks["provision_again"] = (len(fake.log), backend.ssh_counts(), time.monotonic() - t)
        t = time.monotonic()
        target.destroy(host.record)
        assert target.leftovers(host.record) == []  # what teardown asks after destroy
        marks["destroy"] = (len(fake.log), backend.ssh_counts(), time.monotonic() - t)
        log = fake.log
        leftovers = fake.leftovers()
    phases = {}
    start, ssh_before = 0, {"connections": 0, "sessions": 0}
    for phase, (end, ssh, seconds) in marks.items():
        routes = Counter(f"{e.route} {e.status}" for e in log[start:end])
        polls = _polls(log[start:end])
        phases[phase] = {
            "api_calls": end - start - polls,
            "api_polls": polls,
            "api_by_route": dict(sorted(routes.items())),
            "ssh_connections": ssh["connections"] - ssh_before["connections"],
            "ssh_sessions": ssh["sessions"] - ssh_before["sessions"],
            "seconds": round(seconds, 3),
        }
        start, ssh_before = end, ssh
    return {"phases": phases, "leftovers": leftovers, "ssh_attempts_by_target": target.stats.ssh_attempts,
            "create_ready_destroy_calls": phases["create_to_ready"]["api_calls"] + phases["destroy"]["api_calls"]}


def _polls(entries: list) -> int:
    """Requests that only wait: the create action's status, and once a DELETE has gone out, the tag listings and
    look-ups by id that wait for the droplet to be gone (the GPU listing of the leftovers check is a call)."""
    n, deleted = 0, False
    for e in entries:
        waiting_for_gone = deleted and (e.route == "GET /v2/droplets/{id}" or
                                        (e.route == "GET /v2/droplets" and "type=gpus" not in e.query))
        n += e.route == "GET /v2/droplets/{id}/actions/{id}" or waiting_for_gone
        deleted = deleted or e.route == "DELETE /v2/droplets/{id}"
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "do_provision.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="do-bench-") as tmp:
        runs = [one_run(Path(tmp), i) for i in range(args.runs)]
    first = runs[0]["phases"]
    result = {
        "what": "DigitalOcean target against tests/fakedo (droplet = real sshd); counts from the fake's request log "
                "and the sshd logs",
        "settings": {"polls_to_active": POLLS_TO_ACTIVE, "poll_interval_s": POLL_INTERVAL, "runs": args.runs},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "stable": all(r["phases"][p]["api_calls"] == first[p]["api_calls"] for r in runs for p in first),
        "again_created_nothing": all(
            not any(k.startswith(("POST /v2/droplets", "POST /v2/firewalls", "POST /v2/account/keys"))
                    for k in r["phases"]["provision_again"]["api_by_route"]) for r in runs),
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'phase':<18}{'API calls':>10}{'+ polls':>9}{'SSH conns':>11}{'SSH sessions':>14}{'seconds':>9}")
    for phase, p in first.items():
        print(f"{phase:<18}{p['api_calls']:>10}{p['api_polls']:>9}{p['ssh_connections']:>11}{p['ssh_sessions']:>14}"
              f"{p['seconds']:>9.2f}")
    total = {k: sum(p[k] for p in first.values())
             for k in ("api_calls", "api_polls", "ssh_connections", "ssh_sessions")}
    print(f"{'total':<18}{total['api_calls']:>10}{total['api_polls']:>9}{total['ssh_connections']:>11}"
          f"{total['ssh_sessions']:>14}")
    print(f"create -> ready -> destroy: {runs[0]['create_ready_destroy_calls']} calls plus polls")
    print(f"leftovers after destroy: {runs[0]['leftovers']}; same counts in all {args.runs} runs: {result['stable']}; "
          f"deploying again created nothing: {result['again_created_nothing']}")
    print(f"wrote {args.out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

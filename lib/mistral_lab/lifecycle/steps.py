"""Progress for slow work: each step timed into the deployment record, the record saved after each, and a line
printed as it starts and ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mistral_lab import state
from mistral_lab.hosts.base import LineSink

__all__ = ["Steps", "print_line"]


def print_line(text: str) -> None:
    print(text, flush=True)


@dataclass
class Steps:
    dep: state.Deployment
    say: LineSink = print_line
    started: float = field(default_factory=time.monotonic)

    @contextmanager
    def step(self, name: str, status: state.Status | None = None) -> Iterator[dict[str, Any]]:
        """Time the block as step `name`; the block sets info["skipped"] when it found its work already done."""
        if status:
            self.dep.status = status
            state.save(self.dep)
        t0, at = time.monotonic(), state.now()
        self.say(f"▶ {name}")
        info: dict[str, Any] = {"skipped": False}
        yield info
        dt = time.monotonic() - t0
        state.record_step(self.dep, name, dt, at, skipped=info["skipped"])
        state.save(self.dep)
        self.say(f"✔ {name} {'(already done) ' if info['skipped'] else ''}in {dt:.1f}s "
                 f"[total {time.monotonic() - self.started:.0f}s]")

    def lines(self, prefix: str = "  ") -> LineSink:
        return lambda line: self.say(prefix + line.rstrip())

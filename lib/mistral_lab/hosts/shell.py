"""What every Host does the same way when it runs a script: how the script reaches bash, how secrets travel, how
output streams to a progress display and a log, and the errors a caller sees.

A script is sent on stdin to a fixed bootstrap, `bash -c 's=$(cat); ...; eval "$s"'`, on this machine and over
SSH alike, so the local target runs exactly what a droplet runs. The bootstrap reads the whole script before
running any of it, which gives three guarantees:

- commands inside the script that read stdin get end-of-file, not the rest of the script (the `bash -s` trap);
- a script cut short by a dropped connection is never run: the last line carries a per-run marker and the
  bootstrap refuses (exit 125) a script that does not end with it;
- the script and the secrets in its `export` preamble never appear on a command line (`ps` shows the bootstrap).
"""

from __future__ import annotations

import codecs
import re
import secrets
import shlex
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from mistral_lab.errors import BadInput, TargetError
from mistral_lab.hosts.base import LineSink, Result

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Env values shorter than this are not redacted from output: "1" or "true" would blank out too much.
REDACT_MIN_LEN = 8
REDACTED = "***"
# Exit status of the bootstrap when the script arrived incomplete; also what `timeout` uses on a timeout.
INCOMPLETE_EXIT = 125
TIMEOUT_EXITS = (124, 137)
# Seconds between TERM and KILL when a command runs past its timeout.
KILL_GRACE_S = 5


class CommandFailed(TargetError):
    """A command exited non-zero with check=True."""

    def __init__(self, result: Result, tail: str):
        self.result = result
        super().__init__(
            f"`{result.command}` exited with {result.returncode} after {result.duration_s:.1f} s"
            + (f"; its last output:\n{tail}" if tail else ""),
            fix="read the output above (and the log file, if one was given)",
        )


class CommandTimeout(TargetError):
    """A command ran past its timeout and was stopped (TERM, then KILL to its whole process group)."""

    def __init__(self, command: str, timeout: float, tail: str, *, stopped: bool = True):
        self.command = command
        self.timeout = timeout
        where = "stopped it and its children" if stopped else "it may still be running on the host"
        super().__init__(
            f"`{command}` did not finish within {timeout:g} s ({where})"
            + (f"; its last output:\n{tail}" if tail else ""),
            fix="raise the timeout if the step is just slow, or read the output for where it hung",
        )


class ScriptIncomplete(TargetError):
    """The bootstrap got a truncated script (connection dropped while sending) and ran none of it."""


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in (env or {}).items():
        if not _ENV_NAME.match(name):
            raise BadInput(f"{name!r} is not a valid environment variable name", field="env",
                           fix="use letters, digits and underscores, not starting with a digit")
        out[name] = str(value)
    return out


def env_preamble(env: Mapping[str, str]) -> str:
    """`export NAME='value'` lines for the top of a script. The values travel inside the script on stdin."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def new_marker() -> str:
    return f"#mistral-lab-end-{secrets.token_hex(8)}"


def bootstrap(marker: str) -> str:
    """The bash program that reads a script from stdin and runs it only if it arrived whole."""
    return (
        's=$(cat); case $s in *' + shlex.quote(marker) + ') eval "$s" ;; '
        '*) echo "mistral-lab: the script arrived incomplete (connection dropped?); nothing was run" >&2; '
        f"exit {INCOMPLETE_EXIT} ;; esac"
    )


def framed(script: str, marker: str) -> bytes:
    body = script if script.endswith("\n") else script + "\n"
    return (body + marker + "\n").encode()


def script_label(script: str) -> str:
    """A short name for a script in messages and logs: its first line that says something."""
    for line in script.splitlines():
        text = line.strip()
        if text and not text.startswith("#!") and not text.startswith("set -"):
            text = text.lstrip("# ").strip()
            return "script: " + (text if len(text) <= 70 else text[:67] + "...")
    return "script"


def redactor(env: Mapping[str, str]) -> Callable[[str], str]:
    values = sorted({v for v in env.values() if len(v) >= REDACT_MIN_LEN}, key=len, reverse=True)
    if not values:
        return lambda s: s
    pattern = re.compile("|".join(re.escape(v) for v in values))
    return lambda s: pattern.sub(REDACTED, s)


class Output:
    """Collects a command's stdout and stderr; each complete line goes to `on_line` and the log as it arrives.

    Values of the command's environment are replaced by *** everywhere (lines, log, the texts in the Result),
    so a script that echoes a secret, or runs under `set -x`, does not leak it.
    """

    def __init__(self, label: str, *, on_line: LineSink | None, log: Path | None, env: Mapping[str, str]):
        self.label = label
        self._on_line = on_line
        self._redact = redactor(env)
        self._decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("out", "err")}
        self._partial = {"out": "", "err": ""}
        self._texts: dict[str, list[str]] = {"out": [], "err": []}
        self._log: IO[str] | None = None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(log, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 (closed in close())
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._log.write(f"# {stamp} $ {self._redact(label)}\n")
        self.started = time.monotonic()

    def feed(self, stream: str, data: bytes) -> None:
        text = self._partial[stream] + self._decoders[stream].decode(data)
        *lines, self._partial[stream] = text.split("\n")
        for line in lines:
            self._emit(stream, line)

    def _emit(self, stream: str, line: str) -> None:
        # A progress bar redraws with \r; keep what a terminal would end up showing.
        line = self._redact(line.rstrip("\r").rsplit("\r", 1)[-1])
        self._texts[stream].append(line + "\n")
        if self._log is not None:
            self._log.write(line + "\n")
        if self._on_line is not None:
            self._on_line(line)

    def flush(self) -> None:
        for stream in ("out", "err"):
            tail = self._partial[stream] + self._decoders[stream].decode(b"", final=True)
            self._partial[stream] = ""
            if tail:
                self._emit(stream, tail)
                self._texts[stream][-1] = self._texts[stream][-1][:-1]  # it had no newline

    def say(self, line: str) -> None:
        """A line of our own (not the command's): reconnects, retries."""
        if self._log is not None:
            self._log.write(f"# {line}\n")
        if self._on_line is not None:
            self._on_line(line)

    @property
    def stdout(self) -> str:
        return "".join(self._texts["out"])

    @property
    def stderr(self) -> str:
        return "".join(self._texts["err"])

    def tail(self, n: int = 20) -> str:
        lines = (self.stdout + self.stderr).splitlines()
        return "\n".join(lines[-n:])

    def result(self, returncode: int) -> Result:
        self.flush()
        duration = time.monotonic() - self.started
        if self._log is not None:
            self._log.write(f"# exit {returncode} after {duration:.1f} s\n")
        return Result(command=self.label, returncode=returncode, stdout=self.stdout, stderr=self.stderr,
                      duration_s=duration)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def finish(out: Output, returncode: int, *, check: bool) -> Result:
    result = out.result(returncode)
    if returncode == INCOMPLETE_EXIT and "arrived incomplete" in result.stderr:
        raise ScriptIncomplete(f"`{result.command}` reached the host incomplete; none of it ran",
                               fix="run the step again")
    if check and not result.ok:
        raise CommandFailed(result, out.tail())
    return result

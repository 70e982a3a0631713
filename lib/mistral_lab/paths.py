"""Where mistral-lab keeps things on this machine, and how it writes them: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["home", "write_atomic"]


def home() -> Path:
    """`$MISTRAL_LAB_HOME`, default `~/.local/state/mistral-lab`: deployment records, keys, caches."""
    root = os.environ.get("MISTRAL_LAB_HOME")
    return Path(root) if root else Path.home() / ".local" / "state" / "mistral-lab"


def write_atomic(path: Path, text: str, mode: int = 0o600) -> Path:
    """Write a whole file or nothing: a unique temporary name beside it (two writers never share one), then a
    rename over it, so a crash or a concurrent writer never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Files the library ships (the sample receipt image), each made by code next to it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(name: str) -> Path:
    """A shipped asset file by name, e.g. `path("receipt.png")`."""
    return Path(str(resources.files(__package__).joinpath(name)))

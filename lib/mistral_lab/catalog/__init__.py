"""The Mistral model catalog: `models.yaml`, validated on load.

    >>> from mistral_lab.catalog import get_model
    >>> get_model("ministral-3b").capabilities.max_context
    262144
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources

import yaml

from mistral_lab.errors import BadInput

from .schema import Catalog, Model, Variant, Weights

__all__ = ["Catalog", "Model", "Variant", "Weights", "close_ids", "get_model", "load_catalog", "model_ids"]


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    text = resources.files(__package__).joinpath("models.yaml").read_text(encoding="utf-8")
    return Catalog.model_validate(yaml.safe_load(text))


def model_ids() -> list[str]:
    return [m.id for m in load_catalog().models]


def close_ids(name: str, n: int = 3) -> list[str]:
    ids = model_ids()
    close = difflib.get_close_matches(name.lower(), ids, n=n, cutoff=0.5)
    # A prefix like "ministral" should still point somewhere useful.
    close += [i for i in ids if i.startswith(name.lower()) and i not in close]
    return close[:n]


def get_model(model_id: str) -> Model:
    for m in load_catalog().models:
        if m.id == model_id:
            return m
    close = close_ids(model_id)
    fix = f"did you mean {', '.join(close)}?" if close else "run `mistral-lab models` to list the ids"
    raise BadInput(f"unknown model {model_id!r}", field="model", fix=fix)

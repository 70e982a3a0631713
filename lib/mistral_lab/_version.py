"""The installed version, from the package metadata pyproject.toml writes (its one owner)."""

from importlib.metadata import version

__version__ = version("mistral-lab")

"""The `mistral-lab` command. Each topic registers its commands on `app` from its own module."""

from __future__ import annotations

import sys

import click

from mistral_lab.errors import MistralLabError

from . import bench as _bench  # noqa: F401  (registers commands)
from . import deploy as _deploy  # noqa: F401  (registers commands)
from . import digitalocean as _digitalocean  # noqa: F401  (registers commands)
from . import eval as _eval  # noqa: F401  (registers commands)
from . import hosts as _hosts  # noqa: F401  (registers commands)
from . import models as _models  # noqa: F401  (registers commands)
from . import query as _query  # noqa: F401  (registers commands)
from . import workshop as _workshop  # noqa: F401  (registers commands)
from ._app import app, console_err

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except MistralLabError as e:
        console_err.print(f"[red]error[/red] {e}", highlight=False, markup=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console_err.print("aborted")
        sys.exit(130)

"""The `mistral-lab` command. Each topic registers its commands on `app` from its own module."""

from __future__ import annotations

import sys

import click
import typer
from rich.text import Text

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


# typer 0.2x carries its own copy of click: usage errors (a missing argument, `--context abc`, an unknown command)
# come from either copy, and both must end as a message and exit 2, not a traceback.
_USAGE_ERRORS = (click.ClickException, *(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))
_ABORTS = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)


def main(argv: list[str] | None = None) -> None:
    try:
        # Outside standalone mode a command's `raise typer.Exit(n)` comes back as the return value.
        code = app(args=argv, standalone_mode=False)
    except MistralLabError as e:
        console_err.print(Text.assemble(("error", "red"), " ", str(e)))
        sys.exit(e.exit_code)
    except _USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except _ABORTS:
        console_err.print("aborted")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)

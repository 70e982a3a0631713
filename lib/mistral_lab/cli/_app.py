from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    # Locals in tracebacks could hold tokens and API keys.
    pretty_exceptions_show_locals=False,
    help="Deploy, query, benchmark and tear down Mistral models.",
)
console = Console()
console_err = Console(stderr=True)

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
# Messages carry user text (names, hosts like [::1]:2222, a server's words, a model's reasoning): none of it is rich
# markup. Styles are given as Text or style=, never as [tags] in strings.
console = Console(markup=False, highlight=False)
console_err = Console(stderr=True, markup=False, highlight=False)

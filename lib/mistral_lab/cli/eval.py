"""`mistral-lab eval`: a prompt suite against a deployment (or any OpenAI-compatible URL), a table and a JSON file."""

from __future__ import annotations

from typing import Annotated

import typer

from mistral_lab import suites

from ._app import app, console, console_err
from .query import open_client

Opt = typer.Option


@app.command("eval")
def eval_cmd(
    name: Annotated[str | None, typer.Argument(help="deployment name")] = None,
    suite: Annotated[str, Opt("--suite", help=f"a shipped suite ({', '.join(suites.names())}) or a suite YAML file")] = "seeds",
    only: Annotated[str | None, Opt("--only", help="comma-separated prompt ids")] = None,
    reasoning: Annotated[str, Opt("--reasoning", help="auto (each prompt's own) | none | high")] = "auto",
    max_tokens: Annotated[int | None, Opt("--max-tokens", help="per reply; reasoning needs thousands "
                                          f"(default {suites.DEFAULT_MAX_TOKENS}, "
                                          f"{suites.GENERATED_MAX_TOKENS} for a generated random model)")] = None,
    temperature: Annotated[float | None, Opt("--temperature", help="default: the catalog's for the model")] = None,
    out: Annotated[str | None, Opt("--out", help="JSON file (default: evals/NAME-SUITE-TIME.json in the state folder)")] = None,
    base_url: Annotated[str | None, Opt("--base-url", help="any OpenAI-compatible URL instead of a deployment")] = None,
    key_env: Annotated[str, Opt("--key-env", help="variable holding the key for --base-url")] = "MISTRAL_API_KEY",
    model: Annotated[str | None, Opt("--model", help="catalog id of the model behind --base-url")] = None,
) -> None:
    """Run a prompt suite: one row per prompt, scored where the answer is known; the table, then the JSON path."""
    chosen = suites.load(suite)
    ids = [i.strip() for i in only.split(",") if i.strip()] if only else None
    extra = {} if temperature is None else {"temperature": temperature}

    def progress(row: suites.EvalRow) -> None:
        mark = "" if not row.scored else f" score {row.score:.2f}"
        console_err.print(f"{row.id}: {row.status}{mark}", style="dim")

    with open_client(name, base_url, key_env, catalog_id=model) as client:
        result = suites.run(client, chosen, reasoning=reasoning, max_tokens=max_tokens, only=ids, say=progress,
                            **extra)
    console.print(suites.table(result))
    path = suites.write_json(result, out, label=name or "url")
    console.print(f"wrote {path}", highlight=False)

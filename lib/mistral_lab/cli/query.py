"""`mistral-lab ask`: one prompt to a deployment (or any OpenAI-compatible URL), streamed by default."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mistral_lab.client import Client
from mistral_lab.errors import BadInput

from ._app import app, console_err

Opt = typer.Option


def open_client(name: str | None, base_url: str | None, key_env: str, catalog_id: str | None = None) -> Client:
    """A deployment by name (its tunnel reopened), or any OpenAI-compatible URL with the key from `key_env`;
    `catalog_id` tells a bare URL's client which catalog model it talks to (sampling, capabilities)."""
    if base_url:
        return Client.from_env(base_url, key_env=key_env, catalog_id=catalog_id)
    if not name:
        raise BadInput("say which deployment", field="NAME", fix="give a deployment name, or --base-url URL")
    return Client.from_deployment(name)


def _schema_from_file(path: str) -> dict[str, Any]:
    p = Path(path)
    fix = 'a JSON Schema object, e.g. {"type": "object", "properties": {"city": {"type": "string"}}}'
    try:
        schema = json.loads(p.read_text())
    except FileNotFoundError:
        raise BadInput(f"no JSON schema at {p}", field="--json-schema", fix="give the path of a .json file") from None
    except json.JSONDecodeError as e:
        raise BadInput(f"{p} is not JSON: {e.msg} (line {e.lineno})", field="--json-schema", fix=fix) from None
    if not isinstance(schema, dict):
        raise BadInput(f"{p} must hold a JSON schema object", field="--json-schema", fix=fix)
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise BadInput(f"{p} is not a valid JSON schema: {e.message}", field="--json-schema", fix=fix) from None
    return schema


@app.command("ask")
def ask_cmd(
    name: Annotated[str | None, typer.Argument(help="deployment name")] = None,
    prompt: Annotated[str | None, typer.Argument(help="the prompt; '-' reads standard input")] = None,
    system: Annotated[str | None, Opt("--system", help="system prompt (default: the card's, with today's date)")] = None,
    reasoning: Annotated[str | None, Opt("--reasoning", help="none | high (models with reasoning effort)")] = None,
    image: Annotated[str | None, Opt("--image", help="an image file for vision models")] = None,
    json_schema: Annotated[str | None, Opt("--json-schema", help="JSON schema file: the reply must match it")] = None,
    no_stream: Annotated[bool, Opt("--no-stream", help="wait for the whole reply")] = False,
    max_tokens: Annotated[int | None, Opt("--max-tokens")] = None,
    temperature: Annotated[float | None, Opt("--temperature")] = None,
    base_url: Annotated[str | None, Opt("--base-url", help="any OpenAI-compatible URL instead of a deployment")] = None,
    key_env: Annotated[str, Opt("--key-env", help="variable holding the key for --base-url")] = "MISTRAL_API_KEY",
    model: Annotated[str | None, Opt("--model", help="catalog id of the model behind --base-url")] = None,
) -> None:
    """Ask a deployment one question. With --json-schema, standard output is the validated JSON object alone."""
    if base_url and name and prompt is None:
        name, prompt = None, name  # `ask --base-url URL "prompt"`
    if prompt is None:
        raise BadInput("no prompt given", field="PROMPT", fix='mistral-lab ask NAME "your question"')
    if prompt == "-":
        prompt = sys.stdin.read()
    kw: dict[str, Any] = dict(system=system, image=image, reasoning_effort=reasoning, max_tokens=max_tokens,
                              temperature=temperature)
    with open_client(name, base_url, key_env, catalog_id=model) as client:
        if json_schema:
            data = client.json(prompt, _schema_from_file(json_schema), **kw)
            print(json.dumps(data, ensure_ascii=False))
            return
        if no_stream:
            reply = client.chat(prompt, **kw)
            if reply.reasoning:
                console_err.print(reply.reasoning, style="dim")
            print(reply.content)
            return
        thinking = False
        for piece in client.stream(prompt, **kw):
            if piece.reasoning:
                if not thinking:
                    console_err.print("reasoning:", style="dim")
                    thinking = True
                console_err.print(piece.reasoning, end="", style="dim", highlight=False)
            if piece.content:
                if thinking:
                    console_err.print()
                    thinking = False
                print(piece.content, end="", flush=True)
        print()


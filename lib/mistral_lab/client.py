"""Talk to a served model: chat, streaming, reasoning effort, tools, JSON output, vision.

Works against any OpenAI-compatible base URL (our deployments, Mistral's API, DigitalOcean's serverless
inference) with the key from the environment, or against a deployment by name (the tunnel is reopened from
its record). Engine differences are handled here: reasoning effort is a request field for vLLM and a chat
template kwarg for llama.cpp; reasoning comes back as `reasoning_content` or `reasoning`.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from pydantic import BaseModel, ValidationError

from mistral_lab import session
from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import Model
from mistral_lab.errors import BadInput, EngineError, MistralLabError

__all__ = ["Client", "Conversation", "Delta", "Reply", "ToolCall", "assemble", "image_part", "show_stream",
           "system_prompt"]

T = TypeVar("T", bound=BaseModel)
Message = dict[str, Any]
_NO_VISION = re.compile(r"image input is not supported|not a multimodal model|does not support (image|multimodal|vision)"
                        r"|multimodal is not supported|At most 0 image", re.IGNORECASE)
_FORMAT_BROKEN = re.compile(r"does not match the expected .*format|Failed to parse (tool call|input)", re.IGNORECASE)
# Servers whose streams send usage only when asked with stream_options (others may refuse the field).
_USAGE_ON_REQUEST = ("llamacpp", "vllm")


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    content: str
    reasoning: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    raw: Any = field(default=None, repr=False)
    # run_tools: every message of the round trip, the tool results included, that led to this reply.
    messages: list[Message] = field(default_factory=list, repr=False)


@dataclass
class ToolCallPiece:
    """Part of a streamed tool call: the first piece of a call carries its id and name, later ones more arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """One streamed piece: text of the answer or of the reasoning; the last piece carries finish_reason and usage."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallPiece] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)


def assemble(pieces: Iterable[Delta]) -> Reply:
    """A stream put back together: the Reply the same request would have got without streaming."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish, usage = None, {}
    for d in pieces:
        content.append(d.content)
        reasoning.append(d.reasoning)
        for tc in d.tool_calls:
            call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = tc.id or call["id"]
            call["name"] += tc.name or ""
            call["arguments"] += tc.arguments
        finish = d.finish_reason or finish
        usage = d.usage or usage
    return Reply(
        content="".join(content), reasoning="".join(reasoning) or None, finish_reason=finish, usage=usage,
        tool_calls=[ToolCall(id=c["id"], name=c["name"], arguments=_parse_args(c["arguments"]))
                    for _, c in sorted(calls.items())],
    )


def system_prompt(model: Model, today: date | None = None, repo: str | None = None) -> str | None:
    """The card's system prompt with the model name and today's and yesterday's dates filled in.

    `{name}` is the repository's name after the slash, as the cards' `load_system_prompt` fills it."""
    if not model.system_prompt:
        return None
    today = today or date.today()
    name = (repo or model.default_variant.weights[0].repo).split("/")[-1]
    return (
        model.system_prompt.replace("{name}", name)
        .replace("{today}", today.isoformat())
        .replace("{yesterday}", (today - timedelta(days=1)).isoformat())
    )


def image_part(path: str | Path) -> dict[str, Any]:
    """A local image as a base64 data URL content part."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"no image at {p}", field="image", fix="give the path of a PNG or JPEG file")
    mime = mimetypes.guess_type(p.name)[0] or "image/png"
    data = base64.b64encode(p.read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _reasoning_of(obj: Any) -> str | None:
    for name in ("reasoning_content", "reasoning"):
        value = getattr(obj, name, None)
        if value is None and getattr(obj, "model_extra", None):
            value = obj.model_extra.get(name)
        if value:
            return value
    return None


class Client:
    """An OpenAI-compatible endpoint plus what the catalog knows about the model behind it."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        model: str | None = None,
        catalog_id: str | None = None,
        engine: str | None = None,
        timeout: float = 300.0,
        use_system_prompt: bool = True,
        variant: str | None = None,
        http_client: httpx.Client | None = None,
        key_hint: str | None = None,
    ):
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise BadInput(f"base URL {base_url!r} is not an http(s) URL", field="base_url",
                           fix="give the server's OpenAI-compatible root, e.g. http://127.0.0.1:8080/v1")
        self.base_url = base_url.rstrip("/")
        self._openai = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout,
                                     max_retries=0, http_client=http_client)
        self._model = model
        self._engine = engine
        self.catalog: Model | None = None
        if catalog_id:
            self.catalog = get_model(catalog_id)
        self.variant = variant
        self.use_system_prompt = use_system_prompt
        self._key_hint = key_hint or "the deployment's key (Client.from_deployment(NAME) reads it from the record)"
        self.deployment: str | None = None  # the deployment's name, when opened from one
        self._tunnel = None

    def __repr__(self) -> str:
        # Never the key: notebooks and logs show this.
        return f"Client({self.base_url!r}, model={self._model!r}, catalog={self.catalog.id if self.catalog else None!r})"

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, base_url: str, *, key_env: str = "MISTRAL_API_KEY", **kw: Any) -> Client:
        """A client for any OpenAI-compatible URL, the key read from the environment variable `key_env`."""
        key = os.environ.get(key_env)
        hint = f"the right key in ${key_env}" if key else f"a key: ${key_env} is not set"
        return cls(base_url, key, key_hint=hint, **kw)

    @classmethod
    def from_deployment(cls, name: str, **kw: Any) -> Client:
        """Reopen the tunnel to a saved deployment and talk to its server."""
        conn = session.connect(name)
        try:
            client = cls(conn.base_url, conn.api_key, model=conn.served_model, catalog_id=conn.catalog_id,
                         engine=conn.engine, variant=conn.plan.variant, key_hint=f"the key of deployment {name}", **kw)
        except BaseException:
            conn.close()
            raise
        client._tunnel = conn
        client.deployment = name
        return client

    def close(self) -> None:
        self._openai.close()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- discovery ------------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except openai.APIError as e:
            raise self._error(e) from None

    def _error(self, e: openai.APIError) -> MistralLabError:
        """What the server (or its absence) said, as an error that names the field at fault and the fix."""
        if isinstance(e, openai.AuthenticationError):
            return EngineError(f"the server at {self.base_url} refused the API key (401)", field="api_key",
                               fix=f"use {self._key_hint}")
        if isinstance(e, openai.APITimeoutError):
            return EngineError(f"no answer from {self.base_url} in time", field="timeout",
                               fix="raise Client(timeout=...) or ask for fewer tokens (max_tokens)")
        if isinstance(e, openai.APIConnectionError):
            return EngineError(f"cannot reach the server at {self.base_url}: {e.__cause__ or e.message}",
                               field="base_url", fix="is the deployment up? check `mistral-lab status`, or redeploy")
        message = _server_message(e)
        if _NO_VISION.search(message):
            # llama-server without a vision projector answers 500 to an image; vLLM a 400 naming the modality.
            return BadInput(f"the model at {self.base_url} cannot read images: {message}", field="image",
                            fix="deploy a vision model (e.g. ministral-3b, mistral-small-3.1) with its vision encoder")
        if _FORMAT_BROKEN.search(message):
            return EngineError(f"the server could not parse the model's output into the requested format: {message}",
                               field="response_format",
                               fix="raise max_tokens, or constrain free-text fields (enum, maxLength) in the schema")
        if isinstance(e, openai.NotFoundError):
            return EngineError(f"{self.base_url} has no such endpoint or model (404): {message}", field="base_url",
                               fix="the base URL is the OpenAI-compatible root, usually ending in /v1")
        if isinstance(e, openai.BadRequestError):
            return EngineError(f"the server rejected the request: {message}", field="request")
        status = getattr(e, "status_code", None)
        return EngineError(f"the server failed ({status or 'error'}): {message}", field="server",
                           fix="see the server's log: mistral-lab logs NAME")

    @property
    def model(self) -> str:
        if self._model is None:
            models = self._call(lambda: self._openai.models.list())
            ids = [m.id for m in models.data]
            if not ids:
                raise EngineError("the server lists no models", field="base_url")
            self._model = ids[0]
            if self._engine is None:
                self._engine = getattr(models.data[0], "owned_by", None)
        return self._model

    @property
    def may_think(self) -> bool:
        """Whether the model may reason before it answers: a reasoning-effort model, or a variant that always
        thinks (the deployed one when known). Unknown models may."""
        if self.catalog is None:
            return True
        if self.catalog.capabilities.reasoning_effort:
            return True
        return any(v.thinks for v in self.catalog.variants if self.variant in (None, v.id))

    @property
    def engine(self) -> str | None:
        """'vllm' or 'llamacpp' when known (from the deployment, or what /v1/models says owns the model)."""
        if self._engine is None:
            _ = self.model
        return self._engine

    # ---- requests -------------------------------------------------------------------------------------
    def _messages(self, prompt: str | list[Message], system: str | None, image: str | Path | None) -> list[Message]:
        if isinstance(prompt, list):
            if image is not None:
                raise BadInput("an image goes with a text prompt, not with a message list", field="image",
                               fix="put an image_part(path) into the user message's content yourself")
            messages = list(prompt)
        else:
            content: Any = prompt
            if image is not None:
                self._require_vision()
                content = [{"type": "text", "text": prompt}, image_part(image)]
            messages = [{"role": "user", "content": content}]
        if not any(m.get("role") == "system" for m in messages):
            sp = system if system is not None else (
                system_prompt(self.catalog) if (self.catalog and self.use_system_prompt) else None)
            if sp:
                messages.insert(0, {"role": "system", "content": sp})
        return messages

    def _require_vision(self) -> None:
        if self.catalog is not None and not self.catalog.has_vision:
            raise BadInput(f"{self.catalog.id} has no vision encoder: it cannot read images", field="image",
                           fix="deploy a vision model (e.g. ministral-3b, mistral-small-3.1)")

    def _params(self, reasoning_effort: str | None, temperature: float | None, **kw: Any) -> dict[str, Any]:
        extra: dict[str, Any] = dict(kw.pop("extra_body", None) or {})
        if reasoning_effort is not None:
            if self.catalog is not None and reasoning_effort not in (self.catalog.capabilities.reasoning_effort or []):
                allowed = self.catalog.capabilities.reasoning_effort
                raise BadInput(
                    f"{self.catalog.id} does not take reasoning_effort={reasoning_effort!r}", field="reasoning_effort",
                    fix=f"use one of {allowed}" if allowed else "drop it: this model has no reasoning-effort switch")
            if self.engine == "llamacpp":
                extra.setdefault("chat_template_kwargs", {})["reasoning_effort"] = reasoning_effort
            else:
                extra["reasoning_effort"] = reasoning_effort
        if (kw.get("tools") or kw.get("response_format")) and self.engine == "llamacpp" and not self.may_think:
            # llama.cpp's Mistral grammar lets a reply open with an optional [THINK] block before the JSON or the
            # tool call; a model that does not reason gets no such room, so the constrained part comes first.
            extra.setdefault("reasoning_format", "none")
        if temperature is None and self.catalog is not None:
            pick = self.catalog.sampling_for(self.variant, reasoning_effort)
            temperature = pick.temperature
            if pick.top_p is not None:
                kw.setdefault("top_p", pick.top_p)
        if temperature is not None:
            kw["temperature"] = temperature
        if extra:
            kw["extra_body"] = extra
        return {k: v for k, v in kw.items() if v is not None}

    def chat(
        self,
        prompt: str | list[Message],
        *,
        system: str | None = None,
        image: str | Path | None = None,
        reasoning_effort: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | dict[str, Any] | None = None,
        response_format: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Reply:
        messages = self._messages(prompt, system, image)
        params = self._params(reasoning_effort, temperature, max_tokens=max_tokens, tools=tools, tool_choice=tool_choice,
                              response_format=response_format, **kw)
        r = self._call(lambda: self._openai.chat.completions.create(model=self.model, messages=messages, **params))
        choice = r.choices[0]
        msg = choice.message
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=_parse_args(c.function.arguments))
            for c in (msg.tool_calls or [])
        ]
        return Reply(content=msg.content or "", reasoning=_reasoning_of(msg), tool_calls=calls,
                     finish_reason=choice.finish_reason, usage=_int_usage(r.usage), raw=r)

    def stream(
        self,
        prompt: str | list[Message],
        *,
        system: str | None = None,
        image: str | Path | None = None,
        reasoning_effort: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **kw: Any,
    ) -> Iterator[Delta]:
        """Yield answer and reasoning text as it arrives; the last piece has finish_reason and usage.
        `assemble(client.stream(...))` gives the Reply that `chat(...)` would."""
        messages = self._messages(prompt, system, image)
        params = self._params(reasoning_effort, temperature, max_tokens=max_tokens, **kw)
        if self.engine in _USAGE_ON_REQUEST:
            params.setdefault("stream_options", {"include_usage": True})
        stream = self._call(lambda: self._openai.chat.completions.create(
            model=self.model, messages=messages, stream=True, **params))
        try:
            for chunk in stream:
                usage = _int_usage(chunk.usage)
                if not chunk.choices:
                    if usage:
                        yield Delta(usage=usage)
                    continue
                choice = chunk.choices[0]
                d = choice.delta
                piece = Delta(
                    content=d.content or "", reasoning=_reasoning_of(d) or "", finish_reason=choice.finish_reason,
                    usage=usage,
                    tool_calls=[ToolCallPiece(index=tc.index, id=tc.id, name=tc.function.name if tc.function else None,
                                              arguments=(tc.function.arguments or "") if tc.function else "")
                                for tc in (d.tool_calls or [])],
                )
                if piece.content or piece.reasoning or piece.tool_calls or piece.finish_reason or piece.usage:
                    yield piece
        except openai.APIError as e:
            raise self._error(e) from None
        except httpx.HTTPError as e:
            raise EngineError(f"the stream from {self.base_url} broke off: {e}", field="base_url",
                              fix="check the server's log: mistral-lab logs NAME") from None
        finally:
            stream.close()

    # ---- structured output ----------------------------------------------------------------------------
    def json(self, prompt: str | list[Message], schema: type[T] | dict[str, Any] | None = None,
             **kw: Any) -> T | dict[str, Any]:
        """JSON mode (no schema), or a JSON schema: a pydantic model (the reply comes back as one) or a JSON Schema
        dict (the reply is checked against it). The server constrains the reply; the client validates it again."""
        if schema is None:
            fmt: dict[str, Any] = {"type": "json_object"}
        else:
            body = schema if isinstance(schema, dict) else schema.model_json_schema()
            title = schema.get("title", "reply") if isinstance(schema, dict) else schema.__name__
            fmt = {"type": "json_schema", "json_schema": {
                "name": re.sub(r"[^A-Za-z0-9_-]", "_", str(title))[:64] or "reply", "schema": body, "strict": True}}
        reply = self.chat(prompt, response_format=fmt, **kw)
        try:
            data = json.loads(reply.content)
        except json.JSONDecodeError as e:
            if reply.finish_reason == "length":
                raise EngineError(f"the reply stopped at max_tokens ({reply.usage.get('completion_tokens')} tokens) "
                                  "before its JSON ended", field="max_tokens",
                                  fix="raise max_tokens, or bound free text in the schema (maxLength, enum)") from None
            raise EngineError(f"the reply is not JSON ({e.msg}): {reply.content[:200]!r}", field="response_format") from None
        if schema is None:
            return data
        if isinstance(schema, dict):
            import jsonschema

            try:
                jsonschema.validate(data, schema)
            except jsonschema.ValidationError as e:
                raise EngineError(f"the reply does not match the schema: {e.message}", field="response_format") from None
            return data
        try:
            return schema.model_validate(data)
        except ValidationError as e:
            raise EngineError(f"the reply does not match {schema.__name__}: {e.errors()[0]['msg']}",
                              field="response_format") from None

    # ---- tools ----------------------------------------------------------------------------------------
    def run_tools(
        self,
        prompt: str | list[Message],
        functions: dict[str, Callable[..., Any]],
        specs: list[dict[str, Any]],
        *,
        tool_choice: str = "auto",
        max_rounds: int = 4,
        trace: list[dict[str, Any]] | None = None,
        **kw: Any,
    ) -> Reply:
        """The full round trip: the model asks for tools, they run here, results go back, the answer comes."""
        messages = self._messages(prompt, kw.pop("system", None), kw.pop("image", None))
        choice = tool_choice
        for _ in range(max_rounds):
            reply = self.chat(messages, tools=specs, tool_choice=choice, **kw)
            if not reply.tool_calls:
                reply.messages = messages
                return reply
            messages.append({
                "role": "assistant",
                "content": reply.content or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for c in reply.tool_calls
                ],
            })
            for call in reply.tool_calls:
                result = _run_tool(functions, call)
                if trace is not None:
                    trace.append({"tool": call.name, "arguments": call.arguments, "result": result})
                messages.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": result})
            choice = "auto"  # after the results, let the model answer
        reply = self.chat(messages, tools=specs, tool_choice="none", **kw)
        reply.messages = messages
        return reply

    def conversation(self, system: str | None = None) -> Conversation:
        return Conversation(self, system)


def _int_usage(usage: Any) -> dict[str, int]:
    if not usage:
        return {}
    return {k: v for k, v in usage.model_dump(exclude_none=True).items() if isinstance(v, int)}


def _server_message(e: openai.APIError) -> str:
    """The server's own words: OpenAI-style {"error": {"message"}}, or the bare message."""
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
    return e.message


def _parse_args(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def _run_tool(functions: dict[str, Callable[..., Any]], call: ToolCall) -> str:
    fn = functions.get(call.name)
    if fn is None:
        return json.dumps({"error": f"unknown tool {call.name!r}; available: {sorted(functions)}"})
    try:
        return json.dumps({"result": fn(**call.arguments)})
    except Exception as e:  # the model sees the error and can correct its call
        return json.dumps({"error": f"{type(e).__name__}: {e}"})


class Conversation:
    """Multi-turn chat: keeps the messages, so each turn sees the ones before."""

    def __init__(self, client: Client, system: str | None = None):
        self.client = client
        self.messages: list[Message] = client._messages([], system, None)

    def say(self, text: str, *, image: str | Path | None = None, **kw: Any) -> Reply:
        content: Any = text
        if image is not None:
            self.client._require_vision()
            content = [{"type": "text", "text": text}, image_part(image)]
        self.messages.append({"role": "user", "content": content})
        reply = self.client.chat(self.messages, **kw)
        self.messages.append({"role": "assistant", "content": reply.content})
        return reply

    def stream(self, text: str, **kw: Any) -> Iterator[Delta]:
        self.messages.append({"role": "user", "content": text})
        parts: list[str] = []
        for d in self.client.stream(self.messages, **kw):
            parts.append(d.content)
            yield d
        self.messages.append({"role": "assistant", "content": "".join(parts)})


def show_stream(pieces: Iterable[Delta], out: Callable[[str], None] | None = None) -> Reply:
    """Print a stream as it arrives, the reasoning apart from the answer, and return the whole Reply."""
    write = out or (lambda text: print(text, end="", flush=True))
    seen: list[Delta] = []
    section = None
    for d in pieces:
        seen.append(d)
        for name, text in (("reasoning", d.reasoning), ("answer", d.content)):
            if not text:
                continue
            if section != name:
                write(("\n" if section else "") + f"[{name}] ")
                section = name
            write(text)
    write("\n")
    return assemble(seen)

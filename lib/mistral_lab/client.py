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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
from pydantic import BaseModel, ValidationError

from mistral_lab.catalog import get_model
from mistral_lab.catalog.schema import Model
from mistral_lab.errors import BadInput, EngineError

T = TypeVar("T", bound=BaseModel)
Message = dict[str, Any]


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
    raw: Any = None


@dataclass
class Delta:
    """One streamed piece: text of the answer or of the reasoning."""

    content: str = ""
    reasoning: str = ""


def system_prompt(model: Model, today: date | None = None) -> str | None:
    """The card's system prompt with the model name and today's and yesterday's dates filled in."""
    if not model.system_prompt:
        return None
    today = today or date.today()
    return (
        model.system_prompt.replace("{name}", model.name)
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
    ):
        self.base_url = base_url.rstrip("/")
        self._openai = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout,
                                     max_retries=0)
        self._model = model
        self._engine = engine
        self.catalog: Model | None = None
        if catalog_id:
            self.catalog = get_model(catalog_id)
        self.use_system_prompt = use_system_prompt
        self._tunnel = None

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, base_url: str, *, key_env: str = "MISTRAL_API_KEY", **kw: Any) -> Client:
        """A client for any OpenAI-compatible URL, the key read from the environment variable `key_env`."""
        return cls(base_url, os.environ.get(key_env), **kw)

    @classmethod
    def from_deployment(cls, name: str, **kw: Any) -> Client:
        """Reopen the tunnel to a saved deployment and talk to its server."""
        from mistral_lab.deploy import connect

        conn = connect(name)
        client = cls(conn.base_url, conn.api_key, model=conn.served_model, catalog_id=conn.catalog_id,
                     engine=conn.engine, **kw)
        client._tunnel = conn
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
        except openai.AuthenticationError:
            raise EngineError("the server refused the API key (401)", field="api_key",
                              fix="use the deployment's key (mistral-lab status NAME) or set the right key variable") from None
        except openai.APIConnectionError as e:
            raise EngineError(f"cannot reach the server at {self.base_url}: {e.__cause__ or e}", field="base_url",
                              fix="is the deployment up? check `mistral-lab status`, or redeploy") from None
        except openai.BadRequestError as e:
            raise EngineError(f"the server rejected the request: {e.message}", field="request") from None

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
    def engine(self) -> str | None:
        """'vllm' or 'llamacpp' when known (from the deployment, or what /v1/models says owns the model)."""
        if self._engine is None:
            _ = self.model
        return self._engine

    # ---- requests -------------------------------------------------------------------------------------
    def _messages(self, prompt: str | list[Message], system: str | None, image: str | Path | None) -> list[Message]:
        if isinstance(prompt, list):
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
        if temperature is None and self.catalog is not None:
            s = self.catalog.sampling
            pick = s.reasoning_high if (reasoning_effort == "high" and s.reasoning_high) else s.default
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
        usage = r.usage.model_dump(exclude_none=True) if r.usage else {}
        return Reply(content=msg.content or "", reasoning=_reasoning_of(msg), tool_calls=calls,
                     finish_reason=choice.finish_reason, usage={k: v for k, v in usage.items() if isinstance(v, int)},
                     raw=r)

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
        """Yield answer and reasoning text as it arrives."""
        messages = self._messages(prompt, system, image)
        params = self._params(reasoning_effort, temperature, max_tokens=max_tokens, **kw)
        stream = self._call(lambda: self._openai.chat.completions.create(
            model=self.model, messages=messages, stream=True, **params))
        try:
            for chunk in stream:
                if not chunk.choices:
                    continue
                d = chunk.choices[0].delta
                piece = Delta(content=d.content or "", reasoning=_reasoning_of(d) or "")
                if piece.content or piece.reasoning:
                    yield piece
        except (httpx.RemoteProtocolError, openai.APIConnectionError) as e:
            raise EngineError(f"the stream from {self.base_url} broke off: {e}", field="base_url",
                              fix="check the server's log: mistral-lab logs NAME") from None
        finally:
            stream.close()

    # ---- structured output ----------------------------------------------------------------------------
    def json(self, prompt: str | list[Message], schema: type[T] | None = None, **kw: Any) -> T | dict[str, Any]:
        """JSON mode (no schema) or a JSON schema from a pydantic model; the reply is parsed and validated."""
        if schema is None:
            fmt: dict[str, Any] = {"type": "json_object"}
        else:
            fmt = {"type": "json_schema",
                   "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema(), "strict": True}}
        reply = self.chat(prompt, response_format=fmt, **kw)
        try:
            data = json.loads(reply.content)
        except json.JSONDecodeError as e:
            raise EngineError(f"the reply is not JSON ({e.msg}): {reply.content[:200]!r}", field="response_format") from None
        if schema is None:
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
        return self.chat(messages, tools=specs, tool_choice="none", **kw)

    def conversation(self, system: str | None = None) -> Conversation:
        return Conversation(self, system)


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

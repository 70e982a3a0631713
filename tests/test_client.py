"""The query client against a real llama-server serving tiny-random (tests/llamacpp_fixtures.py).

The weights are random, so nothing here reads meaning into the text. What is asserted is structure and what the
server's grammar guarantees: a stream adds up to the non-streamed reply, a JSON-schema reply validates, a required
tool call parses and its result goes back, and each failure comes back as an error naming the field and the fix.
Every request the client sends is recorded through httpx's own event hook, so the tests also check what went
over the wire (system prompt, sampling, reasoning effort, tool messages).
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from typing import Literal

import httpx
import pytest
from pydantic import BaseModel, Field, field_validator

from llamacpp_fixtures import LlamaServer, free_port
from mistral_lab import calculator, modelgen
from mistral_lab.assets.receipt import receipt_path
from mistral_lab.catalog import get_model
from mistral_lab.client import Client, Delta, assemble, system_prompt
from mistral_lab.errors import BadInput, EngineError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TOOL_CALLS_ID = modelgen.CONTROL_TOKENS.index("[TOOL_CALLS]")
END_THINK_ID = modelgen.CONTROL_TOKENS.index("[/THINK]")


class City(BaseModel):
    # Closed choices and bounded numbers: random weights would otherwise write one string until max_tokens.
    city: Literal["Paris", "Lyon", "Nice"]
    population: int = Field(ge=0, le=100_000_000)
    capital: bool


class Recorder:
    """The JSON bodies of the requests a Client sends, read by httpx as it sends them."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.http = httpx.Client(event_hooks={"request": [self._record]})

    def _record(self, request: httpx.Request) -> None:
        if request.content:
            self.bodies.append(json.loads(request.content))

    def chats(self) -> list[dict]:
        return [b for b in self.bodies if "messages" in b]


@pytest.fixture
def wire() -> Recorder:
    return Recorder()


@pytest.fixture
def client(llama_server: LlamaServer, wire: Recorder) -> Client:
    with Client(llama_server.v1, llama_server.api_key, http_client=wire.http) as c:
        yield c


# ---- chat and streaming ---------------------------------------------------------------------------------------


def test_the_served_model_and_the_engine_are_discovered(client):
    assert client.model == "tiny-random" and client.engine == "llamacpp"
    assert client.catalog is None and client.may_think
    assert "ml-test" not in repr(client), "the key never shows in a repr"


def test_streamed_pieces_add_up_to_the_non_streamed_reply(client):
    kw = {"max_tokens": 24, "temperature": 0, "seed": 3}
    whole = client.chat("Tell me a story", **kw)
    pieces = list(client.stream("Tell me a story", **kw))
    assert all(isinstance(p, Delta) for p in pieces) and sum(1 for p in pieces if p.content) >= 2
    assert pieces[-1].usage["completion_tokens"] == 24, "the last piece carries the usage"
    again = assemble(pieces)
    assert (again.content, again.reasoning, again.finish_reason) == (whole.content, whole.reasoning, "length")
    assert again.usage == whole.usage and whole.usage["completion_tokens"] == 24
    assert again.tool_calls == whole.tool_calls == []


def test_reasoning_comes_apart_from_the_answer_streamed_and_not(client):
    # Prefill the assistant turn with an open reasoning block (llama.cpp continues it) and make [/THINK] likely,
    # so the reply reasons for a few tokens, closes the block and answers.
    messages = [{"role": "user", "content": "Tell me a story"},
                {"role": "assistant", "reasoning_content": "Plan:", "content": ""}]
    kw = {"max_tokens": 24, "temperature": 1.0, "logit_bias": {str(END_THINK_ID): 3}}
    for seed in range(1, 21):
        whole = client.chat(messages, seed=seed, **kw)
        if whole.reasoning and len(whole.reasoning) > len("Plan:") and whole.content:
            break
    else:
        pytest.fail("no seed in 1..20 gave a reply that reasons, then answers")
    assert whole.reasoning.startswith("Plan:") and "[/THINK]" not in whole.reasoning
    streamed = assemble(client.stream(messages, seed=seed, **kw))
    assert (streamed.reasoning, streamed.content) == (whole.reasoning, whole.content)


def test_a_conversation_sends_every_earlier_turn(client, wire):
    chat = client.conversation(system="Be brief.")
    first = chat.say("Hello", max_tokens=6, temperature=0)
    second = "".join(p.content for p in chat.stream("And then?", max_tokens=6, temperature=0))
    sent = wire.chats()[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[2]["content"] == first.content and sent[3]["content"] == "And then?"
    assert chat.messages[-1] == {"role": "assistant", "content": second}


# ---- what the catalog puts into a request --------------------------------------------------------------------


def test_the_cards_system_prompt_carries_today_and_yesterday():
    model = get_model("mistral-small-3.1")
    text = system_prompt(model, today=date(2025, 3, 18))
    assert "The current date is 2025-03-18." in text and '"yesterday" is 2025-03-17' in text
    assert text.startswith("You are Mistral Small 3.1,") and not re.search(r"\{(today|yesterday|name)\}", text)
    # {name} is the repository name after the slash, as the cards' load_system_prompt() fills it.
    card = model.model_copy(update={"system_prompt": "You are {name}. Today is {today}."})
    assert system_prompt(card, date(2026, 1, 2), repo="mistralai/Mistral-Small-4-119B-2603") == (
        "You are Mistral-Small-4-119B-2603. Today is 2026-01-02.")
    assert system_prompt(get_model("tiny-random")) is None


def test_catalog_defaults_go_into_the_request(llama_server, wire):
    with Client(llama_server.v1, llama_server.api_key, catalog_id="mistral-small-3.1", engine="llamacpp",
                http_client=wire.http) as c:
        c.chat("Hello", max_tokens=4)
        c.chat("Hello", max_tokens=4, system="Only this.")
    default, own = wire.chats()
    today = date.today()
    assert default["messages"][0]["role"] == "system"
    assert today.isoformat() in default["messages"][0]["content"]
    assert (today - timedelta(days=1)).isoformat() in default["messages"][0]["content"]
    assert default["temperature"] == 0.15, "the card's temperature for Small 3.1"
    assert own["messages"][0] == {"role": "system", "content": "Only this."}


@pytest.mark.parametrize(("engine", "where"), [("llamacpp", "chat_template_kwargs"), ("vllm", "top level")])
def test_reasoning_effort_goes_where_each_engine_reads_it(llama_server, wire, engine, where):
    with Client(llama_server.v1, llama_server.api_key, catalog_id="mistral-small-4", engine=engine,
                http_client=wire.http) as c:
        reply = c.chat("Hello", max_tokens=4, reasoning_effort="high")
        assert reply.usage["completion_tokens"] == 4, "the server took the request"
        with pytest.raises(BadInput, match="does not take reasoning_effort='medium'") as e:
            c.chat("Hello", reasoning_effort="medium")
        assert e.value.field == "reasoning_effort" and "none" in e.value.fix and "high" in e.value.fix
    (body,) = wire.chats()
    if where == "top level":
        assert body["reasoning_effort"] == "high" and "chat_template_kwargs" not in body
    else:
        assert body["chat_template_kwargs"] == {"reasoning_effort": "high"} and "reasoning_effort" not in body
    assert body["temperature"] == 0.7, "the card's temperature with reasoning high"


def test_a_model_without_the_switch_refuses_reasoning_effort(llama_server):
    with Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random") as c, pytest.raises(BadInput, match="no reasoning-effort switch"):
        c.chat("Hello", reasoning_effort="high")


# ---- structured output ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_json_schema_reply_validates_into_the_pydantic_model(llama_server, wire, seed):
    with Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random", http_client=wire.http) as c:
        city = c.json("Describe Paris as JSON", City, max_tokens=100, temperature=1.0, seed=seed)
    assert isinstance(city, City)
    (body,) = wire.chats()
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == City.model_json_schema()
    # tiny-random does not reason: no room for a [THINK] block before the JSON.
    assert body["reasoning_format"] == "none"


def test_json_cut_off_by_max_tokens_says_so(llama_server):
    with (Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random") as c,
          pytest.raises(EngineError, match=r"stopped at max_tokens \(3 tokens\) before its JSON ended") as e):
        c.json("Describe Paris as JSON", City, max_tokens=3, seed=1)
    assert e.value.field == "max_tokens" and "raise max_tokens" in e.value.fix


def test_a_reply_that_fails_the_models_own_validation_is_a_clear_error(llama_server):
    class Checked(City):
        # A rule the JSON schema cannot carry, so the server's grammar cannot enforce it: only pydantic sees it.
        @field_validator("population")
        @classmethod
        def _census(cls, v: int) -> int:
            raise ValueError("population must come from the census")

    with Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random") as c, pytest.raises(EngineError, match="does not match Checked: Value error, population must come") as e:
        c.json("Describe Paris as JSON", Checked, max_tokens=100, seed=1)
    assert e.value.field == "response_format"


def test_a_json_schema_dict_is_sent_and_checked_again_here(llama_server, wire):
    digit = {"title": "digit check", "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
             "required": ["n"], "additionalProperties": False}
    with Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random", http_client=wire.http) as c:
        assert 0 <= c.json("A digit", digit, max_tokens=40, seed=1)["n"] <= 9
        # llama.cpp's grammar leaves `not` out, so only the client's own check can catch this reply.
        with pytest.raises(EngineError, match="does not match the schema: .* should not be valid") as e:
            c.json("A digit", {**digit, "not": {"required": ["n"]}}, max_tokens=40, seed=1)
    assert e.value.field == "response_format"
    assert wire.chats()[0]["response_format"]["json_schema"]["name"] == "digit_check"


# ---- tools ---------------------------------------------------------------------------------------------------


def _narrow_calculator() -> dict:
    """The calculator spec with arguments narrowed to `A op B`, so the test can compute the answer itself."""
    spec = json.loads(json.dumps(calculator.TOOL_SPEC))
    spec["function"]["parameters"]["properties"]["expression"]["pattern"] = r"^[1-9][0-9]? [-+*] [1-9][0-9]?$"
    return spec


def test_a_tool_round_trip_with_tool_choice_required(client, wire):
    trace: list[dict] = []
    # Random weights never choose to call a tool; the bias makes the model start the call the grammar then
    # completes (the same as tests/test_llamacpp_serve.py does).
    reply = client.run_tools("What is 3 + 5?", {"calculator": calculator.calculate}, [_narrow_calculator()],
                             tool_choice="required", max_rounds=1, max_tokens=48, seed=1, trace=trace,
                             parallel_tool_calls=False, logit_bias={str(TOOL_CALLS_ID): 20})
    (call,) = trace
    a, op, b = call["arguments"]["expression"].split()
    expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert call["tool"] == "calculator" and json.loads(call["result"]) == {"result": expected}

    first, last = wire.chats()
    assert first["tool_choice"] == "required" and first["tools"][0]["function"]["name"] == "calculator"
    asked, answered = last["messages"][-2:]
    assert asked["role"] == "assistant" and asked["tool_calls"][0]["function"]["name"] == "calculator"
    assert answered == {"role": "tool", "tool_call_id": asked["tool_calls"][0]["id"], "name": "calculator",
                        "content": call["result"]}
    assert last["tool_choice"] == "none", "after the results, the model answers"
    assert reply.tool_calls == [] and reply.finish_reason in ("stop", "length")
    assert reply.messages[-1] == answered


def test_the_shipped_calculator_spec_bounds_what_the_model_may_send(client):
    trace: list[dict] = []
    client.run_tools("Compute something", {"calculator": calculator.calculate}, [calculator.TOOL_SPEC],
                     tool_choice="required", max_rounds=1, max_tokens=260, seed=2, trace=trace,
                     parallel_tool_calls=False, logit_bias={str(TOOL_CALLS_ID): 20})
    (call,) = trace
    expression = call["arguments"]["expression"]
    assert len(expression) <= calculator.MAX_LENGTH
    assert re.fullmatch(calculator.TOOL_SPEC["function"]["parameters"]["properties"]["expression"]["pattern"],
                        expression)
    # Whatever the random expression is, the model gets a result or the reason there is none.
    assert set(json.loads(call["result"])) in ({"result"}, {"error"})


# ---- errors --------------------------------------------------------------------------------------------------


def test_a_server_that_is_down_is_named_with_the_fix():
    c = Client(f"http://127.0.0.1:{free_port()}/v1", "key")
    with pytest.raises(EngineError, match="cannot reach the server") as e:
        c.chat("Hello")
    assert e.value.field == "base_url" and "mistral-lab status" in e.value.fix
    with pytest.raises(EngineError, match="cannot reach the server"):
        list(Client(c.base_url, "key", model="m").stream("Hello"))


def test_a_wrong_api_key_is_a_401_with_a_clear_message(llama_server, monkeypatch):
    wrong = "sk-wrong-" + "x" * 20
    with pytest.raises(EngineError, match=r"refused the API key \(401\)") as e:
        Client(llama_server.v1, wrong).chat("Hello")
    assert e.value.field == "api_key" and wrong not in str(e.value)
    monkeypatch.setenv("MY_KEY", wrong)
    with pytest.raises(EngineError) as e:
        Client.from_env(llama_server.v1, key_env="MY_KEY").chat("Hello")
    assert "$MY_KEY" in e.value.fix
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(EngineError) as e:
        Client.from_env(llama_server.v1, key_env="MY_KEY").chat("Hello")
    assert "$MY_KEY is not set" in e.value.fix


def test_an_image_to_a_model_without_vision_is_a_clear_error_not_a_500(llama_server, wire):
    # Through a bare URL the client does not know the model: llama-server's 500 comes back as what it means.
    with Client(llama_server.v1, llama_server.api_key) as c, pytest.raises(BadInput, match="cannot read images") as e:
        c.chat("What does the receipt say?", image=receipt_path(), max_tokens=8)
    assert e.value.field == "image" and "vision" in e.value.fix
    # Knowing the model from the catalog, the client refuses before sending anything.
    with Client(llama_server.v1, llama_server.api_key, catalog_id="tiny-random", http_client=wire.http) as c, pytest.raises(BadInput, match="tiny-random has no vision encoder") as e:
        c.chat("What does the receipt say?", image=receipt_path())
    assert e.value.field == "image" and wire.chats() == []


def test_bad_input_is_refused_before_any_request(llama_server, tmp_path):
    with pytest.raises(BadInput, match="not an http") as e:
        Client("127.0.0.1:8080/v1")
    assert e.value.field == "base_url" and "/v1" in e.value.fix
    with Client(llama_server.v1, llama_server.api_key) as c, pytest.raises(BadInput, match="no image at") as e:
        c.chat("Look", image=tmp_path / "missing.png")
    assert e.value.field == "image"


def test_a_wrong_path_is_a_404_that_points_at_v1(llama_server):
    with pytest.raises(EngineError, match="404") as e:
        Client(llama_server.base_url + "/v2", llama_server.api_key, model="tiny-random").chat("Hello")
    assert e.value.field == "base_url" and "/v1" in e.value.fix


def test_an_unknown_deployment_name_says_which_exist():
    with pytest.raises(BadInput, match="unknown deployment 'no-such-deployment'") as e:
        Client.from_deployment("no-such-deployment")
    assert e.value.field == "name" and e.value.fix

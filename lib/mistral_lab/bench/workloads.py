"""What a benchmark sends: chat prompts from the seeds, synthetic prompts of a set token count, vision requests.

A workload is named `IN/OUT` (input and output tokens, e.g. `1024/256`), `chat` (the seeds' prompts), `long`
(as close to the deployment's context limit as fits) or `vision` (a generated image plus a question, for models
with a vision encoder). Output length is forced (`max_tokens` plus `ignore_eos` where the engine takes it), so
runs of different engines and GPUs do the same work.

Synthetic prompts are calibrated against the server's own tokenizer: a seeded bag of common words is grown until
the chat prompt, as the server counts it (template included), has exactly the wanted number of tokens. Each
request then sends its own seeded shuffle of that bag: every prompt is different, so no request is served from
a prefix cache, and every prompt has the same token count, because each " word" is one pre-token of the
tokenizer and the count does not depend on word order.
"""

from __future__ import annotations

import math
import random
import re
import struct
import zlib
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from mistral_lab.bench import loadgen
from mistral_lab.errors import BadInput, EngineError

# The seeds' own example prompts (the documents suites/seeds.yaml names), English and Chinese.
SEED_PROMPTS: tuple[str, ...] = (
    "Explain the main difference between instant mode and reasoning mode.",  # seed 000
    "What is the best French cheese?",  # seed 003
    "Write me a sentence where every word starts with the next letter in the alphabet - start with 'a' and end "
    "with 'z'.",  # seed 003
    "Suggest a short and easy recipe using potatoes and cheese.",  # seed 001
    "Explain how large language models work",  # seed 004
    "为速率限制编写一个 Python 装饰器",  # seed 001: "write a Python decorator for rate limiting"
    "在 Python 中实现一个二叉搜索树，包含插入、删除和查找方法",  # seed 001: a binary search tree with insert/delete/find
    "用 FastAPI 编写一个完整的带 CRUD 操作的博客 REST API",  # seed 001: a blog REST API with CRUD in FastAPI
    "识别以下句子中的讽刺或反语，并解释其真实含义：你真是个天才，连这么简单的问题都解决不了。",  # seed 002: irony
)
VISION_PROMPTS: tuple[str, ...] = (
    "What's in this image?",  # seed 002
    "What action do you think I should take in this situation? List all the possible actions and explain why "
    "you think they are good or bad.",  # seed 003
)

# Common lowercase English words: one or two tokens each in Mistral's tekken vocabulary.
_WORDS = """
the of and to in is was for on that with as by at from his her they this which you one all were had are but not
have an be or their has been its also more who can first would after other new time two into about only over
some most many when there these such made years world between while during could each city under three being
during part used state people since through both well where known later water house before light music group
number school power system order river point small large place year north south east west early long high life
work home family game book road field story party early line form case name area line paper market health voice
table room night morning evening garden window street bridge station forest mountain valley island ocean summer
winter spring autumn letter number color answer question reason method result figure model engine server memory
token batch cache layer head value weight signal energy matter reader writer teacher student doctor farmer
driver builder painter singer player leader worker member friend mother father sister brother child woman man
simple quick bright quiet happy ready clear green blue red yellow white black brown heavy light warm cold fresh
"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS.split()))
PREFIX = "Text:"  # keeps the first word a " word" pre-token like all the others
FILLER = "a"
DEFAULT_CHAT_OUTPUT = 256
LONG_OUTPUT = 256
STANDARD = ("chat", "128/128", "1024/256", "4096/512", "long")

_IO = re.compile(r"^(\d+)\s*/\s*(\d+)$")


@dataclass(frozen=True)
class Workload:
    name: str  # as asked: "1024/256", "chat", "long", "vision"
    kind: str  # synthetic | chat | vision
    output_tokens: int
    input_tokens: int | None = None  # target prompt tokens (synthetic); None for chat and vision
    note: str | None = None  # what was changed to fit the context

    @property
    def label(self) -> str:
        """The name with the token counts actually used, where they differ: `long (3776/256)`."""
        if self.kind != "synthetic":
            return self.name
        shape = f"{self.input_tokens}/{self.output_tokens}"
        return shape if shape == self.name else f"{self.name} ({shape})"


def parse(name: str) -> tuple[str, int | None, int]:
    """`1024/256` -> ("synthetic", 1024, 256); `chat`/`vision`/`long` -> their kind with output defaults."""
    n = name.strip().lower()
    m = _IO.match(n)
    if m:
        inp, out = int(m.group(1)), int(m.group(2))
        if inp < 1 or out < 1:
            raise BadInput(f"workload {name!r} needs positive token counts", field="workload", fix="e.g. 1024/256")
        return "synthetic", inp, out
    if n in ("chat", "vision"):
        return n, None, DEFAULT_CHAT_OUTPUT
    if n == "long":
        return "synthetic", None, LONG_OUTPUT
    raise BadInput(f"unknown workload {name!r}", field="workload",
                   fix="IN/OUT token counts (e.g. 1024/256), chat, long, vision, or standard for "
                       + ", ".join(STANDARD))


def expand(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """`"chat,128/128"` or a list -> names; `standard` expands to the standard set."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        for n in STANDARD if item.lower() in ("standard", "all") else (item,):
            if n not in out:
                out.append(n)
    if not out:
        raise BadInput("no workload given", field="workload", fix="e.g. 128/128 or standard")
    return out


def margin(context: int) -> int:
    """Tokens kept free under the context limit: servers count a few tokens the template adds after ours."""
    return max(16, context // 64)


def resolve(names: str | list[str] | tuple[str, ...], context: int, *, vision: bool) -> list[Workload]:
    """The workloads for a deployment with this per-sequence context; ones too long for it are scaled down and
    say so; vision is dropped (with a note) when the model has none."""
    out: list[Workload] = []
    room = context - margin(context)
    for name in expand(names):
        kind, inp, outp = parse(name)
        if kind == "vision" and not vision:
            continue
        note = None
        if outp >= room:
            new_out = max(1, room // 4)
            note = f"output {outp} does not fit context {context}: scaled to {new_out}"
            outp = new_out
        if name.strip().lower() == "long":
            inp = room - outp
        elif inp is not None and inp + outp > room:
            new_in = max(1, room - outp)
            note = f"{inp}+{outp} tokens do not fit context {context}: input scaled to {new_in}"
            inp = new_in
        w = Workload(name=name.strip().lower(), kind=kind, output_tokens=outp, input_tokens=inp, note=note)
        if any(o.kind == w.kind and o.input_tokens == w.input_tokens and o.output_tokens == w.output_tokens
               for o in out):
            continue  # "4096/512" scaled into the same shape as "long": measure it once
        out.append(w)
    return out


def skipped_vision(names: str | list[str] | tuple[str, ...], vision: bool) -> bool:
    return not vision and any(parse(n)[0] == "vision" for n in expand(names))


# ---- calibration against the server's tokenizer ---------------------------------------------------------------


@dataclass
class Counter:
    """Counts the prompt tokens of a one-message chat the way the server does.

    With the server's `/tokenize` (llama.cpp and vLLM both have one) it counts the text and adds the chat
    template's share, measured once with a one-token chat request. Elsewhere it sends that one-token chat request
    for every count and reads `usage.prompt_tokens`.
    """

    base_url: str  # .../v1
    api_key: str | None
    model: str
    timeout: float = 120.0
    calls: int = 0
    _overhead: int | None = None
    _tokenize: bool | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.Client(headers=headers, timeout=self.timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def root(self) -> str:
        return self.base_url.rstrip("/").removesuffix("/v1")

    def chat_prompt_tokens(self, text: str) -> int:
        self.calls += 1
        body = {"model": self.model, "messages": [{"role": "user", "content": text}], "max_tokens": 1,
                "stream": False}
        try:
            r = self._http().post(self.base_url.rstrip("/") + "/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise EngineError(f"could not reach {self.base_url} to size the prompts: {e}", field="base_url",
                              fix="check that the deployment is up (mistral-lab status NAME)") from e
        if r.status_code != 200:
            raise EngineError(f"sizing request failed: HTTP {r.status_code} {r.text[:300]}", field="base_url",
                              fix="check the API key and the model name")
        usage = r.json().get("usage") or {}
        if "prompt_tokens" not in usage:
            raise EngineError("the server reports no usage.prompt_tokens", field="base_url",
                              fix="use an OpenAI-compatible server that reports usage (vLLM, llama.cpp)")
        return int(usage["prompt_tokens"])

    def _tokenize_count(self, text: str) -> int | None:
        if self._tokenize is False:
            return None
        self.calls += 1
        # llama.cpp reads "content", vLLM reads "prompt"; each ignores the other's field.
        body = {"content": text, "prompt": text, "model": self.model, "add_special": False,
                "add_special_tokens": False}
        try:
            r = self._http().post(self.root + "/tokenize", json=body)
        except httpx.HTTPError:
            self._tokenize = False
            return None
        if r.status_code != 200 or "tokens" not in r.text:
            self._tokenize = False
            return None
        self._tokenize = True
        doc = r.json()
        return int(doc.get("count") or len(doc["tokens"]))

    def count(self, text: str) -> int:
        n = self._tokenize_count(text)
        if n is None:
            return self.chat_prompt_tokens(text)
        if self._overhead is None:
            probe = PREFIX + " hello"
            self._overhead = self.chat_prompt_tokens(probe) - (self._tokenize_count(probe) or 0)
        return n + self._overhead


@dataclass(frozen=True)
class Calibrated:
    words: list[str]
    prefix: str
    prompt_tokens: int  # as the server counts the chat prompt
    calls: int


def text_of(words: list[str], prefix: str = PREFIX) -> str:
    return loadgen.synthetic_text(prefix, words)  # the very text the load generator sends


def calibrate(target: int, count: Callable[[str], int], seed: int = 0) -> Calibrated:
    """A bag of words whose chat prompt has `target` tokens (or the nearest count the tokenizer allows)."""
    rng = random.Random(f"words/{seed}")
    calls = 0

    def f(words: list[str]) -> int:
        nonlocal calls
        calls += 1
        return count(text_of(words))

    base = f([])
    if base > target:
        return Calibrated(words=[], prefix=PREFIX, prompt_tokens=base, calls=calls)
    sample = [rng.choice(WORDS) for _ in range(64)]
    per_word = max((f(sample) - base) / len(sample), 0.5)
    n_words = max(int(math.ceil((target - base) / per_word * 1.15)) + 8, 8)
    pool = [rng.choice(WORDS) for _ in range(n_words)]
    while f(pool) < target:
        pool += [rng.choice(WORDS) for _ in range(len(pool))]
    lo, hi = 0, len(pool)  # f(pool[:lo]) <= target < f(pool[:hi]) or hi is the whole pool
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(pool[:mid]) <= target:
            lo = mid
        else:
            hi = mid
    words = pool[:lo]
    got = f(words)
    # Fill the rest with one-token words; a tokenizer where " a" is not one token gets as close as it can.
    while got < target:
        more = words + [FILLER] * (target - got)
        n = f(more)
        if n > target or n == got:
            break
        words, got = more, n
    return Calibrated(words=words, prefix=PREFIX, prompt_tokens=got, calls=calls)


# ---- vision -------------------------------------------------------------------------------------------------


def png(width: int = 448, height: int = 448, seed: int = 0) -> bytes:
    """A seeded test picture (colour gradients and blocks), encoded as PNG with the standard library."""
    rng = random.Random(f"png/{seed}")
    blocks = [(rng.randrange(width), rng.randrange(height), rng.randrange(20, 120),
               (rng.randrange(256), rng.randrange(256), rng.randrange(256))) for _ in range(12)]
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        for x in range(width):
            px = (x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height))
            for bx, by, size, colour in blocks:
                if bx <= x < bx + size and by <= y < by + size:
                    px = colour
            rows.extend(px)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(rows), 6)) + chunk(b"IEND", b"")


def image_data_url(seed: int = 0) -> str:
    return "data:image/png;base64," + b64encode(png(seed=seed)).decode()


def to_spec(w: Workload, *, calibrated: Calibrated | None = None, seed: int = 0) -> dict:
    """The workload as the load generator's spec takes it."""
    if w.kind == "synthetic":
        assert calibrated is not None
        return {"kind": "synthetic", "prefix": calibrated.prefix, "words": calibrated.words,
                "max_tokens": w.output_tokens, "input_tokens": calibrated.prompt_tokens}
    if w.kind == "vision":
        return {"kind": "vision", "prompts": list(VISION_PROMPTS), "image_url": image_data_url(seed),
                "max_tokens": w.output_tokens}
    return {"kind": "chat", "prompts": list(SEED_PROMPTS), "max_tokens": w.output_tokens}

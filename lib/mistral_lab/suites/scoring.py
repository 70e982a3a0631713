"""Automatic scores for replies whose right answer is known. Each scorer takes the reply text and the check's
`expected` value and returns a Score between 0 and 1 with a one-line reason.

Replies from real models explain before they conclude, so the number-reading scorers look at the conclusion
(the text after the last "答案/所以/因此/answer/therefore…", else the last lines) rather than every number the
working mentions.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mistral_lab.assets.receipt import RECEIPT


@dataclass(frozen=True)
class Score:
    score: float
    passed: bool
    detail: str


_CONCLUSION = re.compile(
    r"(答案|答：|答:|所以|因此|综上|最终|结论|final answer|answer|therefore|thus|hence|so the)", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\d.])-?\d+(?:[.,]\d+)?(?![\d])")


def _plain(text: str) -> str:
    """Markdown emphasis and LaTeX wrappers dropped, full-width digits and punctuation folded (NFKC)."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"\*\*|__|\\\(|\\\)|\\\[|\\\]|\$|\\boxed\{|\\text\{", " ", text)


def conclusion(text: str, lines: int = 2) -> str:
    """The part of a reply that states the answer."""
    text = _plain(text).strip()
    found = list(_CONCLUSION.finditer(text))
    if found:
        return text[found[-1].end():]
    body = [line for line in text.splitlines() if line.strip()]
    return "\n".join(body[-lines:])


def numbers_in(text: str) -> list[float]:
    return [float(m.group().replace(",", ".")) for m in _NUMBER.finditer(text)]


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(a - b) <= tol


def numbers(text: str, expected: list[float], prompt: str = "") -> Score:
    """All expected numbers in the conclusion, and no other number there except those of the question itself
    (a conclusion may restate the sum or a product; a list of guesses fails)."""
    found = numbers_in(conclusion(text))
    given = numbers_in(prompt)
    hit = [e for e in expected if any(_close(e, f) for f in found)]
    extra = sorted({f for f in found if not any(_close(f, e) for e in [*expected, *given])})
    score = len(hit) / len(expected)
    if extra:
        return Score(score * 0.5, False, f"found {_fmt(hit)} of {_fmt(expected)}, but also {_fmt(extra)}")
    if len(hit) < len(expected):
        return Score(score, False, f"found {_fmt(hit)} of {_fmt(expected)}")
    return Score(1.0, True, f"all of {_fmt(expected)}")


def labelled_numbers(text: str, expected: dict[str, dict[str, Any]], prompt: str = "") -> Score:
    """Each quantity read next to one of its labels: "23头水牛", "23 buffaloes", "水牛：23"; the last mention
    counts (it is the conclusion's)."""
    plain = _plain(text)
    right, wrong = [], []
    for key, spec in expected.items():
        labels = "|".join(re.escape(label) for label in sorted(spec["labels"], key=len, reverse=True))
        before = re.compile(rf"(\d+)\s*(?:头|只|条|个|匹)?\s*(?:{labels})", re.IGNORECASE)
        after = re.compile(rf"(?:{labels})\s*(?:的数量|数量|count|number)?\s*(?:[:：=]|是|为|有|共)\s*(\d+)",
                           re.IGNORECASE)
        hits = [(m.start(), int(m.group(1))) for m in [*before.finditer(plain), *after.finditer(plain)]]
        if not hits:
            wrong.append(f"{key}: not found")
            continue
        value = max(hits)[1]
        (right if value == spec["value"] else wrong).append(
            f"{key} {value}" if value == spec["value"] else f"{key} {value} (expected {spec['value']})")
    score = len(right) / len(expected)
    return Score(score, not wrong, "; ".join(right + wrong))


def patterns(text: str, expected: list[str], prompt: str = "") -> Score:
    """Any of the regular expressions matches the reply."""
    plain = _plain(text)
    for p in expected:
        m = re.search(p, plain, re.IGNORECASE)
        if m:
            return Score(1.0, True, f"says {m.group()!r}")
    return Score(0.0, False, "the expected answer is not in the reply")


def _alternatives(item: str | list[str]) -> list[str]:
    return [item] if isinstance(item, str) else list(item)


def contains_all(text: str, expected: list[str | list[str]], prompt: str = "") -> Score:
    """Every expected fact is mentioned (each item a string, or a list of ways to say it)."""
    plain = _plain(text).lower()
    missing = [_alternatives(item)[0] for item in expected
               if not any(_mentions(plain, alt.lower()) for alt in _alternatives(item))]
    score = 1 - len(missing) / len(expected)
    return Score(score, not missing, f"missing {missing}" if missing else f"mentions all {len(expected)}")


def _mentions(plain: str, needle: str) -> bool:
    """A number must stand alone ("15" is not found in "2015"); words are plain substrings."""
    if re.fullmatch(r"-?\d+(\.\d+)?%?", needle):
        return re.search(rf"(?<![\d.]){re.escape(needle)}(?![\d])", plain) is not None
    return needle in plain


def sections(text: str, expected: list[str | list[str]], prompt: str = "") -> Score:
    """The reply has each asked-for part, as a heading or a label ("## 摘要", "**风险**:", "Tests run:")."""
    plain = _plain(text)
    missing = []
    for item in expected:
        names = "|".join(re.escape(a) for a in sorted(_alternatives(item), key=len, reverse=True))
        heading = re.compile(rf"^\s*(?:#+\s*|[-*]\s*|\d+[.、)]\s*)?(?:{names})\s*(?:[:：]|$)",
                             re.IGNORECASE | re.MULTILINE)
        if not heading.search(plain):
            missing.append(_alternatives(item)[0])
    score = 1 - len(missing) / len(expected)
    return Score(score, not missing, f"no section {missing}" if missing else f"all {len(expected)} sections")


def alphabet(text: str, expected: Any = None, prompt: str = "") -> Score:
    """The longest run of consecutive words starting a, b, c, … in order; 26 (a to z) passes."""
    best = 0
    for sentence in re.split(r"[\n.!?]+", _plain(text)):
        initials = [w[0].lower() for w in re.findall(r"[A-Za-z][A-Za-z'’-]*", sentence)]
        for start in (i for i, c in enumerate(initials) if c == "a"):
            run = 0
            while start + run < len(initials) and initials[start + run] == chr(ord("a") + run):
                run += 1
                if run == 26:
                    break
            best = max(best, run)
    if best == 26:
        return Score(1.0, True, "a to z, one word per letter")
    return Score(best / 26, False, f"the run from 'a' stops after {best} letters" if best else "no run starting at 'a'")


def parse_json_reply(text: str) -> Any:
    """The JSON object in a reply: the whole text, or inside a ```json fence, or from the first { to the last }."""
    candidates = [text.strip()]
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        candidates.append(fence.group(1).strip())
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object in the reply")


def _flatten(value: Any) -> list[str]:
    """Keys and values of a JSON value, as strings."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_flatten(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _flatten(v)]
    return [] if value is None else [str(value)]


def _fold(s: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", s.lower()) if not unicodedata.combining(c))


def receipt_json(text: str, expected: dict[str, Any] | None = None, prompt: str = "") -> Score:
    """The reply is JSON and holds what the shipped receipt says: merchant, date, bill number, each item with its
    price, the total. Numbers are compared as numbers ("34,40 €" and 34.4 both match 34.40)."""
    receipt = expected or RECEIPT
    try:
        data = parse_json_reply(text)
    except ValueError as e:
        return Score(0.0, False, str(e))
    strings = [_fold(s) for s in _flatten(data)]
    blob = " | ".join(strings)
    nums = [n for s in strings for n in numbers_in(s)]
    date = receipt["date"]
    y, m, d = date.split("-")
    wanted: dict[str, bool] = {
        "merchant": _fold(receipt["merchant"]) in blob,
        "date": any(f in blob for f in (date, f"{d}/{m}/{y}", f"{d}.{m}.{y}", f"{y}/{m}/{d}", f"{d}-{m}-{y}")),
        "bill number": receipt["bill_number"].lstrip("0") in blob,
        "total": any(_close(n, receipt["total"], 0.005) for n in nums),
    }
    for item in receipt["items"]:
        wanted[item["name"]] = _fold(item["name"]) in blob and any(_close(n, item["price"], 0.005) for n in nums)
    missing = [k for k, ok in wanted.items() if not ok]
    score = 1 - len(missing) / len(wanted)
    return Score(score, not missing, f"missing {missing}" if missing else f"all {len(wanted)} fields")


def json_number(text: str, expected: dict[str, Any], prompt: str = "") -> Score:
    """The reply is JSON only, with the number at `key` within `tolerance` of `value`."""
    try:
        data = json.loads(text.strip())
        strict = True
    except json.JSONDecodeError:
        try:
            data = parse_json_reply(text)
        except ValueError as e:
            return Score(0.0, False, str(e))
        strict = False
    value = data.get(expected["key"]) if isinstance(data, dict) else None
    if isinstance(value, str):
        value = (numbers_in(value) or [None])[0]
    if not isinstance(value, int | float):
        return Score(0.25 if strict else 0.0, False, f"no number at {expected['key']!r}")
    if not _close(float(value), expected["value"], expected.get("tolerance", 1e-6)):
        return Score(0.25 if strict else 0.0, False, f"{expected['key']} = {value}, expected {expected['value']}")
    if not strict:
        return Score(0.5, False, f"{expected['key']} = {value}, but the reply has text outside the JSON")
    return Score(1.0, True, f"{expected['key']} = {value}")


SCORERS: dict[str, Callable[..., Score]] = {
    "numbers": numbers,
    "labelled_numbers": labelled_numbers,
    "patterns": patterns,
    "contains_all": contains_all,
    "sections": sections,
    "alphabet": alphabet,
    "receipt_json": receipt_json,
    "json_number": json_number,
}


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values) or "none"

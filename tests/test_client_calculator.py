"""The calculator tool: arithmetic only, bounded, and its spec states the same bounds."""

from __future__ import annotations

import json
import re
import time

import pytest

from mistral_lab.calculator import MAX_LENGTH, TOOL_SPEC, CalculatorError, calculate


@pytest.mark.parametrize(("expression", "value"), [
    ("(3 + 5) * 2 ** 3", 64),
    ("2^10", 1024),
    ("7 / 2", 3.5),
    ("7 // 2", 3),
    ("-7 % 3", 2),
    ("3 × 19.99 × 1.08", pytest.approx(64.7676)),
    ("10 ÷ 4", 2.5),
    ("6 / 3", 2),  # a whole float comes back as an int, as a person would write it
])
def test_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(("expression", "reason"), [
    ("__import__('os').system('true')", "not allowed"),
    ("open('/etc/passwd')", "not allowed"),
    ("(1).__class__", "not allowed"),
    ("True + 1", "not allowed"),
    ("x * 2", "not allowed"),
    ("[1, 2][0]", "not allowed"),
    ("1 / 0", "division by zero"),
    ("2 +", "not an arithmetic expression"),
    ("(-8) ** 0.5", "not a real number"),
    ("10.0 ** 400", "too large for a float"),
    ("1e308 * 10", "too large for a float"),
])
def test_anything_else_is_refused_with_the_reason(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)


@pytest.mark.parametrize("expression", [
    "9 ** 9 ** 9",
    "((10 ** 1000) ** 1000) ** 1000",
    "*".join(["2 ** 1000"] * 15),
    "1 + " * 60 + "1",
])
def test_runaway_expressions_are_refused_at_once(expression):
    t0 = time.monotonic()
    with pytest.raises(CalculatorError, match="too large|more than|longer than"):
        calculate(expression)
    assert time.monotonic() - t0 < 0.5


def test_the_tool_spec_states_the_calculator_bounds():
    prop = TOOL_SPEC["function"]["parameters"]["properties"]["expression"]
    assert prop["maxLength"] == MAX_LENGTH and TOOL_SPEC["function"]["name"] == "calculator"
    pattern = re.compile(prop["pattern"])
    assert pattern.match("(3 + 5) * 2 ^ 3") and not pattern.match("__import__('os')")
    json.dumps(TOOL_SPEC)  # sent as JSON to the server

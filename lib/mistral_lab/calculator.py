"""The calculator tool from the model cards' function-calling examples, without eval.

Parses the expression with `ast` and evaluates only numbers, + - * / // % ** and parentheses, with bounds on
expression length, exponent and result size so a model (or a user) cannot make it run away: `9**9**9` or
`((10**1000)**1000)**1000` would otherwise take minutes and gigabytes.
"""

from __future__ import annotations

import ast
import math
import operator

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_LENGTH = 200
MAX_EXPONENT = 1000
MAX_DIGITS = 4300  # Python's own limit for turning an int into text


class CalculatorError(ValueError):
    pass


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise CalculatorError(f"exponent {right} is too large (at most {MAX_EXPONENT})")
            if abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_DIGITS:
                raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")
        try:
            result = _BIN[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large for a float") from None
        if isinstance(result, complex):
            raise CalculatorError("the result is not a real number")
        if isinstance(result, float) and not math.isfinite(result):
            raise CalculatorError("the result is too large for a float")
        if isinstance(result, int) and result.bit_length() > MAX_DIGITS * 3.33:
            raise CalculatorError(f"the result would have more than {MAX_DIGITS} digits")
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise CalculatorError(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


def calculate(expression: str) -> float | int:
    """Evaluate an arithmetic expression such as `(3 + 5) * 2 ** 3`."""
    if len(expression) > MAX_LENGTH:
        raise CalculatorError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(expression.replace("^", "**").replace("×", "*").replace("÷", "/"), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {e.msg}") from None
    result = _eval(tree)
    return int(result) if isinstance(result, float) and result.is_integer() else result


TOOL_SPEC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression and return the number.",
        "parameters": {
            "type": "object",
            # The same bounds calculate() enforces, so servers that constrain arguments by schema keep to them.
            "properties": {"expression": {"type": "string", "description": "e.g. (3 + 5) * 2",
                                          "maxLength": MAX_LENGTH, "pattern": r"^[0-9.+\-*/%()^ ]+$"}},
            "required": ["expression"],
        },
    },
}

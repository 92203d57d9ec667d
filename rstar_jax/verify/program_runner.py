"""The reference's observable execution semantics (rstar_reference.md §3.4-3.5).

`run_program` executes model-written code and therefore runs only inside a confined
sandbox process (`_zygote.py`); nothing in the main process calls it. The text-shaping
helpers (`sanitize`, `print_statement_indices`, `print_label`, `shape_value`) are pure
and are tested directly.

What the model sees, reproduced from the reference's `PythonInterpreter`:
* the program is stripped of surrounding backticks/whitespace and a leading "python";
* top-level statements are split after every "print statement" (an expression
  statement calling `print`, or an if/for/while/def whose body holds one, searched
  recursively through bodies only, never `else` branches);
* with no print statement the program is one segment; with exactly one the whole
  program is one segment (so statements after that print still run); with two or
  more, statements after the last print statement never run;
* in each segment all statements but the last run with stdout not captured; the
  last is evaluated if it is an expression and its value, when not None, is the
  segment's result, otherwise the stdout written while it ran is the result;
* with one segment the observation is its result; with several, each result is
  prefixed by the `print(...)` argument texts of its print statement and a colon;
* a result that parses as a float is rounded to 4 decimals when that is shorter
  (only for text results, not for values), then cut to first 512 + "..." + last 512
  characters; any exception anywhere replaces the whole observation by
  `"{Type}: {message}"`; the final observation is `.strip()`-ed.

Deliberate differences, none visible for well-behaved programs:
* the reference evaluates a failing trailing expression twice (eval, then exec); we
  run it once;
* `SystemExit`, `KeyboardInterrupt` and other BaseExceptions are reported like
  exceptions (the reference lets them kill its worker) and flagged as abnormal;
* everything the program writes to stdout/stderr (captured or not) counts against
  `max_output_bytes`; past it the program is stopped with `OutputLimitError`;
* the joined observation of many print statements is capped at `max_result_chars`
  characters (its head + "..." + its tail, `cap`), so no observation is unbounded.
"""

from __future__ import annotations

import ast
import io
import re
import sys

TRUNCATE_CHARS = 1024  # reference `max_length`: keep first 512 + "..." + last 512
ROUND_DIGITS = 4

_LEADING = re.compile(r"^(\s|`)*(?i:python)?\s*")
_TRAILING = re.compile(r"(\s|`)*$")
# Non-greedy and single-line, as in the reference: `print(f(x))` gives the label "f(x".
_PRINT_ARGS = re.compile(r"print\((.*?)\)")


class OutputLimitError(Exception):
    """The program wrote more than the executor's output cap."""


def sanitize(program: str) -> str:
    """Strip backticks/whitespace around the program and a leading "python" (any case)."""
    return _TRAILING.sub("", _LEADING.sub("", program, count=1), count=1)


def _is_print_statement(node: ast.stmt) -> bool:
    if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name) and node.value.func.id == "print"):
        return True
    if isinstance(node, (ast.If, ast.While, ast.For, ast.FunctionDef)):
        return any(_is_print_statement(child) for child in node.body)
    return False


def print_statement_indices(body: list[ast.stmt]) -> list[int]:
    """Indices of top-level statements the reference treats as print statements."""
    return [i for i, node in enumerate(body) if _is_print_statement(node)]


def print_label(statement_source: str) -> str:
    """Prefix of one segment's result when a program has several print statements."""
    args = _PRINT_ARGS.findall(statement_source)
    return " ".join(args) + ":" if args else ""


def truncate(text: str, max_chars: int = TRUNCATE_CHARS) -> str:
    """First and last `max_chars // 2` characters joined by "..." when too long."""
    if len(text) > max_chars:
        half = max_chars // 2
        return text[:half] + "..." + text[-half:]
    return text


def cap(text: str, max_chars: int) -> str:
    """At most `max_chars` characters: head + "..." + tail when longer (unlike
    `truncate`, whose reference cut is 3 characters longer than its bound)."""
    if len(text) <= max_chars:
        return text
    head = (max_chars - 3) // 2
    tail = max_chars - 3 - head
    return text[:head] + "..." + (text[-tail:] if tail else "")


def shape_value(value: object) -> str:
    """One segment's result as text: float rounding for text results, then truncation."""
    if isinstance(value, str):
        try:
            rounded = str(round(float(value), ROUND_DIGITS)) + "\n"
        except (ValueError, OverflowError):
            pass
        else:
            if len(value) >= len(rounded):
                value = rounded
        return truncate(value)
    text = f"{value}"
    return truncate(text)


class CappedWriter(io.TextIOBase):
    """A text stream that keeps (or discards) what it gets and enforces a shared byte cap."""

    def __init__(self, budget: list[int], keep: bool):
        super().__init__()
        self._budget = budget  # one-element list shared by every stream of a run
        self._keep = keep
        self._parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._budget[0] -= len(text)
        if self._budget[0] < 0:
            raise OutputLimitError("the program wrote more output than the executor allows")
        if self._keep:
            self._parts.append(text)
        return len(text)

    def getvalue(self) -> str:
        return "".join(self._parts)


def describe_exception(exc: BaseException) -> str:
    """`"{Type}: {message}"`, robust to exceptions whose `__str__` itself fails."""
    try:
        message = str(exc)
    except Exception:  # a hostile __str__ must not escape the runner
        message = "<exception message could not be rendered>"
    return f"{type(exc).__name__}: {message}"


def _run_segment(body: list[ast.stmt], namespace: dict, budget: list[int]) -> str:
    """Run one segment; return its result text (see module docstring)."""
    head = ast.Module(body=body[:-1], type_ignores=[])
    sys.stdout = CappedWriter(budget, keep=False)
    exec(compile(head, "<program>", "exec"), namespace)
    capture = CappedWriter(budget, keep=True)
    sys.stdout = capture
    last = body[-1:]
    if last and isinstance(last[0], ast.Expr):
        value = eval(compile(ast.Expression(last[0].value), "<program>", "eval"), namespace)
    else:
        exec(compile(ast.Module(body=last, type_ignores=[]), "<program>", "exec"), namespace)
        value = None
    sys.stdout = CappedWriter(budget, keep=False)
    return shape_value(capture.getvalue() if value is None else value)


def run_program(program: str, namespace: dict, max_output_bytes: int,
                max_result_chars: int) -> tuple[str, bool, bool]:
    """Execute `program` in `namespace`; return (observation, raised, abnormal).

    `raised` is True when an exception ended the program; `abnormal` when that
    exception was not an `Exception` (SystemExit and friends) or the output cap hit.
    Must only be called inside the sandbox process.
    """
    budget = [max_output_bytes]
    saved = sys.stdout, sys.stderr
    sys.stderr = CappedWriter(budget, keep=False)
    try:
        source = sanitize(program)
        body = ast.parse(source).body
        cuts = print_statement_indices(body) or [len(body) - 1]
        if len(cuts) == 1:
            observation = _run_segment(body, namespace, budget)
        else:
            pieces = []
            for start, end in zip([-1] + cuts, cuts):
                label = print_label(ast.get_source_segment(source, body[end]) or "")
                pieces.append(f"{label} {_run_segment(body[start + 1:end + 1], namespace, budget)}")
            observation = "".join(pieces)
        raised = abnormal = False
    except OutputLimitError as exc:
        observation, raised, abnormal = describe_exception(exc), True, True
    except Exception as exc:  # the reference reports every Exception as "Type: message"
        observation, raised, abnormal = describe_exception(exc), True, False
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit
        observation, raised, abnormal = describe_exception(exc), True, True
    finally:
        sys.stdout, sys.stderr = saved
    return cap(observation.strip(), max_result_chars).strip(), raised, abnormal

"""Final-answer extraction and math equivalence, built on math-verify.

Why math-verify plus a thin layer (shared/reference/graders.md §5): among the public
graders it is the only one with no false "equal" verdict on the peer case set, and false
"equal" verdicts are label noise for MCTS Q-values and PPM pairs. Its misses are
benchmark conventions, which the layer here adds: percent vs bare number, units and `\\$`,
degrees, `x = 5` vs `5`, multiple-choice letters, clock times, base-n numerals, `i` as
the imaginary unit, and a 1e-4 relative tolerance for non-integer golds only (so
1000001 never equals 1000000).

Differences from the reference's `extract_math_answer` (rstar_reference.md §3.6):
  * no cut at the first ".\\n" (the reference drops an answer boxed after a sentence end;
    `extract_answer(..., reference_cut=True)` cuts as it does, quirk 6);
  * several trailing boxes joined by connectors are one answer ("\\boxed{1} and \\boxed{2}");
  * a solution without a box is graded from its final statement, not taken whole.

Every call is bounded in time and never raises. math-verify's own time limits use
SIGALRM, which only works in the main thread, while MCTS grades from worker threads; so
math-verify runs with its limits off, and `math_equal` runs in a small pool of helper
processes, one of which is killed and replaced when a call passes its deadline
(`_deadline_pool.py` says why not a thread-level timeout). Answers that are the same
string after canonicalisation are decided in-process without a round trip.
"""

from __future__ import annotations

import collections
import functools
import importlib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from rstar_jax.verify import _deadline_pool
from rstar_jax.verify import _grader_text as text

DEFAULT_TIMEOUT_S = 5.0
# Relative tolerance for non-integer golds: accepts 4-significant-digit roundings such as
# 8.9443 for 4*sqrt(5) (the reference's examples do), never used between integers.
REL_TOL = 1e-4

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


class _QuietMathVerifyTimeoutWarning(logging.Filter):
    """math-verify warns once that its own timeout is off; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


# Created on first use, not at import: the helper pool (its size read from
# RSTAR_GRADER_WORKERS then; closed at exit by `_deadline_pool`) and math-verify's
# log filter.
_POOL: _deadline_pool.DeadlinePool | None = None
_INIT_LOCK = threading.Lock()
_quiet = False


def _pool() -> _deadline_pool.DeadlinePool:
    global _POOL
    with _INIT_LOCK:
        if _POOL is None:
            raw = os.environ.get("RSTAR_GRADER_WORKERS", "2")
            if not raw.strip().isdigit() or int(raw) < 1:
                raise ValueError(f"RSTAR_GRADER_WORKERS must be a positive integer (the "
                                 f"grader's helper processes), got {raw!r}")
            _POOL = _deadline_pool.shared_pool(int(raw), warm_modules=(__name__,))
        return _POOL


def _quiet_math_verify() -> None:
    global _quiet
    if _quiet:
        return
    with _INIT_LOCK:
        if not _quiet:
            for name in ("math_verify.parser", "math_verify.grader"):
                logging.getLogger(name).addFilter(_QuietMathVerifyTimeoutWarning())
            _quiet = True


def _call_with_deadline(module: str, function: str, args: tuple, timeout_s: float | None,
                        default: _T) -> _T:
    """`module.function(*args)`, or `default` if it raises or runs past `timeout_s` seconds.

    With a deadline the call runs in a helper process (killed at the deadline); without
    one it runs here.
    """
    status, value = _call_status(module, function, args, timeout_s)
    return value if status == "ok" else default


def _call_status(module: str, function: str, args: tuple, timeout_s: float | None):
    """("ok", value), ("error", None) or ("timeout", None) of `module.function(*args)`."""
    if timeout_s is None or timeout_s <= 0:
        try:
            return "ok", getattr(importlib.import_module(module), function)(*args)
        except Exception:
            return "error", None
    status, value = _pool().call(module, function, args, timeout_s)
    if status == "timeout":
        _log.debug("grading %s timed out after %.1f s", function, timeout_s)
    return ("ok", value) if status == "ok" else (status, None)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------

def extract_answer(solution: str, *, reference_cut: bool = False) -> str:
    """The final answer written in a solution text; "" when there is none.

    In order: the last `\\boxed{...}` or `\\fbox{...}` (nested braces matched), joined
    with the boxes just before it when only connectors ("and", ",", `\\quad`) separate
    them; but a "final answer is X" after the last box wins. Without a box: the text
    after "the answer is" / "final answer:", else the last math segment (`$..$`,
    `\\(..\\)`, `\\[..\\]`) or the last number, whichever comes later. An answer that is
    one `\\text{...}` is unwrapped. Never raises.

    `reference_cut=True` first keeps only the text before the first ".\\n" and strips one
    trailing "." from it, as the reference's `extract_math_answer` does (§3.6, quirk 6;
    `config.search.reference_answer_cut`); the rules above then read that segment.
    """
    if not isinstance(solution, str):
        return ""
    try:
        if reference_cut:
            solution = text.reference_cut(solution)
        return text.extract_final_answer(solution)
    except Exception:  # a malformed solution has no answer; grading must not crash
        return ""


_PLAIN_INTEGER = re.compile(r"-?\d{1,30}")
# Verdicts of the full rules by (pred, gold): search grades every answer leaf and the
# data rules grade the same leaves again; timeouts are never stored.
_VERDICTS: collections.OrderedDict = collections.OrderedDict()
_VERDICTS_LOCK = threading.Lock()
_MAX_VERDICTS = 1 << 16


def math_equal(pred: str, gold: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the predicted answer is mathematically the gold answer.

    `pred` is normally an extracted answer; a full solution containing `\\boxed` is
    extracted first. Symmetric in spirit but not exactly: the gold decides conventions
    (a choice letter, a clock time, integer vs non-integer tolerance). Returns False for
    an empty gold or pred, on any error, and after `timeout_s` seconds. Never raises.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    try:
        p, g = text.canonical_string(pred), text.canonical_string(gold)
        if p == g and pred.strip():
            return True     # the common case needs no helper process
        if _PLAIN_INTEGER.fullmatch(p) and _PLAIN_INTEGER.fullmatch(g):
            # Two plain integers are equal exactly when their values are (the full path
            # agrees: integers never merge by tolerance); no helper process needed.
            return int(p) == int(g)
    except Exception:
        pass
    key = (pred, gold)
    with _VERDICTS_LOCK:
        if key in _VERDICTS:
            _VERDICTS.move_to_end(key)
            return _VERDICTS[key]
    status, value = _call_status(__name__, "_math_equal", (pred, gold), timeout_s)
    verdict = bool(value) if status == "ok" else False
    if status == "ok":   # a verdict, not a timeout (which depends on the machine's load)
        with _VERDICTS_LOCK:
            _VERDICTS[key] = verdict
            if len(_VERDICTS) > _MAX_VERDICTS:
                _VERDICTS.popitem(last=False)
    return verdict


def math_equal_any(pred: str, golds: Iterable[str], *,
                   timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """`math_equal` against any of several accepted golds (e.g. `Problem.answers`)."""
    return any(math_equal(pred, g, timeout_s=timeout_s) for g in golds)


# ---------------------------------------------------------------------------------------
# Implementation
# ---------------------------------------------------------------------------------------

def _math_equal(pred: str, gold: str) -> bool:
    if "\\boxed" in pred or "\\fbox" in pred:
        pred = extract_answer(pred)
    if "\\boxed" in gold or "\\fbox" in gold:
        gold = extract_answer(gold)
    if not pred.strip() or not gold.strip():
        return False
    if text.canonical_string(pred) == text.canonical_string(gold):
        return True
    if not text.is_well_formed(pred):
        # math-verify reads a prefix of broken LaTeX ("\begin{pmatrix} 1 &" as 1); a
        # truncated generation is not an answer.
        return False

    # Conventions with a fixed meaning decide on their own: no sympy fallback, which
    # would read "C" as a symbol or "12:00" as a ratio.
    gold_choice = text.multiple_choice_letter(gold)
    if gold_choice is not None:
        return text.multiple_choice_letter(pred) == gold_choice
    gold_time, pred_time = text.clock_time(gold), text.clock_time(pred)
    if gold_time is not None and pred_time is not None:
        return _same_time(gold_time, pred_time)
    gold_base, pred_base = text.base_n_digits(gold), text.base_n_digits(pred)
    if gold_base and pred_base and (gold_base[1] or pred_base[1]):
        # Digits must agree exactly; a missing base on one side is the same numeral.
        return gold_base[0] == pred_base[0] and (
            not gold_base[1] or not pred_base[1] or gold_base[1] == pred_base[1])

    for gold_form, pred_form in _candidate_pairs(pred, gold):
        if _mv_equal(gold_form, pred_form):
            return True
    return _numerically_close(text.strip_conventions(pred), text.strip_conventions(gold))


def _same_time(a: tuple[int, int, int, str], b: tuple[int, int, int, str]) -> bool:
    def minutes(t):  # 24-hour seconds; "4:30 pm" and "16:30" are one time
        h, m, s, meridiem = t
        if meridiem == "pm" and h < 12:
            h += 12
        if meridiem == "am" and h == 12:
            h = 0
        return (h * 60 + m) * 60 + s
    ambiguous = [t for t in (a, b) if not t[3] and 1 <= t[0] <= 12]
    if bool(a[3]) != bool(b[3]) and ambiguous:
        # "4:30" without am/pm may be either; "16:30" is unambiguously afternoon.
        return minutes(a) % (12 * 3600) == minutes(b) % (12 * 3600)
    return minutes(a) == minutes(b)


def _candidate_pairs(pred: str, gold: str) -> list[tuple[str, str]]:
    """(gold form, pred form) pairs to try, from literal to convention-stripped."""
    pairs = [(text.normalize(gold), text.normalize(pred))]
    gold_plain, pred_plain = text.strip_conventions(gold), text.strip_conventions(pred)
    pairs.append((gold_plain, pred_plain))
    gold_bare, pred_bare = text.strip_labels(gold_plain), text.strip_labels(pred_plain)
    # "x = 5" vs "5": a label on one side only. Labels on both sides must agree, which
    # math-verify checks on the equations themselves ("x = 2" is not "y = 2").
    if gold_bare == gold_plain or pred_bare == pred_plain or _same_function_label(gold_plain, pred_plain):
        pairs.append((gold_bare, pred_bare))
    gold_rad, pred_rad = text.degrees_as_radians(gold), text.degrees_as_radians(pred)
    if gold_rad:
        pairs.append((gold_rad, pred_plain))
    if pred_rad:
        pairs.append((gold_plain, pred_rad))
    # A decimal comma ("1000,99") against a decimal gold; never against an integer or a
    # list gold, where "3,5" means two numbers.
    if re.fullmatch(r"-?\d+,\d+", pred_plain) and re.fullmatch(r"-?\d*\.\d+", gold_plain):
        pairs.append((gold_plain, pred_plain.replace(",", ".")))
    unique = []
    for pair in pairs:
        if pair not in unique and all(pair):
            unique.append(pair)
    return unique


def _same_function_label(gold: str, pred: str) -> bool:
    """"f(x) = 2x+3" and "y = 2x+3" both define the function of x: y and f(x) match."""
    labels = {text.leading_label(gold), text.leading_label(pred)}
    return len(labels) == 2 and "y" in labels and any(
        label and re.fullmatch(r"[a-zA-Z]\(x\)", label) for label in labels)


@functools.lru_cache(maxsize=4096)
def _parse(answer: str) -> tuple:
    """math-verify's parse of one answer (LaTeX first, then plain expression)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    _quiet_math_verify()
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return tuple(parse(f"${answer}$", config, parsing_timeout=None))


def _mv_equal(gold: str, pred: str) -> bool:
    from math_verify import verify

    _quiet_math_verify()
    gold_parsed, pred_parsed = _parse(gold), _parse(pred)
    if not gold_parsed or not pred_parsed:
        return False
    if verify(list(gold_parsed), list(pred_parsed), timeout_seconds=None):
        return True
    # math-verify reads `i` as a free symbol; when the gold's only symbol is i it is the
    # imaginary unit (1+2i vs i(2-i)).
    imaginary = _with_imaginary_unit(gold_parsed[0]), _with_imaginary_unit(pred_parsed[0])
    if imaginary[0] is not None and imaginary[1] is not None:
        return bool(verify([imaginary[0]], [imaginary[1]], timeout_seconds=None))
    return False


def _with_imaginary_unit(expr):
    """`expr` with the symbol i replaced by sympy's I; None unless i is its only symbol."""
    import sympy

    free = getattr(expr, "free_symbols", None)
    if not free or {s.name for s in free} != {"i"}:
        return None
    return expr.subs(next(iter(free)), sympy.I)


def _numerically_close(pred: str, gold: str) -> bool:
    """Relative tolerance REL_TOL, only when the gold value is finite and not an integer.

    Integer golds (counts, AIME answers) must match exactly, which math-verify already
    decided: 1000001 is not 1000000, and 9999.857 is not 10,000.
    """
    gold_value = _number(gold)
    if gold_value is None or not math.isfinite(gold_value) or gold_value == int(gold_value):
        return False
    pred_value = _number(pred)
    return pred_value is not None and math.isclose(gold_value, pred_value, rel_tol=REL_TOL)


def _number(answer: str) -> float | None:
    """The real value of a constant answer, or None (symbols, sets, errors)."""
    import sympy

    parsed = _parse(answer)
    if not parsed or not isinstance(parsed[0], sympy.Expr) or parsed[0].free_symbols:
        return None
    value = complex(sympy.N(parsed[0], 30))
    return value.real if abs(value.imag) < 1e-12 else None

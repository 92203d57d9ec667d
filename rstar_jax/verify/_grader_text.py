"""String side of the grader: finding the final answer in a solution and rewriting the
answer conventions of the benchmarks into forms math-verify compares correctly.

Everything here is a pure function of strings; nothing calls sympy. `grader.py` owns the
public API, the time limit and the math-verify calls.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------
# Final-answer extraction
# ---------------------------------------------------------------------------------------

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
# "The final answer is X", "the answer is: X", "Final Answer: X" (Minerva / Qwen styles).
_ANSWER_PHRASE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is\s*:?|:)\s*", re.IGNORECASE)
# Math delimited by $$..$$, $..$ (not the escaped \$), \[..\] or \(..\).
_MATH_SEGMENT = re.compile(
    r"\$\$((?:\\\$|[^$])+?)\$\$|(?<!\\)\$((?:\\\$|[^$])+?)(?<!\\)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)", re.DOTALL)
# Integers, thousands-grouped numbers, decimals and simple fractions like 2/3.
# A decimal comma ("2,74") is kept whole too; math_equal reads it as 2.74 against a
# decimal gold only.
_NUMBER = re.compile(
    r"(?<![\d,])-?\d+,\d{1,2}(?![\d,])|-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
# The end of a sentence: a period not between digits, or a line break.
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|\.(?=\s|$)|\n|\bI hope\b")
# Words that may join boxes of one split answer ("\boxed{1} and \boxed{2}").
_CONNECTOR_WORDS = {"and", "or", "for", "part", "parts", "a", "b", "c", "d", "i", "ii"}
_MAX_CONNECTOR_GAP = 80


def find_boxes(text: str) -> list[tuple[int, int, str]]:
    """Every `\\boxed{...}` / `\\fbox{...}` as (start, end, content), braces matched."""
    boxes = []
    for match in _BOX_START.finditer(text):
        depth, i = 1, match.end()
        while i < len(text) and depth:
            if text[i] == "\\":  # an escaped \{ or \} (set braces) does not nest
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:  # an unclosed box is not an answer
            boxes.append((match.start(), i, text[match.end(): i - 1]))
    # A box inside another box (rare) is part of the outer answer, not a separate one.
    return [b for b in boxes if not any(o[0] < b[0] and b[1] <= o[1] for o in boxes)]


def _is_connector(gap: str) -> bool:
    """Whether the text between two boxes only joins parts of one answer."""
    if len(gap) > _MAX_CONNECTOR_GAP or "\n\n" in gap:
        return False
    g = re.sub(r"\\text\{([^{}]*)\}", r" \1 ", gap)
    g = re.sub(r"\\[()\[\]]|\$|\\q?quad|\\[,;:! ]|~|&", " ", g)
    # The label of the next box ("and $y_2 = \boxed{..}$") is not an answer part.
    g = re.sub(r"[A-Za-z](?:_\{?\w+\}?)?\s*=\s*$", " ", g.rstrip())
    tokens = re.findall(r"[A-Za-z]+|\S", g)
    return all(t.lower() in _CONNECTOR_WORDS or t in ",;()" for t in tokens)


def _trailing_box_group(text: str, boxes: list[tuple[int, int, str]]) -> tuple[int, str]:
    """The last box joined with the boxes right before it that only connectors separate.

    Returns (start of the group, answer text). Several trailing boxes are how models
    write multi-part answers ("\\boxed{-2} and \\boxed{1}"); graded as one list "-2, 1".
    """
    group = [boxes[-1]]
    for prev in reversed(boxes[:-1]):
        if not _is_connector(text[prev[1]: group[0][0]]):
            break
        group.insert(0, prev)
    return group[0][0], ", ".join(b[2].strip() for b in group)


def _phrase_answer(rest: str) -> str:
    """The answer right after "the answer is": a math segment or text to the sentence end.

    When that sentence is prose ("Final Answer: The largest $n$ is 34."), its final
    statement (last math segment or number) is the answer.
    """
    rest = rest.lstrip()
    segment = _MATH_SEGMENT.match(rest)
    if segment:
        return next(g for g in segment.groups() if g is not None)
    end = _SENTENCE_END.search(rest)
    sentence = rest[: end.start()] if end else rest
    if len(sentence.split()) > 3:
        inner = _final_statement_answer(sentence)
        if inner:
            return inner
    return sentence


def _final_statement_answer(text: str) -> str:
    """No box and no answer phrase: the last math segment or the last number, whichever
    ends later (so "the pair is $(7, 6)$." gives (7, 6) and "$n$ is 34." gives 34)."""
    segments = list(_MATH_SEGMENT.finditer(text))
    numbers = list(_NUMBER.finditer(text))
    last_segment = segments[-1] if segments else None
    last_number = numbers[-1] if numbers else None
    if last_segment and (not last_number or last_number.start() < last_segment.end()):
        return next(g for g in last_segment.groups() if g is not None)
    return last_number.group(0) if last_number else ""


def reference_cut(text: str) -> str:
    """The text before the first ".\\n", less one trailing "." (rstar_reference.md §3.6
    step 1, quirk 6): the reference's `extract_math_answer` reads its answer from this
    segment only, so a box written after a sentence end is lost."""
    segment = text.split(".\n", 1)[0]
    return segment[:-1] if segment.endswith(".") else segment


def extract_final_answer(text: str) -> str:
    """See `grader.extract_answer` (this is the implementation, which may raise)."""
    boxes = find_boxes(text)
    phrases = list(_ANSWER_PHRASE.finditer(text))
    last_phrase = phrases[-1] if phrases else None
    if boxes:
        start, answer = _trailing_box_group(text, boxes)
        # A later "final answer is X" (after the last box) restates the answer last.
        if last_phrase and last_phrase.start() > boxes[-1][1]:
            restated = _phrase_answer(text[last_phrase.end():])
            if restated.strip():
                answer = restated
    elif last_phrase:
        answer = _phrase_answer(text[last_phrase.end():])
    else:
        answer = _final_statement_answer(text)
    return clean_answer(answer)


def clean_answer(answer: str) -> str:
    """Trim delimiters, a trailing period and a whole-answer `\\text{}` wrapper."""
    answer = collapse_doubled_backslashes(answer).strip()
    for _ in range(2):  # "$x$." -> "$x$" -> "x"
        answer = strip_math_delimiters(answer)
        answer = re.sub(r"(?<=\S)\s*\.+$", "", answer).strip()
    whole_text = re.fullmatch(r"\\(?:text|textbf|textnormal|textrm|mathrm|mbox)\{([^{}]*)\}", answer)
    if whole_text:
        answer = whole_text.group(1).strip()
    return answer


def is_well_formed(s: str) -> bool:
    """Unescaped braces balance and every `\\begin{..}` has its `\\end{..}`."""
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth < 0:
            return False
        i += 1
    return depth == 0 and s.count("\\begin{") == s.count("\\end{")


def strip_math_delimiters(s: str) -> str:
    """Remove one pair of enclosing `$..$`, `$$..$$`, `\\(..\\)` or `\\[..\\]`."""
    s = s.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
            return s[len(left): len(s) - len(right)].strip()
    return s


# Commands whose name right after "\\" proves the "\\" is an escaping artifact (a JSON
# or raw-string double escape), never a LaTeX line break followed by text.
_DOUBLED_COMMAND = re.compile(
    r"\\\\(?=(?:frac|dfrac|tfrac|left|right|pi|sqrt|cdot|times|text|boxed|infty|circ|"
    r"le|ge|leq|geq|neq|pm|mp|sin|cos|tan|log|ln|in|cup|cap|mathbf|mathrm|begin|end)\b)")


def collapse_doubled_backslashes(s: str) -> str:
    """`\\\\frac` -> `\\frac`: undo double escaping when the whole string is affected."""
    if _DOUBLED_COMMAND.search(s) and not re.search(r"(?<!\\)\\(?:frac|left|sqrt|pi)\b", s):
        s = _DOUBLED_COMMAND.sub(r"\\", s)
        s = s.replace("\\\\{", "\\{").replace("\\\\}", "\\}")
    return s


# ---------------------------------------------------------------------------------------
# Answer conventions
# ---------------------------------------------------------------------------------------

def normalize(s: str) -> str:
    """Spelling-only rewrites that never change the meaning of an answer."""
    s = collapse_doubled_backslashes(s).strip()
    s = strip_math_delimiters(s)
    whole_box = find_boxes(s)
    if len(whole_box) == 1 and whole_box[0][0] == 0 and whole_box[0][1] == len(s):
        s = whole_box[0][2].strip()
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:textnormal|textrm|textbf|mathrm|mbox|textit|mathit)\s*\{", r"\\text{", s)
    s = re.sub(r"\\left\s*\.|\\right\s*\.", "", s)
    s = re.sub(r"\\(?:left|right|displaystyle|bigl|bigr|Bigl|Bigr|big|Big)(?![A-Za-z])", "", s)
    # Digit grouping: 10{,}000, 12,\!000 and 1\,000 are 10000, 12000 and 1000.
    s = re.sub(r"(?<=\d)(?:\{,\}|,\\!|\\,|\\!|\\ )\s*(?=\d{3}(?!\d))", "", s)
    s = s.replace("\\!", "")
    s = re.sub(r"\s+", " ", s).strip()
    return re.sub(r"(?<=\S)[.\s]+$", "", s) if not re.search(r"\d\.$", s) else s[:-1]


def canonical_string(s: str) -> str:
    """A spacing/case-free form for plain string equality (text answers like "Yes")."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", normalize(s))
    s = s.replace(" ", "").replace("\\,", "").replace("\\;", "").rstrip(".")
    # Case only matters for single letters (variables, choices); words are case-free.
    return s.lower() if re.fullmatch(r"[A-Za-z]{2,}", s) else s


_CHOICE = re.compile(r"\(?([A-E])\)?")


def multiple_choice_letter(s: str) -> str | None:
    """"B", "(B)", "\\text{(B)}", "(B) 12" -> "B"; None when `s` is not a choice."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", normalize(s)).strip()
    whole = _CHOICE.fullmatch(s)
    if whole:
        return whole.group(1)
    labelled = re.match(r"\(([A-E])\)\s", s)  # "(B) 12": the option letter with its value
    return labelled.group(1) if labelled else None


_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s*((?:a|p)\.?\s*m\.?)?", re.IGNORECASE)


def clock_time(s: str) -> tuple[int, int, int, str] | None:
    """"20:34" / "20:34:00" / "4:30 p.m." -> (h, m, s, am|pm|""); None if not a time."""
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", normalize(s)).replace("\\", "").strip()
    match = _TIME.fullmatch(s)
    if not match:
        return None
    meridiem = (match.group(4) or "").lower().replace(".", "").replace(" ", "")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0), meridiem


_BASE_N = re.compile(r"([0-9A-Fa-f]+)_\{?(\d+)\}?")


def base_n_digits(s: str) -> tuple[str, str] | None:
    """"1112112_3" -> ("1112112", "3"); plain digits -> (digits, ""); else None."""
    s = normalize(s).replace(" ", "")
    match = _BASE_N.fullmatch(s)
    if match:
        return match.group(1).upper(), match.group(2)
    return (s, "") if re.fullmatch(r"\d+", s) else None


# Unit words the benchmarks write after numbers (GSM8K/MATH style). Only stripped when they
# follow a number, so a word answer ("Evelyn", "yes") is never touched.
_UNIT_WORDS = (
    r"(?:square|sq\.?|cubic)?\s*(?:units?|inch(?:es)?|feet|foot|ft|yards?|yd|miles?|"
    r"meters?|metres?|centimeters?|cm|millimeters?|mm|kilometers?|km|grams?|kilograms?|"
    r"kg|pounds?|lbs?|ounces?|oz|liters?|litres?|ml|gallons?|seconds?|sec|minutes?|min|"
    r"hours?|hrs?|days?|weeks?|months?|years?|dollars?|cents?|yuan|euros?|degrees?|"
    r"people|persons?|students?|apples?|cookies?|pages?|marbles?|ways?|times|points?)"
    r"(?:\^\{?[23]\}?|²|³)?")
# One-letter (and "in", "mi") units could be variables glued to a number, so this layer
# strips them only after a space (math-verify's own unit handling may still drop some).
_SHORT_UNITS = r"(?:in|mi|m|g|l|s|h)(?:\^\{?[23]\}?|²|³)?"
_PERCENT = re.compile(r"\s*(?:\\%|%|\\text\{\s*(?:percent|pct|percentage)\s*\}|"
                      r"\b(?:percent|pct|percentage)\b)\s*$", re.IGNORECASE)
_DEGREES = re.compile(r"\s*(?:\^\s*\{?\\circ\}?|°|\\text\{\s*degrees?\s*\}|\\circ)")
_ALL_REALS = re.compile(
    r"\\mathbb\{R\}|\\text\{\s*all real numbers\s*\}|all\s*real\s*numbers|\(-\\infty,\s*\+?\\infty\)",
    re.IGNORECASE)


def strip_conventions(s: str) -> str:
    """Remove what the benchmarks treat as decoration: units, `\\$`, degrees, percent signs,
    " and "/" or " between list items, and `;` as a list separator.

    Stripping percent on both sides is the MATH convention (gold `25\\%` accepts `25`).
    """
    s = normalize(s)
    s = s.replace("\\$", "").replace("$", "")
    s = _DEGREES.sub("", s)
    s = _PERCENT.sub("", s)
    # Trailing unit text: "\text{ cm}^2", "\text{ miles}", " square units", "10 weeks".
    s = re.sub(r"(?<=[\d}).])\s*\\text\{\s*[A-Za-z][A-Za-z .]*\}(?:\^\{?[23]\}?)?\s*$", "", s)
    s = re.sub(r"(?<=[\d}])\s*" + _UNIT_WORDS + r"\s*$", "", s, flags=re.IGNORECASE)
    s = re.sub(r"(?<=[\d}])\s+" + _SHORT_UNITS + r"\s*$", "", s)
    s = re.sub(r"\s*(?:\\text\{\s*(?:and|or)\s*\}|\b(?:and|or)\b)\s*", ", ", s)
    s = re.sub(r"\s*,(?:\s*,)+\s*", ", ", s)  # "19, 46, and 82" -> "19, 46, 82"
    s = _mixed_number_as_fraction(s)
    s = re.sub(r"\\(?:q?quad|,|;)", " ", s)
    s = s.replace(";", ",")
    s = _ALL_REALS.sub(r"(-\\infty, \\infty)", s)
    return re.sub(r"\s+", " ", s).strip(" ,")


# A simple left-hand side that only names the answer: x, y_1, a_{37}, AB, f(x), (p,q).
_LABEL = r"(?:[A-Za-z]{1,3}(?:_\{?[A-Za-z0-9]+\}?)?'*(?:\([a-z]\))?|\([A-Za-z](?:\s*,\s*[A-Za-z])+\))"
_LABELLED_ITEM = re.compile(r"\s*" + _LABEL + r"\s*=\s*(?!=)")


def leading_label(s: str) -> str | None:
    """The bare name before "=" in a one-item answer ("y = 2x+3" -> "y"), else None."""
    match = _LABELLED_ITEM.match(s)
    if not match or len(split_top_level(s)) != 1 or "=" in s[match.end():]:
        return None
    return s[: match.end()].strip().rstrip("=").strip()


def strip_labels(s: str) -> str:
    """"x = -5, p = \\frac{14}{3}" -> "-5, \\frac{14}{3}": drop `name =` before each item.

    Only bare names (and tuples of names) count as labels, so an equation such as
    `2x+z=1` or `\\sin x = 1/2` keeps its left side and is compared as an equation.
    """
    parts = split_top_level(s)
    stripped = []
    for part in parts:
        match = _LABELLED_ITEM.match(part)
        rest = part[match.end():] if match else part
        if match and "=" in rest:  # a chain "x = a = b" is not a labelled value
            return s
        stripped.append(rest.strip())
    return ", ".join(stripped)


def split_top_level(s: str) -> list[str]:
    """Split on commas that are outside (), [], {} (so tuples and sets stay whole)."""
    parts, depth, current = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def degrees_as_radians(s: str) -> str | None:
    """"30^\\circ" -> "\\frac{30\\pi}{180}", also inside expressions ("\\sin(90^\\circ-x)"),
    so an answer in radians can match; None when `s` has no degree mark after a number."""
    s = normalize(s)
    degree_number = re.compile(r"(\d+(?:\.\d+)?)" + _DEGREES.pattern)
    if not degree_number.search(s):
        return None
    return degree_number.sub(lambda m: f"\\frac{{{m.group(1)}\\pi}}{{180}}", s)


def _mixed_number_as_fraction(s: str) -> str:
    """A whole answer "1 1/2" or "1\\frac{1}{10}" is a mixed number: 3/2, 11/10."""
    match = (re.fullmatch(r"(-?)(\d+)\s+(\d+)\s*/\s*(\d+)", s)
             or re.fullmatch(r"(-?)(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}", s))
    if not match:
        return s
    sign, whole, num, den = match.group(1), int(match.group(2)), int(match.group(3)), int(match.group(4))
    if den == 0 or num >= den:  # not a proper mixed number: leave it to math-verify
        return s
    return f"{sign}\\frac{{{whole * den + num}}}{{{den}}}"

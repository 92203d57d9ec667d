"""A scripted round-1 policy for the embedded tiny default (configs/tiny.py).

The paper bootstraps round 1 with a 236B coder model. On a 2-core CPU with no downloads
that model is replaced by this small program, which implements the search's proposer
protocol (`propose(prompts, num_samples, temperature) -> list[list[str]]`) and writes
code-augmented steps in the reference's format for the problem kinds it understands:

  chain_sum        "... arithmetic problem: 44 - 27 + 33 ="   one step per term
  basic_arithmetic "Calculate ( 29 - -13 * 71 )."             one step copying the expression
  simple_equations "Solve for s: 7*s - 16 = 96"              move the constant, divide
  leg_counting     "... if you have 1 dog, 5 wasps?"          one step per animal

Like a real model it makes mistakes: each sampled step is wrong with probability
`mistake_rate` (at temperature 0 it never is), drawn from realistic kinds: a wrong
operator, a number off by one, a dropped term, a misspelt variable (a NameError when
run) and, in the answer step, a misread output. So round 1's trees hold right and wrong
branches, the code really runs in the sandbox, and the terminal-guided Q-values decide
what the tiny policy learns. Samples are a pure function of (seed, prompt, sample
index), so batching, chunking and resuming do not change them. Problems it does not
understand get an honest guess that prints 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from typing import Mapping, Sequence

from rstar_jax import step_format as sf

MISTAKE_KINDS = ("operator", "off_by_one", "drop", "typo")

_CHAIN = re.compile(r"arithmetic problem:\s*(.+?)\s*=\s*$", re.S)
_CALC = re.compile(r"^Calculate\s+(.+?)\.?\s*$", re.S)
_EQUATION = re.compile(r"(?:Solve for [a-z]|Find the value of [a-z] in the equation|"
                       r"Determine the value of [a-z] that satisfies):\s*(.+?)\s*$", re.S)
_LEGS = re.compile(r"if you have (.+?)\?\s*$", re.S)
_STEP_NUMBER = re.compile(r"# Step (\d+):")
_OUTPUT = re.compile(re.escape(sf.OUTPUT) + r"(.*?)" + re.escape(sf.END_OF_OUTPUT), re.S)

# Legs per animal (singular), as reasoning-gym's leg_counting counts them.
LEGS = {
    "ant": 6, "bee": 6, "beetle": 6, "bird": 2, "butterfly": 6, "cat": 4, "chicken": 2,
    "cockroach": 6, "cow": 4, "crab": 10, "cricket": 6, "deer": 4, "dog": 4, "duck": 2,
    "elephant": 4, "firefly": 6, "flatworm": 0, "giraffe": 4, "grasshopper": 6, "horse": 4,
    "human": 2, "insect": 6, "jellyfish": 0, "leech": 0, "lion": 4, "lobster": 10,
    "praying mantis": 6, "scorpion": 8, "sea slug": 0, "sheep": 4, "shrimp": 10,
    "snake": 0, "spider": 8, "starfish": 5, "tiger": 4, "wasp": 6, "woodlouse": 14,
}


@dataclasses.dataclass(frozen=True)
class BootstrapSettings:
    """mistake_rate: chance that one sampled step is wrong; kind_weights: relative
    frequency of each kind in MISTAKE_KINDS; seed: base of every sample's stream;
    terms_per_step: terms of a chain sum each code step writes."""

    mistake_rate: float
    kind_weights: tuple[float, ...]
    seed: int
    terms_per_step: int = 1

    @classmethod
    def from_config(cls, c: Mapping, where: str = "config.bootstrap") -> "BootstrapSettings":
        rate = c["mistake_rate"]
        if not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
            raise ValueError(f"{where}.mistake_rate must be in [0, 1], got {rate!r}")
        weights = c["mistake_kinds"]
        weights = weights.to_dict() if hasattr(weights, "to_dict") else dict(weights)
        unknown = sorted(set(weights) - set(MISTAKE_KINDS))
        if unknown:
            raise ValueError(f"{where}.mistake_kinds: unknown kind(s) {unknown}; "
                             f"use {MISTAKE_KINDS}")
        w = tuple(float(weights.get(k, 0.0)) for k in MISTAKE_KINDS)
        if min(w) < 0 or sum(w) <= 0:
            raise ValueError(f"{where}.mistake_kinds: weights must be >= 0 with a positive sum")
        tps = c["terms_per_step"]
        if isinstance(tps, bool) or not isinstance(tps, int) or tps < 1:
            raise ValueError(f"{where}.terms_per_step must be an integer >= 1, got {tps!r}")
        return cls(float(rate), w, int(c["seed"]), tps)


def question_of(prompt: str) -> tuple[str, str]:
    """(question, partial solution) of a policy prompt built by `step_format.build_prompt`."""
    head, sep, rest = prompt.partition(sf.USER + ":\n")
    if not sep:
        return "", prompt
    for marker in ("\n\n" + sf.ASSISTANT, "\n" + sf.ASSISTANT):
        question, sep, tail = rest.partition(marker)
        if sep:
            preamble_end = tail.find("with code.")
            partial = tail[preamble_end + len("with code."):] if preamble_end >= 0 else tail
            return question.strip(), partial
    return rest.strip(), ""


# ------------------------------------------------------------------------------ plans
# A plan is the correct solution as a list of code lines, one list per code step; the
# last code step prints the answer. Mistakes edit one step's lines.


@dataclasses.dataclass
class _Step:
    comment: str
    lines: list[str]
    numbers: list[int] = dataclasses.field(default_factory=list)   # editable literals


def _plan_chain(expr: str, terms_per_step: int = 1) -> list[_Step] | None:
    tokens = expr.split()
    if len(tokens) < 3 or len(tokens) % 2 == 0:
        return None
    try:
        first = int(tokens[0])
        rest = [(tokens[i], int(tokens[i + 1])) for i in range(1, len(tokens), 2)]
    except ValueError:
        return None
    if any(op not in "+-" for op, _ in rest):
        return None
    if terms_per_step <= 1:
        steps = [_Step("start from the first number", [f"total = {first}"], [first])]
        for op, n in rest:
            verb = "add" if op == "+" else "subtract"
            steps.append(_Step(f"{verb} {n}", [f"total = total {op} {n}"], [n]))
    else:
        # Each step copies the next `terms_per_step` terms as written, continuing where
        # the previous step stopped (what a small model copies most easily).
        terms = [("", first)] + rest
        steps = []
        for start in range(0, len(terms), terms_per_step):
            chunk = terms[start:start + terms_per_step]
            text = " ".join(f"{op} {n}".strip() for op, n in chunk)
            which = "the first" if start == 0 else "the last" \
                if start + terms_per_step >= len(terms) else "the next"
            count = f"{len(chunk)} terms" if len(chunk) > 1 else "term"
            lhs = text if start == 0 else f"total {text}"
            steps.append(_Step(f"add {which} {count}", [f"total = {lhs}"], [n for _, n in chunk]))
    steps[-1].lines.append("print(total)")
    return steps


def _plan_calc(expr: str) -> list[_Step] | None:
    if not re.fullmatch(r"[\d\s()+\-*/]+", expr):
        return None
    numbers = [int(x) for x in re.findall(r"\d+", expr)]
    return [_Step("compute the expression as written", [f"result = {expr}", "print(result)"],
                  numbers)]


def _plan_equation(eq: str) -> list[_Step] | None:
    m = re.fullmatch(r"(?:(\d+)\*)?([a-z]) ([+-]) (\d+) = (-?\d+)", eq)
    if m:
        a, var, op, b, c = int(m.group(1) or 1), m.group(2), m.group(3), int(m.group(4)), int(m.group(5))
        undo = "-" if op == "+" else "+"
        return [_Step(f"move {b} to the right side", [f"rhs = {c} {undo} {b}"], [c, b]),
                _Step(f"divide by {a} to get {var}", [f"{var} = rhs // {a}", f"print({var})"], [a])]
    m = re.fullmatch(r"(\d+) - (\d+)\*([a-z]) = (-?\d+)", eq)
    if m:
        b, a, var, c = int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4))
        return [_Step(f"move {b} to the right side", [f"rhs = {c} - {b}"], [c, b]),
                _Step(f"divide by -{a} to get {var}", [f"{var} = rhs // -{a}", f"print({var})"], [a])]
    m = re.fullmatch(r"(\d+)\*([a-z]) = (-?\d+)", eq)
    if m:
        a, var, c = int(m.group(1)), m.group(2), int(m.group(3))
        return [_Step(f"divide by {a} to get {var}", [f"{var} = {c} // {a}", f"print({var})"], [c, a])]
    return None


def _singular(name: str) -> str:
    if name in LEGS:
        return name
    if name.endswith("s") and name[:-1] in LEGS:
        return name[:-1]
    return name


def _plan_legs(items: str) -> list[_Step] | None:
    steps = []
    for k, part in enumerate(items.split(", ")):
        m = re.fullmatch(r"(\d+) (.+)", part.strip())
        if not m or _singular(m.group(2)) not in LEGS:
            return None
        count, animal = int(m.group(1)), _singular(m.group(2))
        legs = LEGS[animal]
        rhs = f"{count} * {legs}" if k == 0 else f"total + {count} * {legs}"
        steps.append(_Step(f"a {animal} has {legs} legs", [f"total = {rhs}"], [count, legs]))
    steps[-1].lines.append("print(total)")
    return steps


def plan_for(question: str, terms_per_step: int = 1) -> list[_Step] | None:
    """The correct code steps for a question this program understands, else None.

    `terms_per_step`: chain sums write one term per step (1) or copy that many terms of
    the expression per step."""
    for pattern, planner in ((_CHAIN, _plan_chain), (_EQUATION, _plan_equation),
                             (_LEGS, _plan_legs), (_CALC, _plan_calc)):
        m = pattern.search(question)
        if m:
            if planner is _plan_chain:
                return planner(m.group(1).strip(), terms_per_step)
            return planner(m.group(1).strip())
    return None


# ------------------------------------------------------------------------- rendering


def _render(step: _Step, number: int, first: bool, last: bool) -> str:
    lines = [f"# Step {number}: {step.comment}"] + step.lines
    if last:
        lines.insert(-1, "# Now print the final answer")
    body = "\n".join(lines)
    tag = sf.END_OF_CODE if last else sf.END_OF_STEP
    return (f"{sf.CODE}\n{body}\n{tag}" if first else f"\n{body}\n{tag}")


def _swap_operator(line: str, rng: random.Random) -> str:
    return re.sub(r" ([+-]) ", lambda m: " - " if m.group(1) == "+" else " + ", line, count=1)


def _off_by_one(line: str, rng: random.Random) -> str:
    numbers = re.findall(r"(?<![\w.])\d+", line.split(" = ", 1)[-1])
    if not numbers:
        return line
    n = rng.choice(numbers)
    head, rhs = line.split(" = ", 1) if " = " in line else ("", line)
    rhs = re.sub(rf"(?<![\w.]){n}\b", str(int(n) + rng.choice((-1, 1))), rhs, count=1)
    return f"{head} = {rhs}" if head else rhs


def _typo(line: str, rng: random.Random) -> str:
    head, sep, rhs = line.partition(" = ")
    for name, typo in (("total", "totl"), ("rhs", "rsh"), ("result", "reslt")):
        if name in rhs:
            return head + sep + rhs.replace(name, typo, 1)
    return line


def _drop_term(line: str, rng: random.Random) -> str:
    head, sep, rhs = line.partition(" = ")
    dropped = re.sub(r" [+\-*/] \(?-?\d+\)?\s*(\)?)$", r"\1", rhs.rstrip())
    return head + sep + dropped if sep and dropped != rhs else line


_EDITS = {"operator": _swap_operator, "off_by_one": _off_by_one, "typo": _typo,
          "drop": _drop_term}


def _mutate(step: _Step, kind: str, rng: random.Random) -> _Step:
    """The step with one mistake of `kind` (or of the next kind that applies)."""
    order = [kind] + [k for k in MISTAKE_KINDS if k != kind]
    code = [i for i, ln in enumerate(step.lines) if not ln.startswith("print")]
    for k in order:
        for i in code:
            new = _EDITS[k](step.lines[i], rng)
            if new != step.lines[i]:
                lines = list(step.lines)
                lines[i] = new
                return _Step(step.comment, lines, step.numbers)
    return step


class BootstrapProposer:
    """The scripted round-1 policy (module docstring)."""

    def __init__(self, settings: BootstrapSettings):
        self.settings = settings
        self.steps_proposed = 0

    def _rng(self, prompt: str, sample: int) -> random.Random:
        digest = hashlib.sha256(f"{self.settings.seed}\0{sample}\0{prompt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def _one(self, prompt: str, sample: int, temperature: float) -> str:
        question, partial = question_of(prompt)
        rng = self._rng(prompt, sample)
        wrong = temperature > 0 and rng.random() < self.settings.mistake_rate
        kind = rng.choices(MISTAKE_KINDS, weights=self.settings.kind_weights)[0] if wrong else ""
        outputs = _OUTPUT.findall(partial)
        if outputs:   # the code block ran: state the answer it printed
            value = outputs[-1].strip()
            if wrong:
                try:
                    value = str(int(value) + rng.choice((-1, 1)))
                except ValueError:
                    pass
            return f"\n{sf.ANSWER}The answer is \\boxed{{{value}}}.{sf.END_OF_ANSWER}"
        plan = plan_for(question, self.settings.terms_per_step)
        if plan is None:
            return (f"{sf.CODE}\n# Step 1: I do not know how to solve this; guess 0\n"
                    f"print(0)\n{sf.END_OF_CODE}")
        done = [int(x) for x in _STEP_NUMBER.findall(partial)]
        position = max(done) if done else 0          # steps of the plan already written
        position = min(position, len(plan) - 1)
        if kind == "drop" and position < len(plan) - 1:
            position += 1                            # skip this term: write the next one
            kind = ""
        step = plan[position]
        if kind:
            step = _mutate(step, kind, rng)
        return _render(step, position + 1, first=not partial.strip(),
                       last=position == len(plan) - 1)

    def propose(self, prompts: Sequence[str], num_samples: int,
                temperature: float) -> list[list[str]]:
        out = [[self._one(p, j, temperature) for j in range(num_samples)] for p in prompts]
        self.steps_proposed += sum(len(x) for x in out)
        return out

    def solution(self, question: str) -> str:
        """The full correct solution text up to `<end_of_code>` (for tests and docs)."""
        plan = plan_for(question, self.settings.terms_per_step)
        if plan is None:
            raise ValueError(f"the bootstrap does not understand {question!r}")
        return "".join(_render(s, i + 1, i == 0, i == len(plan) - 1) for i, s in enumerate(plan))

"""Search trees -> policy SFT set, as the reference selects it (rstar_reference.md §4.2, §9.5).

Rules, in the reference's order (extra_sft_file.py then train/sample_sft_data.py):

1. A tree with no valid-answer leaf anywhere contributes nothing.
2. Every root-to-leaf path is a trace. A trace is *correct* when its leaf is a valid
   answer that the grader accepts against the gold answer (SFT re-grades; it does not
   trust the leaf's Q). Wrong answers and code-error leaves are incorrect; "too many
   steps" leaves are not traces at all.
3. Correct traces are pooled by question text across all trees.
4. Per question they are sorted by (mean step Q, min step Q), best first (a stable
   sort, so ties keep tree order), and the first `top_k` (2) are kept.
5. Of those, any whose response contains "error" in any case is dropped *after* the
   cut, so it is not replaced by the third best (§9.5).
6. The response is the concatenated step texts, stripped; rows are shuffled with
   `random.Random(0)`, which gives the same order as the reference's `random.seed(0)`
   followed by one `random.shuffle`.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Callable, Iterable, Sequence

from rstar_jax.data.rstar_trees import (TreeNode, TreeRecord, is_code_error_leaf,
                                        is_valid_answer_leaf, iter_nodes,
                                        root_to_leaf_paths, write_json_atomic,
                                        write_jsonl_atomic)
from rstar_jax.step_format import ASSISTANT, PROMPT_TEMPLATE, build_prompt

# "<|assistant|>: Let's think step by step and solve the problem with code."
ASSISTANT_PREAMBLE = ASSISTANT + PROMPT_TEMPLATE.split(ASSISTANT, 1)[1]

# grader(pred, gold) -> bool, the `rstar_jax.verify.grader.math_equal` signature.
Grader = Callable[[str, str], bool]


@dataclasses.dataclass(frozen=True)
class Trace:
    """One root-to-leaf path of a tree, without the root (which holds no step)."""

    question: str
    steps: tuple[TreeNode, ...]
    correct: bool

    @property
    def q_values(self) -> list[float]:
        return [s.q_value for s in self.steps]

    @property
    def response(self) -> str:
        """The concatenated step texts (the reference's `sft_full`)."""
        return "".join(s.text for s in self.steps)


def _default_grader() -> Grader:
    # Imported lazily: the grader is another package and SFT selection is usable
    # (and tested) with any grader passed in.
    from rstar_jax.verify.grader import math_equal
    return math_equal


def _is_correct(pred: str, gold: str | tuple[str, ...], grader: Grader) -> bool:
    """Grade `pred` against one gold answer or any of several (reference §5)."""
    golds = gold if isinstance(gold, tuple) else (gold,)
    return any(grader(pred, g) for g in golds)


def extract_traces(record: TreeRecord, grader: Grader | None = None) -> list[Trace]:
    """All correct and incorrect traces of one tree (reference extra_sft_file.py).

    Order matches the reference: incorrect traces first, then correct ones, each in
    depth-first path order. A tree without any valid-answer leaf gives [] (the
    reference's pruning). "Too many steps" and unparsable leaves are not traces.
    """
    grader = grader or _default_grader()
    if not any(is_valid_answer_leaf(n) for n in iter_nodes(record.root)):
        return []
    if record.answer is None:
        raise ValueError(f"{record.source}: field 'answer' is missing; SFT selection "
                         "grades answer leaves against the gold answer")
    correct, wrong = [], []
    for path in root_to_leaf_paths(record.root):
        leaf = path[-1]
        trace_steps = path[1:]
        if is_valid_answer_leaf(leaf):
            ok = _is_correct(leaf.final_answer, record.answer, grader)
            (correct if ok else wrong).append(Trace(record.question, trace_steps, ok))
        elif is_code_error_leaf(leaf):
            # The reference keeps code-error leaves as incorrect traces but skips
            # "too many steps" and unparsable leaves entirely.
            wrong.append(Trace(record.question, trace_steps, False))
    return wrong + correct


def _rank_key(trace: Trace) -> tuple[float, float]:
    """(mean step Q, min step Q); an empty trace scores (0, 1) as in the reference."""
    q = trace.q_values
    return (sum(q) / len(q) if q else 0.0, min(q) if q else 1.0)


def select_sft_traces(records: Iterable[TreeRecord], *, top_k: int = 2,
                      banned_substring: str = "error",
                      grader: Grader | None = None) -> list[Trace]:
    """Best `top_k` correct traces per question, unshuffled (rules 1-5 above).

    Questions come out in the order in which they first had any trace, correct or not,
    because the reference's per-question dict is keyed on every trace.
    """
    if top_k < 1:
        raise ValueError(f"config.sft.top_k must be >= 1, got {top_k}")
    grader = grader or _default_grader()
    by_question: dict[str, list[Trace]] = {}
    for record in records:
        for trace in extract_traces(record, grader):
            by_question.setdefault(trace.question, [])
            if trace.correct:
                by_question[trace.question].append(trace)
    selected = []
    for traces in by_question.values():
        best = sorted(traces, key=_rank_key, reverse=True)[:top_k]
        selected.extend(t for t in best if banned_substring not in t.response.lower())
    return selected


def _shuffled(rows: list[dict], seed: int | None) -> list[dict]:
    if seed is None:
        return rows
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    return rows


def _clean_response(trace: Trace) -> str:
    # The reference removes the assistant preamble from the response and strips it;
    # the preamble never occurs inside our step texts, but a tree could carry it.
    return trace.response.replace(ASSISTANT_PREAMBLE, "").strip()


def build_sft_rows(records: Iterable[TreeRecord], *, top_k: int = 2,
                   banned_substring: str = "error", shuffle_seed: int | None = 0,
                   grader: Grader | None = None,
                   reference_newlines: bool = False) -> list[dict]:
    """The SFT set as our rows: `{"question", "prompt", "response"}`.

    `prompt` is `build_prompt(question)`: one newline before <|assistant|>, the form the
    reference trains on and that our search also uses. `reference_newlines=True` gives
    the reference's search-time prompt (two newlines) instead, for comparison runs.
    """
    traces = select_sft_traces(records, top_k=top_k, banned_substring=banned_substring,
                               grader=grader)
    rows = [{"question": t.question,
             "prompt": build_prompt(t.question, reference_newlines=reference_newlines),
             "response": _clean_response(t)} for t in traces]
    return _shuffled(rows, shuffle_seed)


def to_reference_sft(rows: Sequence[dict]) -> list[dict]:
    """Our rows -> the reference's SFT records `{"query", "response"}` (train_SFT.py input).

    The reference's training script builds its own prompt from `query` with one
    newline before <|assistant|>, matching our default `prompt`.
    """
    return [{"query": r["question"].replace("<|user|>:\n", ""), "response": r["response"]}
            for r in rows]


def write_reference_sft_json(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write the reference's SFT file (a JSON list, indent 4), atomically."""
    write_json_atomic(to_reference_sft(rows), path)


def write_sft_jsonl(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write our rows as JSONL, atomically."""
    write_jsonl_atomic(rows, path)

"""Host-side expansion rules: proposals -> child nodes (rstar_reference.md §2.4, §2.5, §3).

Pure Python over `SearchTree` records; no JAX. The driver calls these for all problems of
a level at once so the executor sees one batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, Sequence

from rstar_jax import step_format as sf
from rstar_jax.search.host_tree import SearchTree
from rstar_jax.step_format import PYTHON_ACTION, TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS


class ExecResult(Protocol):
    output: str
    error: bool
    timed_out: bool


def filter_proposals(proposals: Sequence[str]) -> list[str]:
    """Drop duplicate proposals, then collapse answer steps to one (§2.4, §9.1-9.2).

    Duplicates are judged on the text without its stop tag, keeping the first. If any
    proposal stopped on `<end_of_answer>`, only the first of those is kept, so an answer
    step never branches; "boxed" steps stopped otherwise do not collapse their siblings.
    """
    seen, kept = set(), []
    for p in proposals:
        body, _ = sf.split_stop_tag(p)
        if body not in seen:
            seen.add(body)
            kept.append(p)
    answers = [p for p in kept if sf.split_stop_tag(p)[1] == sf.END_OF_ANSWER]
    return answers[:1] if answers else kept


@dataclasses.dataclass
class PendingChild:
    """A proposal waiting for its code result before it becomes a node."""

    row: int           # the problem's row in its chunk
    parent: int        # parent slot
    text: str          # step text, stop tag included
    answer: str | None  # extracted final answer for answer steps, else None
    program: str | None  # program to run for code steps, else None


def code_history(tree: SearchTree, parent: int) -> list[str]:
    """Code-step inputs of the current code block, root side first (§3.4).

    Walks from `parent` towards the root and stops at the first node whose text holds
    `<end_of_output>` or `<end_of_code>`; steps whose run timed out are skipped.
    """
    out = []
    i = parent
    while i >= 0:
        n = tree.nodes[i]
        if sf.END_OF_OUTPUT in n.text or sf.END_OF_CODE in n.text:
            break
        if n.action == PYTHON_ACTION and n.action_input and not n.timed_out:
            out.append(n.action_input)
        i = n.parent
    return out[::-1]


def pending_children(tree: SearchTree, row: int, parent: int, proposals: Sequence[str],
                     answer_fn: Callable[[str], str], *, dedupe: bool = True) -> list[PendingChild]:
    """Classify proposals: "boxed" steps are answers, everything else is code (§3.3).

    The search filters them first (`filter_proposals`); independent samples of whole
    solutions (`search.sampling`) keep every one (`dedupe=False`).
    """
    out = []
    for text in (filter_proposals(proposals) if dedupe else proposals):
        if sf.is_answer_step(text):
            out.append(PendingChild(row, parent, text, answer_fn(text), None))
        else:
            prog = sf.assemble_program(code_history(tree, parent), text)
            out.append(PendingChild(row, parent, text, None, prog))
    return out


def is_code_error(result: ExecResult, error_substring: bool) -> bool:
    """The reference fails a step whose output contains "error" in any case (§3.5)."""
    if result.error or result.timed_out:
        return True
    return error_substring and "error" in result.output.lower()


def add_child(tree: SearchTree, pc: PendingChild, result: ExecResult | None, *,
              errors_threshold: int, max_depth: int, error_substring: bool,
              rollout: int = -1) -> Any:
    """Create the node for one pending child and return it (§2.5 terminal rules).

    Answer steps are terminal with their answer. A code step gets its output appended
    when it ends the code block; its consecutive-error count grows on an error and
    resets otherwise, and reaching `errors_threshold` makes it a terminal. A non-terminal
    child deeper than `max_depth` is a "too many steps" terminal.
    """
    parent = tree.nodes[pc.parent]
    if pc.answer is not None:
        node = tree.add_child(pc.parent, text=pc.text, final_answer=pc.answer, terminal=True,
                              rollout=rollout)
    else:
        obs = result.output.strip()
        text = pc.text
        if sf.END_OF_CODE in pc.text:
            text = f"{pc.text}\n{sf.wrap_output(obs)}"
        node = tree.add_child(pc.parent, text=text, action=PYTHON_ACTION, action_input=pc.text,
                              observation=obs, timed_out=bool(result.timed_out), rollout=rollout)
        if is_code_error(result, error_substring):
            node.consecutive_errors = parent.consecutive_errors + 1
            if node.consecutive_errors >= errors_threshold:
                # The reference wraps the output a second time when the step already ended
                # the code block (§9.3); we show it once, which changes text only.
                step = pc.text if sf.END_OF_CODE in pc.text else pc.text + sf.END_OF_CODE
                node.text = f"{step}\n{sf.wrap_output(obs)}"
                node.terminal = True
                node.final_answer = TOO_MANY_CODE_ERRORS
    if not node.terminal and node.depth > max_depth:
        node.terminal = True
        node.final_answer = TOO_MANY_STEPS
    return node


def run_programs(executor: Any, pending: Sequence[PendingChild]) -> list[ExecResult | None]:
    """One executor batch for every code child of the level; None for answer steps."""
    idx = [i for i, pc in enumerate(pending) if pc.program is not None]
    results: list[ExecResult | None] = [None] * len(pending)
    if idx:
        got = executor.run([pending[i].program for i in idx])
        if len(got) != len(idx):
            raise ValueError(f"executor.run returned {len(got)} results for {len(idx)} programs; "
                             "it must return one ExecResult per program, in order")
        for i, r in zip(idx, got):
            results[i] = r
    return results

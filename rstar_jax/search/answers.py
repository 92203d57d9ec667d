"""Choosing the final answer (rstar_reference.md §2.9): per run and across runs.

Per run (the reference's eval_output.py): the valid answer leaf with the highest Q. At
inference an answer leaf is visited once with its PPM score, so this is the trajectory
whose answer step the PPM rates highest.

Across runs (eval_maj.py): each run contributes its top `max_node_per_tree` answers by
PPM value; the pool is sorted by value and cut to `top_n`; each answer counts the pooled
answers equivalent to it (itself included) and sums their scores; the majority answer has
the highest count, the weighted answer the highest score sum. Two fixes, both harmless to
the vote itself: rates are divided by the number of problems (the reference needs a
`--task_size` flag and defaults to 1), and count ties go to the highest-valued answer
unless an `rng` is given (the reference draws at random).
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from rstar_jax.search.host_tree import SearchTree


def ranked_answers(tree: SearchTree, key: str = "q_value") -> list[tuple[str, float]]:
    """Valid answer leaves as (answer, key value), best first; ties keep BFS order."""
    nodes = sorted(tree.valid_answer_nodes(), key=lambda n: getattr(n, key), reverse=True)
    return [(n.final_answer, float(getattr(n, key))) for n in nodes]


def best_answer(tree: SearchTree, key: str = "q_value") -> tuple[str, float] | None:
    """The run's answer: the valid answer leaf with the highest `key` (§2.9), or None."""
    ranked = ranked_answers(tree, key)
    return ranked[0] if ranked else None


def vote(pool: Sequence[tuple[str, float]], equal_fn: Callable[[str, str], bool], top_n: int,
         rng: random.Random | None = None) -> dict:
    """Majority and score-weighted votes over the `top_n` highest-scored (answer, score) pairs.

    Returns {"best": highest-scored answer, "majority": ..., "weighted": ...}, each None
    for an empty pool.
    """
    preds = sorted(pool, key=lambda p: p[1], reverse=True)[:top_n]
    if not preds:
        return {"best": None, "majority": None, "weighted": None}
    counts = [sum(1 for b, _ in preds if equal_fn(a, b)) for a, _ in preds]
    sums = [sum(s for b, s in preds if equal_fn(a, b)) for a, _ in preds]
    top = max(counts)
    tied = [a for (a, _), c in zip(preds, counts) if c == top]
    majority = rng.choice(tied) if rng is not None else tied[0]
    weighted = preds[max(range(len(preds)), key=lambda i: (sums[i], -i))][0]
    return {"best": preds[0][0], "majority": majority, "weighted": weighted}


def vote_runs(runs: Sequence[Sequence[SearchTree]], equal_fn: Callable[[str, str], bool], *,
              top_n: int = 4, max_node_per_tree: int = 1,
              rng: random.Random | None = None) -> list[dict]:
    """Votes per problem over several runs (run r's trees are `runs[r]`, same problem order).

    Each run contributes its `max_node_per_tree` best answers by PPM value (the node's
    first backed-up value, the reference's `value_estimate`).
    """
    if not runs:
        return []
    n = len(runs[0])
    if any(len(r) != n for r in runs):
        raise ValueError(f"vote_runs: every run must hold the same {n} problems, got sizes "
                         f"{[len(r) for r in runs]}")
    out = []
    for i in range(n):
        pool = []
        for r in runs:
            pool += ranked_answers(r[i], key="value")[:max_node_per_tree]
        out.append(vote(pool, equal_fn, top_n, rng) | {"pool": pool})
    return out


def evaluate_runs(runs: Sequence[Sequence[SearchTree]], grade_fn: Callable[[str, str], bool],
                  equal_fn: Callable[[str, str], bool] | None = None, *, top_n: int = 4,
                  max_node_per_tree: int = 1, rng: random.Random | None = None) -> dict:
    """eval_maj.py's metrics as fractions of the number of problems.

    pass1: the highest-valued pooled answer is correct; passn: any pooled answer is;
    majority / weighted: the top-n votes are correct. `grade_fn(pred, gold)`.
    """
    equal_fn = equal_fn or grade_fn
    votes = vote_runs(runs, equal_fn, top_n=top_n, max_node_per_tree=max_node_per_tree, rng=rng)
    golds = [t.answer for t in runs[0]] if runs else []
    if any(g is None for g in golds):
        raise ValueError("evaluate_runs needs gold answers on every tree (tree.answer)")

    def ok(pred, gold):
        return pred is not None and bool(grade_fn(pred, gold))

    n = max(len(golds), 1)
    return {
        "num_problems": len(golds),
        "num_runs": len(runs),
        "pass1": sum(ok(v["best"], g) for v, g in zip(votes, golds)) / n,
        "passn": sum(any(ok(a, g) for a, _ in v["pool"]) for v, g in zip(votes, golds)) / n,
        "majority": sum(ok(v["majority"], g) for v, g in zip(votes, golds)) / n,
        "weighted": sum(ok(v["weighted"], g) for v, g in zip(votes, golds)) / n,
    }

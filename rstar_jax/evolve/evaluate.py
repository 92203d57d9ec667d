"""Evaluating a policy (and PPM) on a problem set: greedy, sampled (majority vote and
best-of-N with the PPM), PPM-guided MCTS and step beam search (the paper's Tables 3/6
and Fig. 3).

Every mode returns per-problem records and metrics as fractions in [0, 1]; the metrics
are a function of the records alone (`*_metrics`), so a set evaluated in shards by
several processes is scored from the merged records. Curves over
the number of trajectories N use one run at the largest N:
* majority@N / best-of-N@N look at the first N of the sampled solutions;
* MCTS@N picks the best PPM-valued answer among the answer leaves made in the first N
  rollouts, which is exactly what an N-rollout run picks (rollouts are sequential and an
  answer leaf's value is its own PPM score, §2.7, §2.9).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from rstar_jax import step_format as sf
from rstar_jax.search import answers, beam, mcts, sampling
from rstar_jax.search.host_tree import SearchTree
from rstar_jax.search.settings import MCTSSettings

MODES = ("greedy", "sample", "mcts", "beam")


@dataclasses.dataclass
class Grading:
    """The grader (tests pass exact-match functions), with its verdicts cached: votes and
    curves ask about the same (answer, gold) pairs many times."""

    grade_fn: Callable[[str, Any], bool] = mcts.grader_equal
    equal_fn: Callable[[str, str], bool] | None = None   # answer clustering for votes
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    def equal(self, a: str, b: str) -> bool:
        if a == b:
            return True
        key = ("eq",) + tuple(sorted((a, b)))
        if key not in self._cache:
            self._cache[key] = bool((self.equal_fn or self.grade_fn)(a, b))
        return self._cache[key]

    def correct(self, pred: str | None, gold: Any) -> bool:
        if pred is None or gold is None:
            return False
        key = ("gold", pred, gold if isinstance(gold, str) else tuple(gold))
        if key not in self._cache:
            self._cache[key] = bool(self.grade_fn(pred, gold))
        return self._cache[key]


def _record(tree: SearchTree) -> dict:
    return {"index": tree.record.get("index"), "question": tree.question, "gold": tree.answer}


def greedy(problems, proposer, executor, search_cfg, grading: Grading) -> dict:
    """Greedy pass@1 (sft_eval_greedy.yaml): one chain at temperature 0."""
    trees = mcts.greedy(problems, proposer, executor, search_cfg, progress=False)
    rows = []
    for t in trees:
        best = answers.best_answer(t)
        pred = best[0] if best else None
        rows.append({**_record(t), "answer": pred, "correct": grading.correct(pred, t.answer)})
    return {"metrics": pass1_metrics(rows), "problems": rows, "trees": trees}


def pass1_metrics(rows: Sequence[dict]) -> dict:
    """Greedy and beam search: the share of problems whose answer is correct."""
    return {"pass1": _mean(r["correct"] for r in rows)}


def sampled(problems, proposer, executor, search_cfg, grading: Grading, *, n_values,
            temperature: float, scorer=None) -> dict:
    """N sampled solutions per problem: majority@N and (with a PPM) best-of-N@N."""
    n_max = max(n_values)
    trees = sampling.sample_solutions(problems, proposer, executor, search_cfg,
                                      num_samples=n_max, temperature=temperature)
    settings = MCTSSettings.from_config(search_cfg)
    rows = []
    for t in trees:
        leaves = sampling.chain_leaves(t)
        preds = [n.final_answer if sf.is_valid_final_answer(n.final_answer) else None
                 for n in leaves]
        scores = [None] * len(leaves)
        if scorer is not None:
            valid = [i for i, p in enumerate(preds) if p is not None]
            prompt = sf.build_prompt(t.question, reference_newlines=settings.reference_prompt_newlines)
            got = scorer.score([prompt + t.partial_solution(leaves[i].index) for i in valid]) \
                if valid else []
            for i, s in zip(valid, got):
                scores[i] = None if s is None else float(s)
        rows.append({**_record(t), "samples": preds, "ppm_scores": scores,
                     "sample_correct": [grading.correct(p, t.answer) for p in preds]})
    return {"metrics": sampled_metrics(rows, grading, n_values=n_values,
                                       scored=scorer is not None),
            "problems": rows, "trees": trees}


def sampled_metrics(rows: Sequence[dict], grading: Grading, *, n_values,
                    scored: bool) -> dict:
    """majority@N, pass@N and (`scored`: with PPM scores) best-of-N@N over sampled rows."""
    metrics = {}
    for n in n_values:
        maj = [_majority(r["samples"][:n], grading) for r in rows]
        metrics[f"majority@{n}"] = _mean(grading.correct(p, r["gold"]) for p, r in zip(maj, rows))
        metrics[f"pass@{n}"] = _mean(any(r["sample_correct"][:n]) for r in rows)
        if scored:
            best = [_best_scored(r["samples"][:n], r["ppm_scores"][:n]) for r in rows]
            metrics[f"best_of_n@{n}"] = _mean(grading.correct(p, r["gold"])
                                              for p, r in zip(best, rows))
    return metrics


def guided_mcts(problems, proposer, executor, search_cfg, grading: Grading, *, scorer,
                n_values=()) -> dict:
    """PPM-guided MCTS (sft_eval_mcts.yaml): pass@1 of the best PPM-valued answer leaf,
    and the same after the first N rollouts for each N in `n_values`."""
    trees = mcts.search(problems, proposer, executor, search_cfg, scorer, progress=False)
    rows = []
    for t in trees:
        best = answers.best_answer(t)
        pred = best[0] if best else None
        by_n = {}
        for n in n_values:
            leaves = [x for x in t.valid_answer_nodes() if x.rollout < n]
            top = max(leaves, key=lambda x: x.q_value) if leaves else None   # first max: BFS ties
            by_n[str(n)] = top.final_answer if top is not None else None
        rows.append({**_record(t), "answer": pred, "correct": grading.correct(pred, t.answer),
                     "answer_by_rollouts": by_n,
                     "any_correct": any(grading.correct(x.final_answer, t.answer)
                                        for x in t.valid_answer_nodes())})
    return {"metrics": mcts_metrics(rows, grading, n_values=n_values), "problems": rows,
            "trees": trees}


def mcts_metrics(rows: Sequence[dict], grading: Grading, *, n_values=()) -> dict:
    """pass@1 of the chosen answer, pass@n (any answer leaf correct) and MCTS@N."""
    metrics = {"pass1": _mean(r["correct"] for r in rows),
               "passn": _mean(r["any_correct"] for r in rows)}
    for n in n_values:
        metrics[f"mcts@{n}"] = _mean(grading.correct(r["answer_by_rollouts"][str(n)], r["gold"])
                                     for r in rows)
    return metrics


def beam_search(problems, proposer, executor, search_cfg, grading: Grading, *, scorer) -> dict:
    """Step beam search with the PPM (sft_eval_bs.yaml): pass@1 of the best solution."""
    trees = beam.beam_search(problems, proposer, executor, search_cfg, scorer)
    rows = []
    for t in trees:
        pred = t.solutions[0]["final_answer"] if t.solutions else None
        rows.append({**_record(t), "answer": pred, "correct": grading.correct(pred, t.answer)})
    return {"metrics": pass1_metrics(rows), "problems": rows, "trees": trees}


def _majority(preds: Sequence[str | None], grading: Grading) -> str | None:
    """The most frequent answer up to equivalence; ties go to the earliest sample.

    Identical strings are counted first, so the grader only compares distinct answers.
    """
    counts: dict[str, int] = {}
    for p in preds:
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    distinct = list(counts)
    if not distinct:
        return None
    totals = [sum(counts[b] for b in distinct if grading.equal(a, b)) for a in distinct]
    return distinct[max(range(len(distinct)), key=lambda i: (totals[i], -i))]


def _best_scored(preds, scores) -> str | None:
    best, best_s = None, -math.inf
    for p, s in zip(preds, scores):
        if p is not None and s is not None and s > best_s:
            best, best_s = p, s
    return best


def _mean(xs) -> float:
    xs = [float(bool(x)) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean over seeds (0 for one seed)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)

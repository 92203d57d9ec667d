"""Step-level beam search (rstar_reference.md §2.10, the reference's `BS`, sft_eval_bs.yaml).

One pass of up to `beam.max_depth` levels over all problems in lock-step: one proposer
call for every beam node of every problem, one executor batch, one scorer call for all
new children. A child's `value` is its PPM score (no averaging, no visits). Children are
ranked by value; valid answers are set aside (each shrinks that problem's beam by one),
terminals are dropped, and the best `width` remaining non-terminal children form the next
beam. Any code error ends a branch (threshold 1). Host-only: there is no backup to
vectorise.

Fix of a reference bug: the reference slices the beam from the full sorted candidate
list, terminals included, and then pairs generations with beam nodes while skipping
terminals, which attaches steps to the wrong parents once a terminal precedes a live
node. Here the beam holds live nodes only, which is what §2.10 describes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rstar_jax import step_format as sf
from rstar_jax.search import expand
from rstar_jax.search.host_tree import SearchTree, save_trees
from rstar_jax.search.mcts import new_trees, settings_answer_fn
from rstar_jax.search.settings import MCTSSettings


def beam_search(problems: Sequence[Any], proposer: Any, executor: Any, config: Any,
                scorer: Any = None, *, answer_fn: Callable[[str], str] | None = None,
                output_path: str | None = None) -> list[SearchTree]:
    """Beam search on every problem; returns one tree per problem with `solutions` set.

    `config` is the search section; `config.beam` holds width, num_samples, max_depth,
    temperature and the stop tags the proposer must use. Without a scorer every value is
    0 and ranking keeps creation order.
    """
    cfg = MCTSSettings.from_config(config)
    bc = cfg.beam
    answer_fn = answer_fn or settings_answer_fn(cfg)
    trees = new_trees(problems, mode="bs")
    beams = [[0] for _ in trees]
    room = [bc.width for _ in trees]          # the reference's current_top_num
    finals: list[list[int]] = [[] for _ in trees]
    newline = cfg.reference_prompt_newlines

    def prompt(t: SearchTree, i: int) -> str:
        return sf.build_prompt(t.question, reference_newlines=newline) + t.partial_solution(i)

    for _ in range(bc.max_depth):
        work = [(b, i) for b, beam in enumerate(beams) for i in beam]
        if not work:
            break
        props = proposer.propose([prompt(trees[b], i) for b, i in work], bc.num_samples,
                                 bc.temperature)
        pending = []
        for (b, i), p in zip(work, props):
            pending += expand.pending_children(trees[b], b, i, p, answer_fn)
        results = expand.run_programs(executor, pending)
        new = [[] for _ in trees]
        for pc, res in zip(pending, results):
            node = expand.add_child(trees[pc.row], pc, res, errors_threshold=1,
                                    max_depth=bc.max_depth, error_substring=cfg.error_substring)
            new[pc.row].append(node)
        flat = [(b, n) for b, nodes in enumerate(new) for n in nodes]
        if scorer is not None and flat:
            scores = scorer.score([prompt(trees[b], n.index) for b, n in flat])
            for (b, n), s in zip(flat, scores):
                n.value = 0.0 if s is None else float(s)   # the reference's BS default
        for b, nodes in enumerate(new):
            live = []
            for n in sorted(nodes, key=lambda n: n.value, reverse=True):
                if n.is_valid_answer:
                    finals[b].append(n.index)
                    room[b] -= 1
                elif not n.terminal:
                    live.append(n.index)
            beams[b] = live[: max(room[b], 0)]
    for t, fin in zip(trees, finals):
        t.solutions = sorted(
            ({"question": t.question, "ground_truth": t.answer, "value": t.nodes[i].value,
              "final_answer": t.nodes[i].final_answer, "solution": t.partial_solution(i),
              "tag": t.nodes[i].tag} for i in fin),
            key=lambda s: s["value"], reverse=True)
    if output_path:
        save_trees(trees, output_path)
    return trees

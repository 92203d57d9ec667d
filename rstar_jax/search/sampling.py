"""Independent sampled solutions: N chains per problem, for majority vote and best-of-N.

Each problem's tree has N children at the root (N samples of one request, so the
engine prefills the question once) and every chain then grows one step at a time with
one sample, under the greedy mode's stop tags, depth and error threshold (the whole
code block is one step, §2.8). Nothing is deduplicated: identical samples are separate
votes. Host only; no tree statistics are backed up, so a chain's leaf is its solution.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rstar_jax import step_format as sf
from rstar_jax.search import expand
from rstar_jax.search.host_tree import Node, SearchTree
from rstar_jax.search.mcts import new_trees, settings_answer_fn
from rstar_jax.search.settings import MCTSSettings


def sample_solutions(problems: Sequence[Any], proposer: Any, executor: Any, config: Any, *,
                     num_samples: int, temperature: float,
                     answer_fn: Callable[[str], str] | None = None) -> list[SearchTree]:
    """N sampled solutions per problem; `tree.leaves()` order is sample order.

    `config` is a search section; its `greedy` block gives depth, error threshold and
    the stop tags the proposer must use.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    g = MCTSSettings.from_config(config).for_greedy()
    answer_fn = answer_fn or settings_answer_fn(g)
    trees = new_trees(problems)
    heads = [[0] for _ in trees]     # per tree, the nodes to extend this level
    for depth in range(g.max_depth):
        work = [(b, i) for b, nodes in enumerate(heads) for i in nodes]
        if not work:
            break
        n = num_samples if depth == 0 else 1
        prompts = [sf.build_prompt(trees[b].question, reference_newlines=g.reference_prompt_newlines)
                   + trees[b].partial_solution(i) for b, i in work]
        fits = getattr(proposer, "fits", None)
        ok = list(fits(prompts)) if fits is not None else [True] * len(prompts)
        for (b, i), f in zip(work, ok):
            if not f:
                trees[b].add_child(i, final_answer=sf.CONTEXT_FULL, terminal=True)
        work = [w for w, f in zip(work, ok) if f]
        proposals = proposer.propose([p for p, f in zip(prompts, ok) if f], n, temperature) \
            if work else []
        pending = []
        for (b, i), props in zip(work, proposals):
            pending += expand.pending_children(trees[b], b, i, props[:n], answer_fn, dedupe=False)
        results = expand.run_programs(executor, pending)
        heads = [[] for _ in trees]
        for pc, res in zip(pending, results):
            node = expand.add_child(trees[pc.row], pc, res, errors_threshold=g.errors_threshold,
                                    max_depth=g.max_depth, error_substring=g.error_substring)
            if not node.terminal:
                heads[pc.row].append(node.index)
    return trees


def chain_leaves(tree: SearchTree) -> list[Node]:
    """The last node of each sampled chain, in sample order."""
    out = []
    for first in tree.root.children:
        node = tree.nodes[first]
        while node.children:
            node = tree.nodes[node.children[0]]
        out.append(node)
    return out

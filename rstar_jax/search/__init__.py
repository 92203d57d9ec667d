"""Search: the host tree and its dump (the one model of a saved tree), padded-array trees
with jitted select/backup, MCTS and step beam search drivers, answer selection
(rstar_reference.md §2).

host_tree.py  SearchTree / Node records, the JSONL dump format (ours = the reference's)
settings.py   the search section of a config, read and checked once
tree.py       B trees as padded device arrays; jitted, vmapped select and level update
expand.py     proposals -> child nodes: dedupe, answer collapse, code replay, terminals
mcts.py       the lock-step MCTS driver, greedy decoding, independent runs for voting
beam.py       step-level beam search
answers.py    the run's answer and votes across runs

The drivers talk to models only through the proposer / scorer protocols (DESIGN.md), so
this package never imports the engine.
"""

from rstar_jax.search.answers import best_answer, evaluate_runs, ranked_answers, vote, vote_runs
from rstar_jax.search.beam import beam_search
from rstar_jax.search.host_tree import (Node, SearchTree, TreeFormatError, iter_trees, load_trees,
                                        save_trees)
from rstar_jax.search.mcts import greedy, search, search_runs
from rstar_jax.search.settings import MCTSSettings

__all__ = [
    "best_answer", "beam_search", "evaluate_runs", "greedy", "iter_trees", "load_trees",
    "MCTSSettings", "Node", "ranked_answers", "save_trees", "search", "search_runs", "SearchTree",
    "TreeFormatError", "vote", "vote_runs",
]

"""Search: step format, padded-array trees with jitted select/backup, MCTS and beam search
drivers, answer selection (rstar_reference.md §2, §3)."""

from rstar_jax.search.answers import best_answer, evaluate_runs, ranked_answers, vote, vote_runs
from rstar_jax.search.beam import beam_search
from rstar_jax.search.host_tree import Node, SearchTree, load_trees, save_trees
from rstar_jax.search.mcts import greedy, search, search_runs
from rstar_jax.search.tree import Tree, grow, init_tree, level_update, select_step

__all__ = [
    "best_answer", "beam_search", "evaluate_runs", "greedy", "grow", "init_tree", "level_update",
    "load_trees", "Node", "ranked_answers", "save_trees", "search", "search_runs", "SearchTree",
    "select_step", "Tree", "vote", "vote_runs",
]

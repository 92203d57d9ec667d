"""Step beam search (§2.10), greedy decoding, per-run answer choice and cross-run votes (§2.9)."""

import random

import pytest

from rstar_jax.search import answers, beam_search, greedy, search_runs
from rstar_jax.search.host_tree import SearchTree
from test_search_fakes import (EOA, EOC, EOS, ScriptedExecutor, ScriptedProposer, ScriptedScorer,
                               answer_fn, grade_fn, load_search_config)
from test_search_rules import ANS, Executor, FixedScorer, TableProposer


def test_beam_keeps_top_width_live_children_and_shrinks_per_answer():
    a, b, c, d = (f"v = {i}\n" + EOS for i in range(4))
    table = {"": [a, b, c, d], a: [ANS(1, EOS), "w = 1\n" + EOS], b: ["w = 2\n" + EOS],
             c: ["never\n" + EOS]}
    scores = {a: 0.5, b: 0.25, c: -0.5, d: 0.75, a + ANS(1, EOS): 0.9, a + "w = 1\n" + EOS: 0.1,
              b + "w = 2\n" + EOS: 0.2}
    cfg = load_search_config("eval_bs")
    cfg.beam.width, cfg.beam.num_samples, cfg.beam.max_depth = 3, 4, 2
    prop = TableProposer(table)
    t = beam_search([{"question": "Q", "answer": "1"}], prop, Executor(), cfg,
                    scorer=FixedScorer(scores), answer_fn=answer_fn)[0]
    # Level 1 keeps d, a, b (top 3 by value); c is never expanded.
    assert prop.seen[:4] == ["", d, a, b]
    assert t.solutions[0]["final_answer"] == "1" and t.solutions[0]["value"] == 0.9
    assert t.solutions[0]["solution"] == a + ANS(1, EOS)
    js = t.to_rstar_json()
    assert js["0.1"]["value"] == 0.5 and "solutions" in js


def test_beam_search_errors_end_branches_and_matches_scripted_runs():
    cfg = load_search_config("eval_bs")
    cfg.beam.width, cfg.beam.num_samples, cfg.beam.max_depth = 3, 4, 4
    trees = beam_search([{"question": f"q{i}"} for i in range(3)], ScriptedProposer(5),
                        ScriptedExecutor(), cfg, scorer=ScriptedScorer(5), answer_fn=answer_fn)
    for t in trees:
        for n in t.nodes[1:]:
            if n.observation is not None and "error" in n.observation.lower():
                assert n.terminal and not n.children       # threshold 1 in beam search
        per_level = {}
        for n in t.nodes[1:]:
            if n.children:
                per_level[n.depth] = per_level.get(n.depth, 0) + 1
        assert all(v <= 3 for v in per_level.values())    # at most `width` expanded per level
        vals = [s["value"] for s in t.solutions]
        assert vals == sorted(vals, reverse=True)


def test_greedy_is_one_child_one_rollout_two_levels():
    table = {"": ["x = 1\nprint(x)\n" + EOC, "other\n" + EOC]}
    prop = TableProposer(table, default=[ANS(1)])
    cfg = load_search_config("greedy", initial_num_slots=8)
    t = greedy([{"question": "Q", "answer": "1"}], prop, Executor(), cfg, answer_fn=answer_fn,
               grade_fn=grade_fn, progress=False)[0].to_rstar_json()
    assert list(t) == ["0", "0.1", "0.1.1"]
    assert t["0.1"]["text"].endswith("<output>ok<end_of_output>")
    assert t["0.1.1"]["final_answer"] == "1"


def _tree_with_answers(gold, answers_values):
    t = SearchTree.new("Q", gold)
    for ans, v in answers_values:
        n = t.add_child(0, text=ANS(ans), final_answer=ans, terminal=True)
        n.value, n.q_value, n.visit_count = v, v, 1
    t.add_child(0, text="x", final_answer="Too many consecutive steps have code errors.",
                terminal=True).q_value = 5.0   # invalid terminals never count
    return t


def test_best_answer_is_highest_q_valid_leaf():
    t = _tree_with_answers("2", [("1", 0.3), ("2", 0.8), ("3", 0.8)])
    assert answers.best_answer(t) == ("2", 0.8)           # ties keep BFS order
    assert answers.best_answer(SearchTree.new("Q")) is None


def test_majority_and_weighted_votes_follow_eval_maj():
    eq = lambda a, b: a == b  # noqa: E731
    pool = [("5", 0.9), ("7", 0.8), ("7", 0.7), ("5", 0.1), ("9", 0.95)]
    v = answers.vote(pool, eq, top_n=4)
    # top 4 by value: 9 (.95), 5 (.9), 7 (.8), 7 (.7): 7 wins both votes.
    assert v == {"best": "9", "majority": "7", "weighted": "7"}
    v = answers.vote([("a", 0.9), ("b", 0.5), ("b", 0.3), ("a", 0.05)], eq, top_n=4)
    assert v["majority"] == "a"                    # count tie -> highest-valued answer
    assert v["weighted"] == "a"                    # 0.95 > 0.8
    assert answers.vote([("a", 0.1), ("b", 0.2)], eq, 4, random.Random(0))["majority"] in "ab"


def test_evaluate_runs_pools_best_answer_of_each_run():
    runs = [[_tree_with_answers("2", [("1", 0.9), ("2", 0.5)]), _tree_with_answers("4", [("4", .6)])],
            [_tree_with_answers("2", [("2", 0.8)]), _tree_with_answers("4", [("3", .7)])],
            [_tree_with_answers("2", [("2", 0.7)]), _tree_with_answers("4", [])]]
    m = answers.evaluate_runs(runs, grade_fn, top_n=4)
    # problem 0 pool: 1 (.9), 2 (.8), 2 (.7) -> pass1 wrong, majority right;
    # problem 1 pool: 3 (.7), 4 (.6) -> pass1 wrong, passn right, tie -> 3 (wrong).
    assert m == {"num_problems": 2, "num_runs": 3, "pass1": 0.0, "passn": 1.0,
                 "majority": 0.5, "weighted": 0.5}


def test_runs_are_seeded_differently():
    cfg = load_search_config("eval_mcts", num_children=4, num_rollouts=2, max_depth=3,
                             initial_num_slots=32, batch_size=4, seed=11)
    seeds = []

    def make(seed):
        seeds.append(seed)
        return ScriptedProposer(seed)

    runs = search_runs([{"question": "q"}], make, ScriptedExecutor(), cfg, ScriptedScorer(0),
                       num_runs=3, answer_fn=answer_fn, progress=False)
    assert seeds == [11, 12, 13]
    texts = {tuple(n.text for n in r[0].nodes) for r in runs}
    assert len(texts) == 3


def test_terminal_guided_needs_gold_answers():
    cfg = load_search_config("round2", num_children=4, initial_num_slots=32)
    from rstar_jax.search import search
    with pytest.raises(ValueError, match="terminal_guided"):
        search([{"question": "q"}], ScriptedProposer(0), ScriptedExecutor(), cfg, progress=False)

"""The jitted MCTS agrees with a plain-Python MCTS written from the reference's rules."""

import pytest

from rstar_jax.search import mcts
from test_search_fakes import (ScriptedExecutor, ScriptedProposer, ScriptedScorer, answer_fn,
                               grade_fn, load_search_config, ref_search, ref_states)

# Few shapes on purpose: batch sizes bucket to 1, 2 or 4 device rows and every test uses
# K = 4 with 32 initial slots (trees grow to 64/128), so jit compiles a handful of times.
BASE = dict(num_children=4, num_rollouts=6, max_depth=4, initial_num_slots=32, batch_size=4)


def _problems(n, seed):
    return [{"question": f"problem {seed}-{i}", "answer": str((seed + i) % 3)} for i in range(n)]


def _compare(problems, cfg, seed, with_scorer):
    scorer = ScriptedScorer(seed) if with_scorer else None
    trees, chunks = mcts.search(problems, ScriptedProposer(seed), ScriptedExecutor(), cfg,
                                scorer=scorer, answer_fn=answer_fn, grade_fn=grade_fn,
                                progress=False, return_chunks=True)
    agents, ref_log = ref_search(problems, ScriptedProposer(seed), ScriptedExecutor(), cfg,
                                 scorer=ScriptedScorer(seed) if with_scorer else None)
    # Chosen paths: the node selected in every tree after every level.
    ours_log = []
    for ch in chunks:
        for i, row in enumerate(ch.path_log):
            tags = [ch.trees[b].nodes[int(s)].tag if s >= 0 else None
                    for b, s in enumerate(row[: len(ch.trees)])]
            if i < len(ours_log):
                ours_log[i] += tags
            else:
                ours_log.append(tags)
    if len(chunks) == 1:
        assert ours_log == ref_log
    for t, a in zip(trees, agents):
        want = ref_states(a)
        got = t.to_rstar_json()
        assert list(got) == list(want), "same nodes, same tags, same BFS order"
        for tag, (visits, q, value, final, text) in want.items():
            g = got[tag]
            assert g["visit_count"] == visits, tag
            assert g["q_value"] == pytest.approx(q, abs=1e-5), tag
            assert g["value"] == pytest.approx(value, abs=1e-5), tag
            assert g["final_answer"] == final, tag
            assert g["text"] == text, tag
        # The run's answer: highest-Q valid answer leaf.
        ref_answers = sorted([n for n in _walk(a.root) if not n.children and n.final_answer
                              and n.final_answer not in ("Too many consecutive steps have code errors.",
                                                         "Fail to sove the problem within limited steps.")],
                             key=lambda n: n.q(), reverse=True)
        best = mcts.best_answer(t)
        if ref_answers:
            assert best is not None and best[0] == ref_answers[0].final_answer
        else:
            assert best is None
    return trees


def _walk(n):
    out, queue = [], [n]
    while queue:
        x = queue.pop(0)
        out.append(x)
        queue += x.children
    return out


@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("with_scorer", [False, True])
def test_jitted_mcts_matches_plain_python_data_generation(batch, with_scorer):
    cfg = load_search_config("round2", **BASE)
    kinds = set()
    for seed in range(4):
        for t in _compare(_problems(batch, seed), cfg, seed, with_scorer):
            kinds |= {_kind(n) for n in t.nodes}
    if batch >= 3:
        # The scripted runs exercise every terminal rule, not just the easy paths.
        assert kinds >= {"answer", "code error", "too deep", "open"}, kinds


def _kind(node):
    return {"": "open", "Too many consecutive steps have code errors.": "code error",
            "Fail to sove the problem within limited steps.": "too deep"}.get(
        node.final_answer, "answer")


@pytest.mark.parametrize("errors_threshold", [1, 2])
def test_jitted_mcts_matches_plain_python_inference_with_ppm(errors_threshold):
    cfg = load_search_config("eval_mcts", **BASE, errors_threshold=errors_threshold)
    for seed in range(4):
        _compare(_problems(3, 100 + seed), cfg, 100 + seed, True)


def test_jitted_mcts_matches_plain_python_round1_and_unvisited_inf():
    for unvisited in ("zero", "inf"):
        cfg = load_search_config("round1", **BASE, unvisited_score=unvisited)
        for seed in range(5):
            _compare(_problems(4, 200 + seed), cfg, 200 + seed, False)


def test_jitted_mcts_matches_plain_python_across_chunks_and_growth():
    # batch_size 2 splits 3 problems into two chunks; 8 slots force repeated growth.
    cfg = load_search_config("round2", **dict(BASE, batch_size=2, initial_num_slots=8,
                                              num_rollouts=6))
    for seed in range(3):
        trees = _compare(_problems(3, 300 + seed), cfg, 300 + seed, True)
        assert max(len(t.nodes) for t in trees) > 8

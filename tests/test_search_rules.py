"""Hand-built scenarios, one per search rule of the reference (rstar_reference.md §2, §9)."""

import json
import math

import numpy as np
import pytest

from rstar_jax.search import mcts
from rstar_jax.search import tree as T
from rstar_jax.search.expand import filter_proposals
from rstar_jax.search.host_tree import load_trees
from test_search_fakes import EOA, EOC, EOS, Result, answer_fn, grade_fn, load_search_config

PROMPT = "<|user|>:\nQ\n<|assistant|>: Let's think step by step and solve the problem with code."


class TableProposer:
    """Proposals looked up by the partial solution (prompt minus the question prompt)."""

    def __init__(self, table, default=()):
        self.table, self.default, self.seen = table, list(default), []

    def propose(self, prompts, num_samples, temperature):
        out = []
        for p in prompts:
            assert p.startswith(PROMPT)
            key = p[len(PROMPT):]
            self.seen.append(key)
            out.append(list(self.table.get(key, self.default))[:num_samples])
        return out


class Executor:
    """Programs containing "boom" fail; everything else prints "ok"."""

    def __init__(self):
        self.programs = []

    def run(self, programs):
        self.programs += programs
        return [Result("ZeroDivisionError: boom", error=True) if "boom" in p else Result("ok")
                for p in programs]


class FixedScorer:
    def __init__(self, table, default=0.0):
        self.table, self.default = table, default

    def score(self, prompts):
        return [self.table.get(p[len(PROMPT):], self.default) for p in prompts]


def cfg(preset="round1", **kw):
    base = dict(num_children=4, num_rollouts=1, max_depth=16, initial_num_slots=32, batch_size=4)
    base.update(kw)
    return load_search_config(preset, **base)


def run(table, config, scorer=None, answer="1", default=(), **kw):
    trees = mcts.search([{"question": "Q", "answer": answer}], TableProposer(table, default),
                        Executor(), config, scorer=scorer, answer_fn=answer_fn, grade_fn=grade_fn,
                        progress=False, **kw)
    return trees[0].to_rstar_json()


A1 = "a = 1\n" + EOS
ANS = lambda v, tag=EOA: f"The answer is \\boxed{{{v}}}." + tag  # noqa: E731


def test_answer_steps_collapse_to_one_child():
    t = run({"": [A1, ANS(1), ANS(2), ANS(3, EOS)]}, cfg())
    assert [k for k in t if k.count(".") == 1] == ["0.1"]
    assert t["0.1"]["text"] == ANS(1) and t["0.1"]["final_answer"] == "1"
    # A boxed step stopped by <end_of_step> is an answer but does not collapse (§9.2).
    t = run({"": [A1, ANS(3, EOS)]}, cfg())
    assert [t["0.1"]["text"], t["0.2"]["text"]] == [A1, ANS(3, EOS)]
    assert t["0.2"]["final_answer"] == "3"


def test_duplicate_proposals_dropped():
    props = ["x = 1\n" + EOS, "x = 1\n" + EOC, "y = 2\n" + EOS, "x = 1\n" + EOS]
    assert filter_proposals(props) == [props[0], props[2]]   # keyed on text without its tag
    t = run({"": props}, cfg())
    assert [t[k]["text"] for k in ("0.1", "0.2")] == props[0::2] and "0.3" not in t


def test_code_error_threshold_1():
    t = run({"": ["x = boom\n" + EOS, A1]}, cfg(errors_threshold=1))
    err = t["0.1"]
    assert err["final_answer"] == "Too many consecutive steps have code errors."
    # The reference appends <end_of_code> after the step's own stop tag.
    assert err["text"] == ("x = boom\n" + EOS + EOC
                           + "\n<output>ZeroDivisionError: boom<end_of_output>")
    # -1 on the node only, never backed up (§2.5).
    assert (err["visit_count"], err["value"], err["q_value"]) == (1, -1.0, -1.0)
    assert t["0"]["visit_count"] == 0


def test_code_error_threshold_2():
    # The failing step ends the code block, so later programs do not replay it (§3.4).
    e1 = "x = boom\n" + EOC
    n1 = e1 + "\n<output>ZeroDivisionError: boom<end_of_output>"
    table = {"": [e1], n1: ["y = boom\n" + EOS, "y = 2\n" + EOS],
             n1 + "y = 2\n" + EOS: ["z = boom\n" + EOS]}
    t = run(table, cfg(errors_threshold=2, num_rollouts=3))
    assert t["0.1"]["final_answer"] == ""                    # first error: still open
    assert t["0.1.1"]["final_answer"] == "Too many consecutive steps have code errors."
    assert t["0.1.2"]["final_answer"] == ""                  # a clean step resets the count
    assert t["0.1.2.1"]["final_answer"] == ""                # so one more error is allowed


def test_max_depth():
    step = "x = x + 1\n" + EOS
    c = cfg(max_depth=2, num_rollouts=1)
    prop = TableProposer({}, default=[step])
    trees = mcts.search([{"question": "Q", "answer": "1"}], prop, Executor(), c,
                        answer_fn=answer_fn, grade_fn=grade_fn, progress=False)
    t = trees[0].to_rstar_json()
    # One rollout = a root selection + max_depth levels: the depth-2 node is selected but
    # not expanded (§9.4).
    assert set(t) == {"0", "0.1", "0.1.1"}
    trees = mcts.search([{"question": "Q", "answer": "1"}], prop, Executor(), cfg(max_depth=2,
                        num_rollouts=3), answer_fn=answer_fn, grade_fn=grade_fn, progress=False)
    t = trees[0].to_rstar_json()
    deep = t["0.1.1.1"]
    assert deep["final_answer"] == "Fail to sove the problem within limited steps."
    assert (deep["visit_count"], deep["value"]) == (1, -1.0)
    assert trees[0].nodes[2].terminal          # its only child is terminal -> so is it


def test_all_children_terminal():
    t_all = ["x = boom\n" + EOS, "y = boom\n" + EOS]
    trees, chunks = mcts.search([{"question": "Q", "answer": "1"}], TableProposer({"": t_all}),
                                Executor(), cfg(num_rollouts=5, errors_threshold=1), answer_fn=answer_fn,
                                grade_fn=grade_fn, progress=False, return_chunks=True)
    assert trees[0].root.terminal
    # Rollout 1 expands the root and finds nothing to select; later rollouts stop at once.
    assert [list(r[:1]) for r in chunks[0].path_log] == [[0], [-1], [-1], [-1], [-1], [-1]]


def test_ppm_initialisation():
    s1, s2 = "a = 1\n" + EOS, "a = 2\n" + EOS
    t = run({"": [s1, s2]}, cfg("round2"), scorer=FixedScorer({s1: 0.25, s2: -0.5}))
    for tag, v in (("0.1", 0.25), ("0.2", -0.5)):
        assert (t[tag]["visit_count"], t[tag]["value"], t[tag]["q_value"]) == (1, v, v)
    assert t["0"]["visit_count"] == 0            # the init is not propagated (§2.7)
    # Selection goes on from the better child (root unvisited: no bonus, Q decides).
    t = run({"": [s1, s2], s1: ["b = 1\n" + EOS]}, cfg("round2"),
            scorer=FixedScorer({s1: 0.25, s2: -0.5}))
    assert "0.1.1" in t and "0.2.1" not in t


def test_terminal_guided_backup():
    s1 = "a = 1\n" + EOS
    table = {"": [s1], s1: [ANS(1, EOS), ANS(2, EOS), ANS(3, EOS)]}
    t = run(table, cfg(), answer="1")
    assert [t[f"0.1.{k}"]["q_value"] for k in (1, 2, 3)] == [1.0, -1.0, -1.0]
    # Every answer is backed up to the root at creation; Q is the running mean and
    # `value` keeps the first value (§2.6).
    for tag in ("0", "0.1"):
        assert t[tag]["visit_count"] == 3
        assert t[tag]["q_value"] == pytest.approx(-1 / 3)
        assert t[tag]["value"] == 1.0


def test_answer_ppm_score_backed_up_at_inference():
    s1 = "a = 1\n" + EOS
    table = {"": [s1], s1: [ANS(1, EOS), ANS(2, EOS)]}
    scores = {s1: 0.5, s1 + ANS(1, EOS): 0.75, s1 + ANS(2, EOS): -0.25}
    t = run(table, cfg("eval_mcts"), scorer=FixedScorer(scores), answer=None)
    assert t["0.1.1"]["q_value"] == 0.75 and t["0.1.2"]["q_value"] == -0.25
    assert t["0.1"]["visit_count"] == 3          # PPM init + two answers
    assert t["0.1"]["q_value"] == pytest.approx((0.5 + 0.75 - 0.25) / 3)
    assert t["0"]["visit_count"] == 2 and t["0"]["value"] == 0.75


def test_tree_growth_past_n():
    steps = [f"x = {i}\n" + EOS for i in range(4)]
    big = run({}, cfg(num_rollouts=4, max_depth=3), default=steps)
    small = run({}, cfg(num_rollouts=4, max_depth=3, initial_num_slots=5), default=steps)
    assert len(small) > 5 * 4                     # 5 -> 10 -> 20 -> 40 slots
    assert small == big                           # nothing truncated, nothing changed


def test_unvisited_child_scores_zero_and_ties_go_to_first_child():
    tr = T.init_tree(1, 8, 3)
    kids = np.full((1, 8, 3), -1, np.int32)
    kids[0, 0] = [1, 2, 3]
    visits = np.zeros((1, 8), np.int32)
    vsum = np.zeros((1, 8), np.float32)
    visits[0, 0], visits[0, 1], vsum[0, 1] = 4, 2, -0.5 * 2    # child 1: Q = -0.5
    visits[0, 3], vsum[0, 3] = 1, -3.0                          # child 3: Q = -3
    tr = tr.replace(children=kids, visits=visits, value_sum=vsum,
                    parent=np.array([[-1, 0, 0, 0, -1, -1, -1, -1]], np.int32))
    u1 = 2 * math.sqrt(math.log(4) / 2)
    one = jax_tree(tr, row=0)
    s = np.asarray(T.uct_scores(one, 0, 2.0, False))
    assert s == pytest.approx([-0.5 + u1, 0.0, -3 + 2 * math.sqrt(math.log(4))], abs=1e-5)
    _, nxt = T.select_step(jax_tree(tr), np.zeros(1, np.int32), np.ones(1, bool))
    assert int(nxt[0]) == 1                       # -0.5 + 1.67 beats the unvisited 0
    s_inf = np.asarray(T.uct_scores(one, 0, 2.0, True))
    assert s_inf[1] == np.inf
    # Equal scores: the first child wins.
    tr2 = tr.replace(visits=np.array([[0, 0, 0, 0, 0, 0, 0, 0]], np.int32),
                     value_sum=np.zeros((1, 8), np.float32))
    _, nxt = T.select_step(jax_tree(tr2), np.zeros(1, np.int32), np.ones(1, bool))
    assert int(nxt[0]) == 1


def jax_tree(tr, row=None):
    import jax
    # A fresh copy each time: select_step donates (and so deletes) its input tree.
    return jax.tree.map(lambda x: jax.numpy.array(np.array(x if row is None else x[row])), tr)


def test_trees_saved_as_jsonl_as_they_finish_and_load_back(tmp_path):
    out = tmp_path / "trees.jsonl"
    dead = ["x = boom\n" + EOS]              # problem 0's root is exhausted in rollout 1
    s1 = "a = 1\n" + EOS

    class Prop(TableProposer):
        def propose(self, prompts, n, temp):
            return [dead if "Q0" in p else [s1, ANS(1, EOS)] for p in prompts]

    probs = [{"question": "Q0", "answer": "1", "id": 7}, {"question": "Q1", "answer": "1"}]
    trees = mcts.search(probs, Prop({}), Executor(), cfg(num_rollouts=3, errors_threshold=1),
                        answer_fn=answer_fn, grade_fn=grade_fn, progress=True, output_path=str(out))
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["question"] for l in lines] == ["Q0", "Q1"] and lines[0]["id"] == 7
    assert set(lines[0]["rstar"]["0"]) >= {"text", "value", "q_value", "visit_count",
                                          "final_answer", "extra_info"}
    assert lines[0]["rstar"]["0"]["extra_info"] == "question: Q0"
    back = load_trees(str(out))
    assert [b.to_rstar_json() for b in back] == [t.to_rstar_json() for t in trees]
    assert back[1].nodes[back[1].nodes[0].children[0]].tag == "0.1"


def test_interrupted_search_resumes_from_its_jsonl(tmp_path):
    out = tmp_path / "trees.jsonl"
    s1 = "a = 1\n" + EOS

    class Prop(TableProposer):
        def propose(self, prompts, n, temp):
            self.seen.extend(prompts)
            return [[s1, ANS(1, EOS)] for _ in prompts]

    probs = [{"question": f"Q{i}", "answer": "1"} for i in range(3)]
    config = cfg(num_rollouts=2, errors_threshold=1, batch_size=1)
    full = mcts.search(probs, Prop({}), Executor(), config, answer_fn=answer_fn,
                       grade_fn=grade_fn, progress=False, output_path=str(out))
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    # An interruption while problem 2's line was being written: two whole lines and a cut one.
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    prop = Prop({})
    again = mcts.search(probs, prop, Executor(), config, answer_fn=answer_fn,
                        grade_fn=grade_fn, progress=False, output_path=str(out))
    assert all("Q2" in p for p in prop.seen) and prop.seen        # only problem 2 searched
    assert [t.to_rstar_json() for t in again] == [t.to_rstar_json() for t in full]
    assert out.read_text().splitlines() == [l.rstrip("\n") for l in lines]


def test_resume_refuses_a_corrupt_line_in_the_middle(tmp_path):
    out = tmp_path / "trees.jsonl"
    out.write_text("not json\n" + "{}\n")
    with pytest.raises(ValueError, match="trees.jsonl:1"):
        mcts.search([{"question": "Q0", "answer": "1"}], TableProposer({}), Executor(),
                    cfg(num_rollouts=1), answer_fn=answer_fn, grade_fn=grade_fn,
                    progress=False, output_path=str(out))


def test_alternative_gold_answers_are_all_accepted_and_dumped(tmp_path):
    from rstar_jax.data.benchmarks import Problem
    from rstar_jax.data.rstar_trees import load_tree_records
    out = tmp_path / "trees.jsonl"

    class Prop(TableProposer):
        def propose(self, prompts, n, temp):
            return [[ANS(7, EOS)] for _ in prompts]

    probs = [Problem(index=0, question="Q0", answer="3", alternatives=("7",)),
             {"question": "Q1", "answer": "3"}]
    trees = mcts.search(probs, Prop({}), Executor(), cfg(num_rollouts=1), answer_fn=answer_fn,
                        grade_fn=lambda pred, gold: (gold if isinstance(gold, list) else [gold])
                        .count(pred) > 0, progress=False, output_path=str(out))
    assert trees[0].answer == ["3", "7"] and trees[1].answer == "3"
    leaf0, leaf1 = (t.nodes[t.nodes[0].children[0]] for t in trees)
    assert leaf0.q_value == 1.0 and leaf1.q_value == -1.0   # 7 matches only an alternative
    records = load_tree_records(str(out))
    assert records[0].answer == ("3", "7") and records[1].answer == "3"
    assert mcts.grader_equal("7", ["3", "7"]) and not mcts.grader_equal("5", ["3", "7"])

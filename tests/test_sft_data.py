"""Tree dump reader and SFT selection against hand-built trees (rstar_reference.md §4.1-4.2).

Trees are written in the reference's dump format (`{tag: node fields}`) and every
expected row below was worked out by hand from the rules, not by running the code.
"""

import json
import random

import pytest

from rstar_jax.data import sft_data
from rstar_jax.data.rstar_trees import (MAX_CHILD_INDEX, TOO_MANY_CODE_ERRORS,
                                        TOO_MANY_STEPS, TreeFormatError, load_tree_records,
                                        parse_tree_record)
from rstar_jax.step_format import build_prompt


def node(text="", q=0.0, answer="", visits=1, **extra):
    """One node in the reference's dump format."""
    return {"text": text, "value": q, "q_value": q, "visit_count": visits,
            "final_answer": answer, **extra}


def record(nodes, question="What is 2+2?", answer="4"):
    return parse_tree_record({"question": question, "answer": answer, "tree": nodes})


def exact(pred, gold):
    """A plain grader: the rules under test, not grading, are what matters here."""
    return pred.strip() == gold.strip()


def step(name):
    return f"<code>\n# {name}\nx = 1\n<end_of_step>"


def answer_step(value):
    return f"<answer>The answer is \\boxed{{{value}}}.<end_of_answer>"


def sft(records, **kw):
    kw.setdefault("shuffle_seed", None)
    return sft_data.build_sft_rows(records, grader=exact, **kw)


# ------------------------------------------------------------------------ reader

def test_reader_accepts_our_lines_and_reference_dump_lines(tmp_path):
    ours = {"question": "Q1", "answer": "4",
            "tree": {"0": node(), "0.1": node("a", 0.5), "0.1.1": node("b", 1.0, "4")}}
    # The reference's shape: input record + "rstar", extra state keys, an int answer,
    # and child index 10 after index 2 (numeric, not string, order).
    reference = {"index": 7, "question": "Q2", "answer": 5, "rstar": {
        "0": node(extra_info="question: Q2", action="", action_input="", observation=""),
        "0.10": node("ten", -1.0, "6"), "0.2": node("two", 1.0, "5")}}
    path = tmp_path / "trees.jsonl"
    path.write_text(json.dumps(ours) + "\n\n" + json.dumps(reference) + "\n")
    recs = load_tree_records(path)
    assert [r.question for r in recs] == ["Q1", "Q2"]
    assert recs[1].answer == "5"
    assert [c.tag for c in recs[1].root.children] == ["0.2", "0.10"]
    assert recs[1].root.extra_info == "question: Q2"
    assert recs[1].root.extra["observation"] == ""
    assert recs[0].root.children[0].children[0].final_answer == "4"
    assert recs[1].source == f"{path}:3"


def test_reader_error_names_file_line_node_and_missing_field(tmp_path):
    good = {"question": "Q", "answer": "1", "tree": {"0": node()}}
    bad_node = node("a", 0.5)
    del bad_node["q_value"]
    bad = {"question": "Q", "answer": "1", "tree": {"0": node(), "0.1": bad_node}}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TreeFormatError, match=rf"{path}:2: node '0.1' is missing field 'q_value'"):
        load_tree_records(path)


def test_reader_error_names_line_of_invalid_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q", "answer": "1", "tree": {"0": {}}\n')
    with pytest.raises(TreeFormatError, match=rf"{path}:1: invalid JSON"):
        load_tree_records(path)


def test_reader_error_names_missing_record_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "Q", "answer": "1"}) + "\n")
    with pytest.raises(TreeFormatError, match=r"bad.jsonl:1: missing field 'tree'"):
        load_tree_records(path)
    path.write_text(json.dumps({"answer": "1", "tree": {"0": node()}}) + "\n")
    with pytest.raises(TreeFormatError, match=r"bad.jsonl:1: missing field 'question'"):
        load_tree_records(path)


def test_reader_rejects_wrong_types_orphans_and_bad_tags():
    with pytest.raises(TreeFormatError, match=r"node '0' field 'visit_count' must be int"):
        record({"0": node(visits=1.5)})
    with pytest.raises(TreeFormatError, match=r"node '0.2.1' has no parent node '0.2'"):
        record({"0": node(), "0.2.1": node("x")})
    with pytest.raises(TreeFormatError, match=r"malformed node tag '0.01'"):
        record({"0": node(), "0.01": node("x")})
    with pytest.raises(TreeFormatError, match=r"no root node tagged '0'"):
        record({"0.1": node("x")})


def test_reader_ignores_children_the_reference_never_probes():
    # The reference probes child indices below 1024 only (§9.6); beam-search dumps also
    # carry a non-node "solutions" entry.
    rec = record({"0": node(), "0.1": node("a"), f"0.{MAX_CHILD_INDEX}": node("far"),
                  "solutions": []})
    assert [c.text for c in rec.root.children] == ["a"]


# --------------------------------------------------------------------------- SFT

def test_sft_keeps_only_traces_ending_in_a_correct_answer():
    rec = record({
        "0": node(),
        "0.1": node(step("right"), 0.5),
        "0.1.1": node(answer_step(4), 1.0, "4"),
        "0.1.2": node(answer_step(5), -1.0, "5"),
        "0.2": node(step("crash"), -1.0, TOO_MANY_CODE_ERRORS),
        "0.3": node(step("long"), -1.0, TOO_MANY_STEPS),
        "0.4": node(step("unfinished"), 0.0),
    })
    rows = sft([rec])
    assert rows == [{"question": "What is 2+2?", "prompt": build_prompt("What is 2+2?"),
                     "response": step("right") + answer_step(4)}]


def test_sft_traces_are_regraded_not_read_from_q():
    # SFT grades the leaf's answer against the gold (§9.5): a Q=1 leaf with a wrong
    # answer is out, a PPM-valued (Q=0.3) leaf with the right answer is in.
    rec = record({
        "0": node(),
        "0.1": node(step("first"), 0.5), "0.1.1": node(answer_step(7), 1.0, "7"),
        "0.2": node(step("second"), 0.5), "0.2.1": node(answer_step(4), 0.3, "4"),
    })
    assert [r["response"] for r in sft([rec])] == [step("second") + answer_step(4)]


def test_sft_accepts_any_of_several_gold_answers():
    rec = record({"0": node(), "0.1": node(answer_step("1/2"), 1.0, "1/2")},
                 answer=["0.5", "1/2"])
    assert len(sft([rec])) == 1


def test_sft_tree_without_valid_answer_gives_nothing():
    rec = record({"0": node(), "0.1": node(step("a"), -1.0, TOO_MANY_CODE_ERRORS)})
    assert sft_data.extract_traces(rec, exact) == []
    assert sft([rec]) == []


def test_sft_keeps_top2_by_mean_then_min_q():
    # Step Q lists (the root is not a step):  A [0.5, 1.0] mean .75 min .5
    #   B [0.75, 0.75] mean .75 min .75   C [0.875, 1.0] mean .9375   D [0.5, 0.5] mean .5
    # Ranked C, B, A, D: B beats A on the min tie-break; top 2 are C then B.
    rec = record({
        "0": node(),
        "0.1": node(step("A"), 0.5), "0.1.1": node(answer_step(4), 1.0, "4"),
        "0.2": node(step("B"), 0.75), "0.2.1": node(answer_step(4), 0.75, "4"),
        "0.3": node(step("C"), 0.875), "0.3.1": node(answer_step(4), 1.0, "4"),
        "0.4": node(step("D"), 0.5), "0.4.1": node(answer_step(4), 0.5, "4"),
    })
    assert [r["response"] for r in sft([rec])] == [step("C") + answer_step(4),
                                                  step("B") + answer_step(4)]
    assert [r["response"] for r in sft([rec], top_k=3)][2] == step("A") + answer_step(4)


def test_sft_equal_scores_keep_tree_order():
    rec = record({
        "0": node(),
        "0.1": node(step("first"), 0.5), "0.1.1": node(answer_step(4), 1.0, "4"),
        "0.2": node(step("second"), 0.5), "0.2.1": node(answer_step(4), 1.0, "4"),
        "0.3": node(step("third"), 0.5), "0.3.1": node(answer_step(4), 1.0, "4"),
    })
    assert [r["response"][:20] for r in sft([rec])] == [step("first")[:20], step("second")[:20]]


def test_sft_drops_traces_containing_error():
    # The best trace mentions "Error" (any case) and is dropped *after* the top-2 cut,
    # so the third best does not take its place (§9.5): one row remains.
    rec = record({
        "0": node(),
        "0.1": node(step("guard against ZeroDivisionError"), 0.875),
        "0.1.1": node(answer_step(4), 1.0, "4"),
        "0.2": node(step("B"), 0.75), "0.2.1": node(answer_step(4), 1.0, "4"),
        "0.3": node(step("C"), 0.5), "0.3.1": node(answer_step(4), 1.0, "4"),
    })
    assert [r["response"] for r in sft([rec])] == [step("B") + answer_step(4)]


def test_sft_pools_traces_by_question_across_trees():
    tree1 = record({"0": node(), "0.1": node(step("t1"), 0.25),
                    "0.1.1": node(answer_step(4), 1.0, "4")})
    tree2 = record({"0": node(), "0.1": node(step("t2a"), 1.0),
                    "0.1.1": node(answer_step(4), 1.0, "4"),
                    "0.2": node(step("t2b"), 0.5), "0.2.1": node(answer_step(4), 1.0, "4")})
    other = record({"0": node(), "0.1": node(answer_step(3), 1.0, "3")},
                   question="What is 1+2?", answer="3")
    rows = sft([tree1, other, tree2])
    assert [(r["question"], r["response"]) for r in rows] == [
        ("What is 2+2?", step("t2a") + answer_step(4)),
        ("What is 2+2?", step("t2b") + answer_step(4)),
        ("What is 1+2?", answer_step(3)),
    ]


def test_sft_question_order_follows_first_trace_of_any_kind():
    # The reference's per-question dict gets a key for wrong traces too.
    only_wrong = record({"0": node(), "0.1": node(answer_step(5), -1.0, "5")})
    other = record({"0": node(), "0.1": node(answer_step(3), 1.0, "3")},
                   question="What is 1+2?", answer="3")
    right = record({"0": node(), "0.1": node(answer_step(4), 1.0, "4")})
    rows = sft([only_wrong, other, right])
    assert [r["question"] for r in rows] == ["What is 2+2?", "What is 1+2?"]


def test_sft_shuffle_matches_reference_seed_0():
    trees = [record({"0": node(), "0.1": node(answer_step(i), 1.0, str(i))},
                    question=f"Q{i}", answer=str(i)) for i in range(6)]
    unshuffled = sft(trees)
    state = random.getstate()
    try:
        # What the reference does: random.seed(0) at import, one random.shuffle.
        random.seed(0)
        expected = list(unshuffled)
        random.shuffle(expected)
    finally:
        random.setstate(state)
    assert sft(trees, shuffle_seed=0) == expected
    assert expected != unshuffled


def test_sft_response_is_stripped_and_root_text_excluded():
    rec = record({"0": node("ROOT TEXT"), "0.1": node("\n" + step("a"), 0.5),
                  "0.1.1": node(answer_step(4) + "\n", 1.0, "4")})
    assert sft([rec])[0]["response"] == step("a") + answer_step(4)


def test_sft_reference_format_and_newline_switch(tmp_path):
    rec = record({"0": node(), "0.1": node(answer_step(4), 1.0, "4")})
    rows = sft([rec])
    assert rows[0]["prompt"] == ("<|user|>:\nWhat is 2+2?\n<|assistant|>: Let's think step by "
                                 "step and solve the problem with code.")
    ref_rows = sft([rec], reference_newlines=True)
    assert ref_rows[0]["prompt"].startswith("<|user|>:\nWhat is 2+2?\n\n<|assistant|>")
    path = tmp_path / "sft.json"
    sft_data.write_reference_sft_json(rows, path)
    assert json.loads(path.read_text()) == [{"query": "What is 2+2?",
                                             "response": answer_step(4)}]
    sft_data.write_sft_jsonl(rows, tmp_path / "sft.jsonl")
    assert [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()] == rows


def test_sft_refuses_trees_without_gold_answer():
    rec = parse_tree_record({"question": "Q", "tree": {"0": node(),
                                                       "0.1": node(answer_step(4), 1.0, "4")}},
                            where="run.jsonl:3")
    with pytest.raises(ValueError, match=r"run.jsonl:3: field 'answer' is missing"):
        sft([rec])


def test_reader_accepts_dump_lines_written_by_the_search():
    # The search's own writer (rstar_jax.search.host_tree) must produce lines we read.
    from rstar_jax.search.host_tree import SearchTree
    tree = SearchTree.new("What is 2+2?", answer="4", record={"index": 0})
    first = tree.add_child(0, text=step("a"))
    tree.add_child(first.index, text=answer_step(4), final_answer="4")
    tree.add_child(first.index, text=answer_step(5), final_answer="5")
    for n, (q, visits) in zip(tree.nodes, [(0.0, 2), (0.0, 2), (1.0, 1), (-1.0, 1)]):
        n.q_value, n.visit_count = q, visits
    rec = parse_tree_record(json.loads(json.dumps(tree.to_record())))
    assert rec.root.children[0].children[1].final_answer == "5"
    assert sft([rec]) == [{"question": "What is 2+2?", "prompt": build_prompt("What is 2+2?"),
                           "response": step("a") + answer_step(4)}]

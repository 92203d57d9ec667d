"""PPM preference pairs against hand-built trees (rstar_reference.md §4.3, §9.6).

Trees are in the reference's dump format; every expected pair, margin and count was
worked out by hand from the rules in the comments.
"""

import json
import random

import pytest

from rstar_jax.data import ppm_pairs
from rstar_jax.data.ppm_pairs import PairRules
from rstar_jax.data.rstar_trees import TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, parse_tree_record

QUESTION = "What is 2+2?"
PREFIX = ("<|user|>:\nWhat is 2+2?\n<|assistant|>: Let's think step by step and solve the "
          "problem with code.")


def node(text="", q=0.0, answer="", visits=1):
    return {"text": text, "value": q, "q_value": q, "visit_count": visits,
            "final_answer": answer}


def record(nodes):
    return parse_tree_record({"question": QUESTION, "answer": "4", "tree": nodes})


def step(letter):
    """A code step; steps named by different letters are 30 edits apart."""
    return f"<code>\n# {letter * 30}\n<end_of_step>"


def right(q=1.0):
    return node("<answer>\\boxed{4}<end_of_answer>", q, "4")


def wrong(q=-1.0):
    return node("<answer>\\boxed{5}<end_of_answer>", q, "5")


def summary(pairs):
    """(pos, neg, step_margin, pos_count, neg_count) of each pair, margins rounded."""
    return [(p.pos, p.neg, round(p.step_margin, 9), p.pos_count, p.neg_count) for p in pairs]


def star(children):
    """Root with one step child per (letter, q, leaf) and the leaf below it."""
    nodes = {"0": node()}
    for k, (letter, q, leaf) in enumerate(children, start=1):
        nodes[f"0.{k}"] = node(step(letter), q)
        nodes[f"0.{k}.1"] = leaf
    return record(nodes)


# -------------------------------------------------------------------------- labels

def test_leaf_labels_use_exact_q_and_code_errors_are_never_wrong():
    rec = record({
        "0": node(),
        "0.1": node(step("a"), 0.5),
        "0.1.1": right(), "0.1.2": wrong(),
        "0.1.3": node("<answer>\\boxed{4}<end_of_answer>", 0.7, "4"),  # PPM-valued: neither
        "0.1.4": node(step("b"), -1.0, TOO_MANY_CODE_ERRORS),           # never wrong
        "0.2": node(step("c"), 1.0, TOO_MANY_CODE_ERRORS),  # Q == 1 counts (reference quirk)
        "0.3": node(step("d"), -1.0, TOO_MANY_STEPS),       # not an answer: neither
    })
    assert ppm_pairs.leaf_outcomes(rec.root) == {
        "0.1.1": (1, 0), "0.1.2": (0, 1), "0.1.3": (0, 0), "0.1.4": (0, 0),
        "0.1": (1, 1), "0.2": (1, 0), "0.3": (0, 0), "0": (2, 1)}


def test_code_error_leaf_never_negative():
    # B's only leaf is a code error, so B is no negative and the root has no pairs.
    rec = record({"0": node(), "0.1": node(step("a"), 0.5), "0.1.1": right(),
                  "0.2": node(step("b"), -0.5),
                  "0.2.1": node(step("c"), -1.0, TOO_MANY_CODE_ERRORS),
                  "0.3": node(step("d"), -1.0, TOO_MANY_CODE_ERRORS)})
    assert ppm_pairs.extract_step_pairs(rec) == []
    assert ppm_pairs.extract_final_step_pairs(rec) == []


def test_ppm_tree_without_valid_answer_gives_no_pairs():
    rec = record({"0": node(), "0.1": node(step("a"), 1.0, TOO_MANY_CODE_ERRORS),
                  "0.2": node(step("b"), -1.0, TOO_MANY_STEPS)})
    assert ppm_pairs.extract_step_pairs(rec) == []


# -------------------------------------------------------------- selection per node

def test_ppm_pairs_take_top2_positives_by_q_and_top2_negatives_by_lowest_q():
    rec = star([("a", 0.2, right()), ("b", 0.6, right()), ("c", 0.4, right()),
                ("d", -0.3, wrong()), ("e", -0.8, wrong()), ("f", -0.5, wrong())])
    # Positives b (.6), c (.4); negatives e (-.8), f (-.5); positive-major order.
    assert summary(ppm_pairs.extract_step_pairs(rec)) == [
        (step("b"), step("e"), 1.4, 2, 2), (step("b"), step("f"), 1.1, 2, 2),
        (step("c"), step("e"), 1.2, 2, 2), (step("c"), step("f"), 0.9, 2, 2)]


def test_ppm_fallback_when_fewer_than_two_positives():
    rec = star([("p", 0.5, right())] + [(c, -q, wrong()) for c, q in
                                        zip("vwxyz", (0.1, 0.2, 0.3, 0.4, 0.5))])
    # One positive: up to 4 negatives, lowest Q first (z, y, x, w); v is left out.
    assert summary(ppm_pairs.extract_step_pairs(rec)) == [
        (step("p"), step("z"), 1.0, 1, 4), (step("p"), step("y"), 0.9, 1, 4),
        (step("p"), step("x"), 0.8, 1, 4), (step("p"), step("w"), 0.7, 1, 4)]


def test_ppm_fallback_when_fewer_than_two_negatives():
    rec = star([(c, q, right()) for c, q in zip("abcde", (0.1, 0.2, 0.3, 0.4, 0.5))]
               + [("n", -0.5, wrong())])
    assert summary(ppm_pairs.extract_step_pairs(rec)) == [
        (step("e"), step("n"), 1.0, 4, 1), (step("d"), step("n"), 0.9, 4, 1),
        (step("c"), step("n"), 0.8, 4, 1), (step("b"), step("n"), 0.7, 4, 1)]


def test_ppm_fallback_with_one_of_each_gives_one_pair():
    rec = star([("p", 0.5, right()), ("n", -0.5, wrong())])
    assert summary(ppm_pairs.extract_step_pairs(rec)) == [(step("p"), step("n"), 1.0, 1, 1)]


def test_ppm_pairs_require_positive_step_margin():
    # p leads to a correct answer but has lower Q than n: margin -0.3, no pair, even
    # though p's continuation (.4) beats n's (-.45).
    rec = star([("p", -0.2, right()), ("n", 0.1, wrong())])
    assert ppm_pairs.extract_step_pairs(rec) == []


def test_ppm_pairs_require_better_continuation():
    # p (.3) -> a (-.9) -> right: mean (.3 - .9 + 1) / 3 = 0.1333
    # n (.2) -> x (.99) -> y (.99) -> wrong: mean (.2 + .99 + .99 - 1) / 4 = 0.295
    # Step margin .1 > 0 but the continuation of n scores higher: no pair.
    nodes = {"0": node(), "0.1": node(step("p"), 0.3), "0.1.1": node(step("a"), -0.9),
             "0.1.1.1": right(), "0.2": node(step("n"), 0.2), "0.2.1": node(step("x"), 0.99),
             "0.2.1.1": node(step("y"), 0.99), "0.2.1.1.1": wrong()}
    assert ppm_pairs.extract_step_pairs(record(nodes)) == []
    # With y at -.99 n's continuation scores (.2 + .99 - .99 - 1) / 4 = -0.2: kept.
    nodes["0.2.1.1"] = node(step("y"), -0.99)
    (pair,) = ppm_pairs.extract_step_pairs(record(nodes))
    assert (pair.pos, pair.neg) == (step("p"), step("n"))
    assert pair.steps_margin == pytest.approx(0.4 / 3 + 0.2)


def test_ppm_continuation_follows_best_correct_and_worst_wrong_child():
    nodes = {"0": node(),
             "0.1": node(step("p"), 0.5),
             "0.1.1": node(step("b"), 0.1), "0.1.1.1": right(),
             "0.1.2": node(step("c"), 0.9), "0.1.2.1": right(),
             "0.2": node(step("n"), -0.5),
             "0.2.1": node(step("d"), -0.2), "0.2.1.1": wrong(),
             "0.2.2": node(step("e"), -0.7), "0.2.2.1": wrong()}
    (pair,) = ppm_pairs.extract_step_pairs(record(nodes))
    assert pair.pos_steps == step("p") + step("c") + right()["text"]
    assert pair.neg_steps == step("n") + step("e") + wrong()["text"]
    assert pair.steps_margin == pytest.approx((0.5 + 0.9 + 1) / 3 - (-0.5 - 0.7 - 1) / 3)


# --------------------------------------------------------------------- BFS descent

def mixed_tree():
    # Root: A (.5, 3 visits) and B (0, 7 visits), each with a right and a wrong leaf.
    # At the root positives are A, B and negatives B, A; only (A, B) has margin > 0
    # (.5) with continuations .75 > -.5. Below A and B: (right, wrong), margin 2.
    return record({"0": node("ROOT"),
                   "0.1": node(step("a"), 0.5, visits=3), "0.1.1": right(), "0.1.2": wrong(),
                   "0.2": node(step("b"), 0.0, visits=7), "0.2.1": right(), "0.2.2": wrong()})


def test_ppm_bfs_descends_into_every_child_with_both_outcomes():
    pairs = ppm_pairs.extract_step_pairs(mixed_tree())
    assert [(p.prefix_steps, p.pos, p.neg, p.pos_count, p.neg_count) for p in pairs] == [
        ("", step("a"), step("b"), 2, 2),
        (step("a"), right()["text"], wrong()["text"], 1, 1),
        (step("b"), right()["text"], wrong()["text"], 1, 1)]


def test_ppm_vis_count_mode_descends_into_most_visited_child_only():
    pairs = ppm_pairs.extract_step_pairs(mixed_tree(), PairRules(mode="vis_count"))
    assert [p.prefix_steps for p in pairs] == ["", step("b")]


def test_ppm_rules_reject_bad_settings_naming_the_config_key():
    with pytest.raises(ValueError, match=r"config.ppm.mode must be one of"):
        PairRules(mode="best")
    with pytest.raises(ValueError, match=r"config.ppm.pairs_per_side must be >= 1"):
        PairRules(pairs_per_side=0)


# ---------------------------------------------------------------------- the filter

def test_ppm_pairs_require_margin_0_5():
    # Margins .25 - (-.25) = .5 (kept, the bound is inclusive) and .25 - (-.2) = .45.
    kept = star([("p", 0.25, right()), ("n", -0.25, wrong())])
    dropped = star([("p", 0.25, right()), ("n", -0.2, wrong())])
    assert summary(ppm_pairs.build_ppm_pairs([kept, dropped])) == [
        (step("p"), step("n"), 0.5, 1, 1)]


def test_ppm_pairs_require_edit_distance_20():
    def tree(k):
        return record({"0": node(), "0.1": node("<code>\n" + "a" * k, 0.5), "0.1.1": right(),
                       "0.2": node("<code>\n" + "b" * k, -0.5), "0.2.1": wrong()})
    assert ppm_pairs.build_ppm_pairs([tree(19)]) == []
    assert len(ppm_pairs.build_ppm_pairs([tree(20)])) == 1
    assert ppm_pairs.build_ppm_pairs([tree(19)], PairRules(min_edit_distance=19)) != []


def _plain_levenshtein(a, b):
    """Textbook full-matrix edit distance, the independent check."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[-1][-1]


def test_levenshtein_matches_textbook_values_and_bound():
    assert ppm_pairs.levenshtein("kitten", "sitting") == 3
    assert ppm_pairs.levenshtein("flaw", "lawn") == 2
    assert ppm_pairs.levenshtein("intention", "execution") == 5
    assert ppm_pairs.levenshtein("", "abc") == 3
    assert ppm_pairs.levenshtein("same", "same") == 0
    assert ppm_pairs.levenshtein("kitten", "sitting", bound=2) == 2
    assert ppm_pairs.levenshtein("kitten", "sitting", bound=20) == 3
    assert ppm_pairs.levenshtein("a" * 30, "b" * 30, bound=20) == 20
    rng = random.Random(1)
    for _ in range(200):
        a = "".join(rng.choice("abc") for _ in range(rng.randrange(0, 14)))
        b = "".join(rng.choice("abc") for _ in range(rng.randrange(0, 14)))
        want = _plain_levenshtein(a, b)
        assert ppm_pairs.levenshtein(a, b) == want, (a, b)
        bound = rng.randrange(0, 8)
        assert ppm_pairs.levenshtein(a, b, bound=bound) == min(want, bound), (a, b, bound)


# ------------------------------------------------------------------ final-step pairs

def final_tree():
    # Correct trajectories: a+right (mean .75), c+right (mean .9375).
    # Wrong: a+wrong (mean -.25), b+wrong (mean -.75). d ends in a code error (ignored).
    return record({"0": node(),
                   "0.1": node(step("a"), 0.5), "0.1.1": right(), "0.1.2": wrong(),
                   "0.2": node(step("b"), -0.5), "0.2.1": wrong(),
                   "0.3": node(step("c"), 0.875), "0.3.1": right(),
                   "0.4": node(step("d"), 0.25),
                   "0.4.1": node(step("e"), -1.0, TOO_MANY_CODE_ERRORS)})


def test_final_step_pairs_pair_best_correct_with_worst_wrong_trajectories():
    ok, bad = right()["text"], wrong()["text"]
    pairs = ppm_pairs.extract_final_step_pairs(final_tree())
    assert [(p.pos, p.neg, p.kind, p.pos_count, p.neg_count) for p in pairs] == [
        (step("c") + ok, step("b") + bad, "final", 2, 2),
        (step("c") + ok, step("a") + bad, "final", 2, 2),
        (step("a") + ok, step("b") + bad, "final", 2, 2),
        (step("a") + ok, step("a") + bad, "final", 2, 2)]
    assert [p.steps_margin for p in pairs] == [1.6875, 1.1875, 1.5, 1.0]
    assert all(p.step_margin == 2.0 and p.prefix_steps == "" for p in pairs)


def test_final_step_pairs_are_off_by_default_and_filtered_when_on():
    tree = final_tree()
    default = ppm_pairs.build_ppm_pairs([tree])
    assert all(p.kind == "step" for p in default)
    with_final = ppm_pairs.build_ppm_pairs([tree], PairRules(final_step_pairs=True))
    # The a+right vs a+wrong pair differs by one character and fails the distance rule.
    assert with_final[:len(default)] == default
    assert [(p.pos[:40], p.neg[:40]) for p in with_final[len(default):]] == [
        (step("c")[:40], step("b")[:40]), (step("c")[:40], step("a")[:40]),
        (step("a")[:40], step("b")[:40])]


# ----------------------------------------------------------------- output formats

def test_ppm_reference_format_uses_prefix_without_root_text(tmp_path):
    pairs = ppm_pairs.extract_step_pairs(mixed_tree())
    ref = ppm_pairs.to_reference_ppm(pairs)
    assert ref[1] == {"prompt": PREFIX + step("a"), "neg": wrong()["text"],
                      "pos": right()["text"], "neg_count": 1, "pos_count": 1}
    assert list(ref[1]) == ["prompt", "neg", "pos", "neg_count", "pos_count"]
    path = tmp_path / "rm.json"
    ppm_pairs.write_reference_ppm_json(pairs, path)
    assert json.loads(path.read_text()) == ref


def test_ppm_final_pairs_reference_format_splits_prompt_like_released_examples():
    pair = ppm_pairs.extract_final_step_pairs(final_tree())[0]
    (ref,) = ppm_pairs.to_reference_ppm([pair])
    assert ref["prompt"] == "<|user|>:\n" + QUESTION
    assert ref["pos"] == PREFIX[len(ref["prompt"]):] + step("c") + right()["text"]
    assert ref["pos"].startswith("\n<|assistant|>: Let's think")
    assert ref["prompt"] + ref["neg"] == PREFIX + step("b") + wrong()["text"]


def test_ppm_rows_and_newline_switch(tmp_path):
    pairs = ppm_pairs.extract_step_pairs(mixed_tree())
    rows = ppm_pairs.to_rows(pairs)
    assert rows[1]["prompt"] == PREFIX + step("a")
    assert (rows[1]["pos"], rows[1]["neg"], rows[1]["kind"]) == (
        right()["text"], wrong()["text"], "step")
    two = ppm_pairs.to_rows(pairs, reference_newlines=True)
    assert two[1]["prompt"] == PREFIX.replace("?\n<|assistant|>", "?\n\n<|assistant|>") + step("a")
    ppm_pairs.write_ppm_jsonl(pairs, tmp_path / "pairs.jsonl")
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == rows


def test_rules_from_config_match_reference_defaults():
    from configs.data import get_config
    config = get_config()
    assert ppm_pairs.rules_from_config(config.ppm) == PairRules()
    assert (config.sft.top_k, config.sft.banned_substring, config.sft.shuffle_seed) == (
        2, "error", 0)

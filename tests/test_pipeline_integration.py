"""One self-evolution round end to end on the tiny CPU model, with every real component.

bootstrap policy (SFT on hand-written code-augmented traces)
  -> MCTS (EngineProposer on the policy, sandboxed PythonExecutor, grader vs gold answers)
  -> trees JSONL in the reference's tag format -> load_tree_records
  -> build_sft_rows / build_ppm_pairs (data rules of configs/data.py)
  -> a few policy SFT steps and PPM steps (configs/train_*.py:tiny)
  -> save_pretrained exports reloaded bit for bit -> EngineScorer with the trained PPM,
     also plugged into a PPM-guided MCTS (the next round's search).

Random weights generate gibberish, so the round starts from a policy SFT-trained on two
traces per problem, written in the exact step format the search produces
(rstar_jax/step_format.py): a correct two-step code solution and a wrong one-step
"solution" (it multiplies instead of adding, or similar). The policy samples both, so the
search has to tell them apart by running the code and grading the answers; everything
downstream is built only from what the search found.
"""

import importlib.util
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.data.benchmarks import load_benchmark
from rstar_jax.data.ppm_pairs import build_ppm_pairs, levenshtein, rules_from_config, to_rows
from rstar_jax.data.rstar_trees import (REQUIRED_NODE_FIELDS, is_valid_answer_leaf, iter_nodes,
                                        load_tree_records)
from rstar_jax.data.sft_data import build_sft_rows
from rstar_jax.engine import EngineProposer, EngineScorer, engine_from_config
from rstar_jax.models import (Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, forward_scores, load_ppm,
                              load_pretrained, load_tokenizer, make_mesh, params_of)
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.search import mcts
from rstar_jax.step_format import INVALID_TERMINALS
from rstar_jax.step_format import build_prompt
from rstar_jax.train import train_ppm, train_sft
from rstar_jax.train.metrics import read_metrics
from rstar_jax.verify.executor import PythonExecutor
from rstar_jax.verify.grader import extract_answer, math_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (question, gold, correct trace steps, wrong trace steps). Node texts as the search
# writes them: the step that ends the code block carries its "\n<output>...<end_of_output>".
PROBLEMS = [
    ("What is 2 + 3?", "5",
     ["<code>\n# Step 1: add the two numbers\nresult = 2 + 3\n<end_of_step>",
      "\n# Step 2: print the result\nprint(result)\n<end_of_code>\n<output>5<end_of_output>",
      "\n<answer>The answer is \\boxed{5}.<end_of_answer>"],
     ["<code>\nprint(2 * 3)\n<end_of_code>\n<output>6<end_of_output>",
      "\n<answer>The answer is \\boxed{6}.<end_of_answer>"]),
    ("What is 4 * 6?", "24",
     ["<code>\n# Step 1: multiply the two numbers\nresult = 4 * 6\n<end_of_step>",
      "\n# Step 2: print the result\nprint(result)\n<end_of_code>\n<output>24<end_of_output>",
      "\n<answer>The answer is \\boxed{24}.<end_of_answer>"],
     ["<code>\nprint(4 + 6)\n<end_of_code>\n<output>10<end_of_output>",
      "\n<answer>The answer is \\boxed{10}.<end_of_answer>"]),
    ("What is 7 + 8?", "15",
     ["<code>\n# Step 1: add the two numbers\nresult = 7 + 8\n<end_of_step>",
      "\n# Step 2: print the result\nprint(result)\n<end_of_code>\n<output>15<end_of_output>",
      "\n<answer>The answer is \\boxed{15}.<end_of_answer>"],
     ["<code>\nprint(7 * 8)\n<end_of_code>\n<output>56<end_of_output>",
      "\n<answer>The answer is \\boxed{56}.<end_of_answer>"]),
]


def load_config(name, variant=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config() if variant is None else mod.get_config(variant)


def one_device_mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def flat(params):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def assert_bit_exact(a, b):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        assert np.array_equal(fa[k], fb[k]), f"{k} differs after export + reload"


def test_one_self_evolution_round(tmp_path):
    tok = build_tiny_tokenizer(tmp_path / "tokenizer")
    cfg = Qwen2Config.from_config_dict(load_config("model", "tiny"))
    assert cfg.vocab_size == len(tok)
    mesh = one_device_mesh()

    # --- round 0: bootstrap policy, SFT on the hand-written traces (both kinds) -------
    boot_rows = [{"prompt": build_prompt(q), "response": "".join(steps)}
                 for q, _, good, bad in PROBLEMS for steps in (good, bad)]
    boot_cfg = load_config("train_sft", "tiny")
    boot_cfg.epochs = 200           # 6 rows, batch 8: one step per epoch
    boot_cfg.checkpoint.save_every = 10_000
    policy0 = train_sft(boot_cfg, Qwen2ForCausalLM(cfg), boot_rows, tok, tmp_path / "boot",
                        mesh=mesh, progress=False)
    boot_log = [m for m in read_metrics(tmp_path / "boot" / "metrics_sft.jsonl") if "loss" in m]
    assert boot_log[-1]["loss"] < 0.5 * boot_log[0]["loss"]

    # --- search: MCTS with the real engine, executor and grader ----------------------
    bench = tmp_path / "problems.jsonl"
    bench.write_text("".join(json.dumps({"question": q, "answer": g}) + "\n"
                             for q, g, _, _ in PROBLEMS))
    problems = load_benchmark(bench)
    ecfg = load_config("engine", "tiny")
    ecfg.max_new_tokens = 48
    engine = engine_from_config(params_of(policy0), cfg, ecfg, tokenizer=tok)
    proposer = EngineProposer(engine, tok, max_new_tokens=ecfg.max_new_tokens, seed=0)
    scfg = load_config("search", "round1")
    scfg.num_rollouts = 4
    scfg.num_children = 4
    scfg.max_depth = 6
    scfg.temperature = 1.0
    scfg.unvisited_score = "inf"    # visit every sibling once, so both kinds get graded
    trees_path = tmp_path / "trees.jsonl"
    with PythonExecutor(num_workers=2, timeout_s=10) as executor:
        trees = mcts.search(problems, proposer, executor, scfg, output_path=str(trees_path),
                            progress=False)
        # The executor really ran the model's programs (and nothing in this process).
        assert executor.cache_info()["misses"] > 0
    assert len(trees) == len(PROBLEMS) and proposer.tokens_generated > 0

    lines = [json.loads(x) for x in trees_path.read_text().splitlines()]
    assert sorted(x["question"] for x in lines) == sorted(q for q, *_ in PROBLEMS)
    for line in lines:
        tags = line["rstar"]
        assert "0" in tags and any(t.startswith("0.") for t in tags)
        for tag, node in tags.items():
            assert re.fullmatch(r"0(\.[1-9][0-9]*)*", tag), tag
            assert set(REQUIRED_NODE_FIELDS) <= set(node), (tag, node)
            if tag != "0":
                assert tag.rsplit(".", 1)[0] in tags
    records = load_tree_records(trees_path)
    gold = {q: g for q, g, _, _ in PROBLEMS}
    solved = 0
    for rec in records:
        leaves = [n for n in iter_nodes(rec.root) if is_valid_answer_leaf(n)]
        for leaf in leaves:
            # terminal-guided backups: graded answers are exactly +1 / -1 on the leaf
            ok = math_equal(leaf.final_answer, gold[rec.question])
            assert leaf.value == (1.0 if ok else -1.0), (leaf.tag, leaf.final_answer, leaf.value)
        solved += any(math_equal(n.final_answer, gold[rec.question]) for n in leaves)
    assert solved >= 1

    # Code steps carry the sandbox's real output: the block-ending steps of the
    # hand-written traces, wherever the policy reproduced them, show what their program
    # prints (step 2 of a correct trace re-runs step 1's code too, §3.4).
    known = {}   # (question, parent step text, step) -> what the program prints
    for q, _, good, bad in PROBLEMS:
        for parent, step in ((good[0], good[1]), ("", bad[0])):
            body, out = step.split("\n<output>")
            known[q, parent, body] = out[: -len("<end_of_output>")]
    checked = 0
    for line in lines:
        tags = line["rstar"]
        for tag, node in tags.items():
            if tag == "0" or node["final_answer"]:
                continue
            key = (line["question"], tags[tag.rsplit(".", 1)[0]]["text"], node["action_input"])
            if key in known:
                assert node["observation"] == known[key], node
                assert node["text"] == f"{node['action_input']}\n<output>{node['observation']}<end_of_output>"
                checked += 1
    assert checked >= 2

    # --- trees -> training data ------------------------------------------------------
    dcfg = load_config("data")
    sft_rows = build_sft_rows(records, top_k=dcfg.sft.top_k,
                              banned_substring=dcfg.sft.banned_substring,
                              shuffle_seed=dcfg.sft.shuffle_seed)
    assert sft_rows
    per_q = {}
    for row in sft_rows:
        assert row["prompt"] == build_prompt(row["question"])
        assert math_equal(extract_answer(row["response"]), gold[row["question"]]), row
        assert "error" not in row["response"].lower()
        per_q[row["question"]] = per_q.get(row["question"], 0) + 1
    assert max(per_q.values()) <= dcfg.sft.top_k

    pairs = build_ppm_pairs(records, rules_from_config(dcfg.ppm))
    assert pairs, "no preference pairs: the search found no node with correct and wrong children"
    for p in pairs:
        assert p.step_margin >= dcfg.ppm.min_step_margin
        assert levenshtein(p.pos, p.neg) >= dcfg.ppm.min_edit_distance
    ppm_rows = to_rows(pairs)

    # --- train the round's policy and PPM --------------------------------------------
    sft_cfg = load_config("train_sft", "tiny")
    sft_cfg.max_steps = 3
    policy1 = load_pretrained(tmp_path / "boot" / "policy", dtype="float32")
    policy1 = train_sft(sft_cfg, policy1, sft_rows, tok, tmp_path / "sft", mesh=mesh,
                        progress=False)
    sft_log = [m for m in read_metrics(tmp_path / "sft" / "metrics_sft.jsonl") if "loss" in m]
    assert sft_log and all(math.isfinite(m["loss"]) for m in sft_log)
    reloaded_policy = load_pretrained(tmp_path / "sft" / "policy", dtype="float32")
    assert_bit_exact(params_of(reloaded_policy), params_of(policy1))
    assert load_tokenizer(tmp_path / "sft" / "policy").encode(ppm_rows[0]["prompt"]) == \
        tok.encode(ppm_rows[0]["prompt"])

    ppm_cfg = load_config("train_ppm", "tiny")
    ppm_cfg.epochs = 30
    # The PPM starts from this round's policy with a fresh value head (§4.5).
    ppm = train_ppm(ppm_cfg, Qwen2PPM.from_policy(policy1, seed=0), ppm_rows, tok,
                    tmp_path / "ppm", mesh=mesh, progress=False)
    # ... and training it leaves the policy alone (from_policy used to share the trunk).
    assert_bit_exact(params_of(policy1), params_of(reloaded_policy))
    ppm_log = [m for m in read_metrics(tmp_path / "ppm" / "metrics_ppm.jsonl") if "loss" in m]
    assert ppm_log and all(math.isfinite(m["loss"]) for m in ppm_log)
    reloaded_ppm = load_ppm(tmp_path / "ppm" / "ppm", dtype="float32")
    assert_bit_exact(params_of(reloaded_ppm), params_of(ppm))

    # --- score with the trained PPM ----------------------------------------------------
    ppm_params = params_of(reloaded_ppm)
    scorer = EngineScorer(ppm_params, cfg, tok, batch_size=ecfg.score_batch,
                          min_len=ecfg.score_min_len, max_len=ecfg.max_seq_len)
    texts = [r["prompt"] + r["pos"] for r in ppm_rows] + [r["prompt"] + r["neg"] for r in ppm_rows]
    scores = scorer.score(texts)
    assert all(-1 < s < 1 and math.isfinite(s) for s in scores)
    for text, s in zip(texts, scores):
        ids = jnp.asarray([tok.encode(text, add_special_tokens=False)], jnp.int32)
        want = float(forward_scores(ppm_params, cfg, ids, jnp.ones_like(ids))[0])
        assert abs(s - want) < 1e-5
    n = len(ppm_rows)
    # trained on these pairs: the PPM prefers the correct step on average
    assert np.mean(scores[:n]) > np.mean(scores[n:])

    # --- next round's search: the trained policy with the PPM as scorer --------------
    engine1 = engine_from_config(params_of(reloaded_policy), cfg, ecfg, tokenizer=tok)
    proposer1 = EngineProposer(engine1, tok, max_new_tokens=ecfg.max_new_tokens, seed=1)
    icfg = load_config("search", "eval_mcts")
    icfg.num_rollouts, icfg.num_children, icfg.max_depth, icfg.temperature = 2, 2, 6, 0.7
    with PythonExecutor(num_workers=2, timeout_s=10) as executor:
        (tree,) = mcts.search(problems[:1], proposer1, executor, icfg, scorer=scorer,
                              progress=False)
    nodes = [n for n in tree.bfs()[1:] if n.final_answer not in INVALID_TERMINALS]
    assert nodes
    # Every new node's value is the trained PPM's score of question + steps so far
    # (children are PPM-initialised; answers back up their PPM score at inference).
    want = scorer.score([build_prompt(tree.question) + tree.partial_solution(n.index)
                         for n in nodes])
    for node, w in zip(nodes, want):
        assert node.visit_count >= 1 and -1 < node.value < 1
        assert abs(node.value - w) < 1e-5, (node.tag, node.value, w)


def test_tokenizer_exported_beside_a_policy_reloads_with_the_same_ids(tmp_path):
    """The tiny tokenizer saved next to a Qwen2 config.json (what train_sft exports) must
    not be reloaded as Qwen2Tokenizer, whose own pre-tokenizer splits digits."""
    from rstar_jax.models import save_pretrained
    tok = build_tiny_tokenizer()
    cfg = Qwen2Config.from_config_dict(load_config("model", "tiny"))
    save_pretrained(Qwen2ForCausalLM(cfg), tmp_path, tokenizer=tok)
    text = build_prompt("What is 7 + 8?") + PROBLEMS[2][2][0]
    assert load_tokenizer(tmp_path).encode(text) == tok.encode(text)

"""The reference's SFT and PPM pair files in and out (rstar_reference.md §4.2-4.5).

Our data rules write both files in the reference's schema, field for field; both files
(ours, and fixtures written by the committed script from the documented schema) go
through our trainers as they are.
"""

import importlib.util
import json
import os
import random

import jax
import numpy as np
import pytest
from flax import nnx

from rstar_jax.data import (REFERENCE_PPM_FIELDS, REFERENCE_SFT_FIELDS, ReferenceFormatError,
                            build_ppm_pairs, build_sft_rows, check_reference_ppm,
                            check_reference_sft, load_tree_records, read_reference_ppm,
                            read_reference_sft, to_rows, write_reference_ppm_json,
                            write_reference_sft_json)
from rstar_jax.models import (Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, load_ppm, load_pretrained,
                              make_mesh)
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.step_format import build_prompt
from rstar_jax.train import data as D
from rstar_jax.train import train_ppm, train_sft
from rstar_jax.train.metrics import read_metrics
from train_fixtures import load_config

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "make_reference_fixtures", os.path.join(HERE, "fixtures", "make_reference_fixtures.py"))
F = importlib.util.module_from_spec(spec)
spec.loader.exec_module(F)

# train/train_SFT.py's source template (rstar_reference.md §4.4), written out here.
REFERENCE_SFT_SOURCE = ("<|user|>:\n{query}\n<|assistant|>: Let's think step by step and solve "
                        "the problem with code.")


def exact(pred, gold):
    return pred.strip() == gold.strip()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref_data")
    paths = {k: str(root / k) for k in ("sft.json", "rm.json", "reference_trees.jsonl")}
    F.write_json_list(F.reference_sft_records(), paths["sft.json"])
    F.write_json_list(F.reference_pair_records(), paths["rm.json"])
    F.write_reference_trees(paths["reference_trees.jsonl"])
    return paths


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_our_sft_file_is_the_reference_schema_field_for_field(files, tmp_path):
    records = load_tree_records(files["reference_trees.jsonl"])
    rows = build_sft_rows(records, grader=exact)
    assert rows
    path = tmp_path / "sft.json"
    write_reference_sft_json(rows, path)
    text = path.read_text()
    assert text.startswith('[\n    {\n        "query": ')      # json.dump(..., indent=4)
    written = json.loads(text)
    assert [list(r) for r in written] == [list(REFERENCE_SFT_FIELDS)] * len(rows)
    check_reference_sft(written)
    for ours, theirs in zip(rows, written):
        assert theirs["query"] == ours["question"] and not theirs["query"].startswith("<|user|>")
        assert theirs["response"] == theirs["response"].strip()
        assert "<|assistant|>" not in theirs["response"]
    # Shuffled once with seed 0 (sample_sft_data.py: random.seed(0), random.shuffle).
    unshuffled = build_sft_rows(records, grader=exact, shuffle_seed=None)
    random.seed(0)
    random.shuffle(unshuffled)
    assert [r["query"] for r in written] == [r["question"] for r in unshuffled]
    assert read_reference_sft(path) == written


def test_our_pair_file_is_the_reference_schema_field_for_field(files, tmp_path):
    pairs = build_ppm_pairs(load_tree_records(files["reference_trees.jsonl"]))
    assert pairs
    path = tmp_path / "rm.json"
    write_reference_ppm_json(pairs, path)
    text = path.read_text()
    assert text.startswith('[\n    {\n        "prompt": ')
    written = json.loads(text)
    # sample_rm_data.py's key order.
    assert [list(r) for r in written] == [list(REFERENCE_PPM_FIELDS)] * len(pairs)
    check_reference_ppm(written)
    for pair, rec in zip(pairs, written):
        assert rec["prompt"] == REFERENCE_SFT_SOURCE.format(query=pair.question) + pair.prefix_steps
        assert (rec["pos"], rec["neg"]) == (pair.pos, pair.neg)
        assert (rec["pos_count"], rec["neg_count"]) == (pair.pos_count, pair.neg_count)
    assert read_reference_ppm(path) == written


def test_reference_fixtures_pass_the_schema_and_our_trainers_checks(files):
    sft = read_reference_sft(files["sft.json"])
    pairs = read_reference_ppm(files["rm.json"])
    for name, rows, check in (("sft.json", sft, D.check_sft_rows),
                              ("rm.json", pairs, D.check_pair_rows)):
        assert D.read_jsonl(files[name]) == rows        # a JSON list, read as it is
        check(rows, files[name])
    # A reference SFT record gets exactly the reference's training prompt.
    prompt, response = D.sft_prompt_response(sft[0])
    assert prompt == REFERENCE_SFT_SOURCE.format(query=sft[0]["query"])
    assert response == sft[0]["response"]


def test_round_trip_our_rows_and_their_files_tokenize_identically(files, tmp_path, tokenizer):
    records = load_tree_records(files["reference_trees.jsonl"])
    rows = build_sft_rows(records, grader=exact)
    write_reference_sft_json(rows, tmp_path / "sft.json")
    theirs = D.read_jsonl(tmp_path / "sft.json")
    ours_ex, _ = D.tokenize_sft(rows, tokenizer, 256)
    theirs_ex, _ = D.tokenize_sft(theirs, tokenizer, 256)
    assert [(list(e.ids), e.loss_start) for e in ours_ex] == \
        [(list(e.ids), e.loss_start) for e in theirs_ex]

    pairs = build_ppm_pairs(records)
    write_reference_ppm_json(pairs, tmp_path / "rm.json")
    ours_p = D.tokenize_pairs(to_rows(pairs), tokenizer, 256)
    theirs_p = D.tokenize_pairs(D.read_jsonl(tmp_path / "rm.json"), tokenizer, 256)
    assert [(list(p.pos), list(p.neg), p.weight) for p in ours_p] == \
        [(list(p.pos), list(p.neg), p.weight) for p in theirs_p]


@pytest.mark.parametrize("record, needle", [
    ({"query": "q"}, "missing ['response']"),
    ({"query": "q", "response": "r", "question": "q"}, "unexpected ['question']"),
    ({"query": 3, "response": "r"}, "'query' must be str"),
])
def test_sft_schema_errors_name_record_and_field(record, needle):
    with pytest.raises(ReferenceFormatError, match=r"sft\.json record 1: .*" + _re(needle)):
        check_reference_sft([{"query": "q", "response": "r"}, record], "sft.json")


@pytest.mark.parametrize("change, needle", [
    ({"pos_count": True}, "'pos_count' must be int"),
    ({"neg_count": -1}, "'neg_count' must be >= 0"),
    ({"pos_count": 0, "neg_count": 0}, "both 0"),
])
def test_pair_schema_errors_name_record_and_field(change, needle):
    good = {"prompt": "p", "neg": "n", "pos": "q", "neg_count": 1, "pos_count": 1}
    with pytest.raises(ReferenceFormatError, match=r"rm\.json record 0: .*" + _re(needle)):
        check_reference_ppm([{**good, **change}], "rm.json")


def _re(text):
    import re
    return re.escape(text)


def tiny_cfg(tokenizer):
    return Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                       tie_word_embeddings=True)


def one_device():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def test_reference_sft_fixture_trains(files, tokenizer, tmp_path):
    config = load_config("train_sft")
    config.max_steps = 2
    config.log_every = 1
    config.micro_batch_size = config.batch_size = 8     # one compile of a one-micro-step step
    config.checkpoint.save_every = 1000
    model = Qwen2ForCausalLM(tiny_cfg(tokenizer), rngs=nnx.Rngs(0))
    rows = D.read_jsonl(files["sft.json"])
    train_sft(config, model, rows, tokenizer, tmp_path, mesh=one_device(), progress=False)
    losses = [m["loss"] for m in read_metrics(tmp_path / "metrics_sft.jsonl") if "loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert load_pretrained(tmp_path / "policy", dtype="float32").cfg.vocab_size == len(tokenizer)


def test_reference_pair_fixture_trains(files, tokenizer, tmp_path):
    config = load_config("train_ppm")
    config.max_steps = 2
    config.log_every = 1
    config.micro_batch_size = config.batch_size = 8
    config.sum_group_size = 8
    config.holdout_fraction = 0.0
    config.checkpoint.save_every = 1000
    model = Qwen2PPM.from_policy(Qwen2ForCausalLM(tiny_cfg(tokenizer), rngs=nnx.Rngs(0)), seed=1)
    rows = D.read_jsonl(files["rm.json"])
    assert rows[-1]["prompt"] == "<|user|>:\nWhat is 5 times 6?"     # a whole-trajectory pair
    train_ppm(config, model, rows, tokenizer, tmp_path, mesh=one_device(), progress=False)
    losses = [m["loss"] for m in read_metrics(tmp_path / "metrics_ppm.jsonl") if "loss" in m]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert os.path.isfile(tmp_path / "ppm" / "value_head.safetensors")
    load_ppm(tmp_path / "ppm", dtype="float32")
    assert build_prompt("x") == REFERENCE_SFT_SOURCE.format(query="x")

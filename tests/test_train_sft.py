"""Policy SFT: loss masking and batching rules, and a tiny model that learns its traces."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rstar_jax.models import (Qwen2Config, Qwen2ForCausalLM, forward_logits, make_mesh,
                              params_of)
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.step_format import build_prompt
from rstar_jax.train import data as D
from rstar_jax.train import train_sft
from rstar_jax.train.metrics import read_metrics
from train_fixtures import load_config


TRACES = [
    ("What is 2 + 3?", "<code>\nx = 2 + 3\nprint(x)\n<end_of_code>\n<output>5<end_of_output>"
     "\n<answer>\\boxed{5}<end_of_answer>"),
    ("What is 4 * 6?", "<code>\nprint(4 * 6)\n<end_of_code>\n<output>24<end_of_output>"
     "\n<answer>\\boxed{24}<end_of_answer>"),
    ("Solve 2x = 8.", "<code>\n# Step 1: divide\nprint(8 // 2)\n<end_of_code>\n"
     "<output>4<end_of_output>\n<answer>\\boxed{4}<end_of_answer>"),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def one_device_mesh():
    return make_mesh(1, 1, 1, devices=jax.devices()[:1])


def tiny_cfg(tokenizer):
    return Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)


def test_loss_mask_covers_exactly_response_and_eos(tokenizer):
    rows = [{"prompt": build_prompt(q), "response": r} for q, r in TRACES[:2]]
    examples, dropped = D.tokenize_sft(rows, tokenizer, 512)
    assert dropped == 0
    plan = D.BatchPlan(2, 4, 2, 1, 0)
    batch = D.sft_batch(examples, np.arange(2), plan, (128, 256), pad_id=0)
    ids, lm = batch["input_ids"].reshape(4, -1), batch["loss_mask"].reshape(4, -1)
    for r, (q, resp) in enumerate(TRACES[:2]):
        # Trained targets are ids[t+1] where loss_mask[t]: decoded, they are response+eos.
        targets = ids[r, 1:][lm[r, :-1] == 1]
        assert tokenizer.decode(targets) == resp + tokenizer.eos_token
    assert lm[2:].sum() == 0  # padding rows of the last (partial) batch train nothing


def test_truncation_and_rows_without_response_tokens_are_dropped(tokenizer):
    prompt = build_prompt("What is 2 + 3?")
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    rows = [{"prompt": prompt, "response": "x" * 50}, {"query": "What is 2 + 3?", "response": "5"}]
    examples, dropped = D.tokenize_sft(rows, tokenizer, n_prompt + 3)
    assert dropped == 0 and all(len(e.ids) <= n_prompt + 3 for e in examples)
    examples, dropped = D.tokenize_sft(rows, tokenizer, n_prompt)
    assert dropped == 2 and examples == []


def test_batch_plan_covers_every_row_once_per_epoch():
    plan = D.BatchPlan(num_rows=10, batch_size=4, micro_batch_size=2, epochs=2, seed=3)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6 and plan.accum_steps == 2
    for epoch in range(2):
        seen = np.concatenate([plan.rows_of_step(epoch * 3 + k) for k in range(3)])
        assert sorted(seen) == list(range(10))
    assert not np.array_equal(plan.rows_of_step(0), plan.rows_of_step(3))  # reshuffled
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        D.BatchPlan(10, 5, 2, 1, 0)


def test_bucket_length_picks_smallest_and_names_overflow():
    assert D.bucket_length(5, (64, 32)) == 32
    with pytest.raises(ValueError, match="largest bucket 64"):
        D.bucket_length(65, (32, 64))


def greedy_reproduces(params, cfg, tokenizer, prompt, response):
    """Greedy decode (argmax over a full forward, no cache) and compare with the trace."""
    target = tokenizer(prompt + response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    t = 128
    fwd = jax.jit(lambda p, ids, m: forward_logits(p, cfg, ids, m))
    ids = np.zeros((1, t), np.int32)
    ids[0, :n_prompt] = target[:n_prompt]
    for pos in range(n_prompt, len(target)):
        mask = (np.arange(t) < pos).astype(np.int32)[None]
        ids[0, pos] = int(jnp.argmax(fwd(params, jnp.asarray(ids), jnp.asarray(mask))[0, pos - 1]))
    return list(ids[0, :len(target)]) == list(target)


def test_sft_loss_falls_and_model_reproduces_traces_greedily(tokenizer, tmp_path):
    cfg = tiny_cfg(tokenizer)
    model = Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))
    rows = [{"prompt": build_prompt(q), "response": r} for q, r in TRACES]
    config = load_config("train_sft")
    config.epochs = 150  # 3 rows, batch 8: one step per epoch
    config.checkpoint.save_every = 1000  # only the final save; resume has its own test
    train_sft(config, model, rows, tokenizer, tmp_path, mesh=one_device_mesh(), progress=False)
    log = [m for m in read_metrics(tmp_path / "metrics_sft.jsonl") if "loss" in m]
    assert log[0]["loss"] > 3.0 and log[-1]["loss"] < 0.05, (log[0]["loss"], log[-1]["loss"])
    params = params_of(model)
    for q, r in TRACES:
        assert greedy_reproduces(params, cfg, tokenizer, build_prompt(q), r), q
    # The exported policy is a loadable HF directory holding the trained weights.
    from rstar_jax.models import load_pretrained
    reloaded = load_pretrained(tmp_path / "policy", dtype="float32")
    np.testing.assert_array_equal(np.asarray(params_of(reloaded)["embed"]),
                                  np.asarray(params["embed"]))

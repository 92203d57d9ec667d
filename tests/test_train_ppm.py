"""PPM training: the reference's pair weights and loss, and a tiny PPM that learns to rank."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rstar_jax.models import (Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, forward_values, load_ppm,
                              make_mesh, params_of)
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.step_format import build_prompt
from rstar_jax.train import data as D
from rstar_jax.train import steps as S
from rstar_jax.train import train_ppm
from rstar_jax.train.ppm import ppm_task
from rstar_jax.train.metrics import read_metrics
from train_fixtures import load_config



@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_pair_weight_is_reference_factor_with_fallback():
    assert D.pair_weight(2, 2) == 0.25
    assert D.pair_weight(1, 4) == 0.25
    assert D.pair_weight(0, 3) == pytest.approx(1 / 3)  # 1/(pos+neg) when one count is 0
    with pytest.raises(ValueError, match="not both 0"):
        D.pair_weight(0, 0)


def test_holdout_is_seeded_five_percent():
    train, held = D.split_holdout(100, 0.05, 42)
    assert len(held) == 5 and len(train) == 95 and not set(train) & set(held)
    assert np.array_equal(held, D.split_holdout(100, 0.05, 42)[1])


def tiny_ppm(vocab):
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    return Qwen2PPM.from_policy(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)), seed=1)


def test_ppm_loss_matches_hand_computed_bradley_terry(tokenizer):
    """Sum of -logsigmoid(r_pos - r_neg) / (pos*neg) with values read at the last real token."""
    model = tiny_ppm(len(tokenizer))
    params = params_of(model)
    rows = [{"prompt": "<|user|>:\nq\n", "pos": "good step", "neg": "a much longer bad step",
             "pos_count": 2, "neg_count": 2},
            {"prompt": "<|user|>:\nr\n", "pos": "x = 1", "neg": "y", "pos_count": 0,
             "neg_count": 3}]
    pairs = D.tokenize_pairs(rows, tokenizer, 64)
    plan = D.BatchPlan(2, 2, 2, 1, 0)
    batch = jax.tree.map(lambda x: x[0], D.pair_batch(pairs, np.arange(2), plan, (64,), 0))
    num, aux = S.ppm_loss(params, batch, None, cfg=model.cfg, reduction="sum", sum_group_size=1)
    values = jax.jit(lambda p, ids: forward_values(p, model.cfg, ids))
    expected = 0.0
    for p in pairs:  # unpadded, one sequence at a time
        r = [float(values(params, jnp.asarray(s)[None])[0, -1]) for s in (p.pos, p.neg)]
        expected += -np.log(1 / (1 + np.exp(-(r[0] - r[1])))) * p.weight
    np.testing.assert_allclose(float(num), expected, rtol=1e-5)
    assert float(aux["denominator"]) == 2.0 and float(aux["pairs"]) == 2.0


def synthetic_pairs(n, seed):
    """Which of two step styles is preferred depends on a word in the question, so the
    untrained model ranks about half the pairs right and learning must read the prompt."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.integers(1, 99, 2)
        code = f"<code>\nx = {a} + {b}\nprint(x)\n<end_of_step>"
        words = f"# Step 1: add {a} and {b} by hand<end_of_step>"
        want_code = i % 2 == 0
        rows.append({"prompt": build_prompt(f"Use {'code' if want_code else 'words'}: {a} + {b}?"),
                     "pos": code if want_code else words, "neg": words if want_code else code,
                     "pos_count": int(rng.integers(1, 3)), "neg_count": int(rng.integers(1, 3))})
    return rows


def test_ppm_heldout_pairwise_accuracy_rises(tokenizer, tmp_path):
    model = tiny_ppm(len(tokenizer))
    config = load_config("train_ppm")
    config.checkpoint.save_every = 1000
    config.eval_every = 4
    rows = synthetic_pairs(80, 0)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    task = ppm_task(config, model.cfg, rows, tokenizer, mesh)
    before = task.evaluate(params_of(model))
    train_ppm(config, model, rows, tokenizer, tmp_path,
              mesh=mesh, progress=False)
    evals = [m for m in read_metrics(tmp_path / "metrics_ppm.jsonl") if "eval_accuracy" in m]
    print("held-out accuracy before:", before["eval_accuracy"], "per eval:",
          [round(e["eval_accuracy"], 3) for e in evals])
    assert 0.25 <= before["eval_accuracy"] <= 0.75
    assert evals[0]["eval_pairs"] == 16  # 20% of 80 held out (tiny config)
    assert evals[-1]["eval_accuracy"] >= 0.9, [e["eval_accuracy"] for e in evals]
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    # The export is a PPM directory whose value head ranks like the trained params.
    reloaded = load_ppm(tmp_path / "ppm", dtype="float32")
    np.testing.assert_array_equal(np.asarray(params_of(reloaded)["v_head"]["kernel"]),
                                  np.asarray(params_of(model)["v_head"]["kernel"]))

"""Step tags become single special tokens; embeddings grow with mean-initialised rows."""

import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, load_tokenizer, resize_embeddings, step_token_ids
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.step_format import SPECIAL_TOKENS


def _plain_tokenizer_dir(tmp_path):
    """A word-level tokenizer without any step tag, saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", "x", "=", "3", "print", "(", ")"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>").save_pretrained(
        str(tmp_path))
    return tmp_path, len(vocab)


def test_step_tags_are_added_as_single_special_tokens(tmp_path):
    path, base = _plain_tokenizer_dir(tmp_path)
    tok = load_tokenizer(path)
    ids = step_token_ids(tok)
    assert sorted(ids) == sorted(SPECIAL_TOKENS)
    assert all(i >= base for i in ids.values())
    text = "x = 3<end_of_step>"
    assert tok.encode(text, add_special_tokens=False)[-1] == ids["<end_of_step>"]


def test_step_token_ids_reject_tokenizer_without_tags(tmp_path):
    path, _ = _plain_tokenizer_dir(tmp_path)
    with pytest.raises(ValueError, match="not a single token"):
        step_token_ids(load_tokenizer(path, add_step_tokens=False))


@pytest.mark.parametrize("tie", [True, False])
def test_resize_grows_embeddings_with_mean_rows_and_keeps_old_logits(tmp_path, tie):
    path, base = _plain_tokenizer_dir(tmp_path)
    tok = load_tokenizer(path)
    cfg = Qwen2Config(vocab_size=base, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    model = Qwen2ForCausalLM(cfg)
    old_embed = np.asarray(model.embed[...])
    ids = jnp.array([[2, 3, 4, 5]])
    old_logits = np.asarray(model.logits(ids))
    resize_embeddings(model, tok)
    assert model.cfg.vocab_size == len(tok) == base + len(SPECIAL_TOKENS)
    new_embed = np.asarray(model.embed[...])
    np.testing.assert_array_equal(new_embed[:base], old_embed)
    np.testing.assert_allclose(new_embed[base:], np.broadcast_to(old_embed.mean(0), (len(SPECIAL_TOKENS), 16)),
                               rtol=1e-6)
    new_logits = np.asarray(model.logits(ids))
    np.testing.assert_allclose(new_logits[..., :base], old_logits, atol=1e-6)


def test_tiny_tokenizer_round_trips_step_text(tmp_path):
    tok = build_tiny_tokenizer(tmp_path)
    text = "<code>\n# Step 1: add\nx = 3 + 4\nprint(x)\n<end_of_step>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert ids[0] == step_token_ids(tok)["<code>"]
    assert load_tokenizer(tmp_path).encode(text, add_special_tokens=False) == ids


@pytest.mark.parametrize("kind", ["tiny", "plain", "truncating"])
def test_encode_many_equals_encode_per_text(tmp_path, kind):
    """The batched backend path gives exactly the ids of `tokenizer.encode` per text,
    step tags and empty texts included; a backend with truncation set falls back."""
    from rstar_jax.models.tokenizer import encode_many
    if kind == "plain":
        tok = load_tokenizer(_plain_tokenizer_dir(tmp_path)[0])
    else:
        tok = build_tiny_tokenizer(tmp_path, split_digits=True)
    if kind == "truncating":
        tok._tokenizer.enable_truncation(max_length=4)
    texts = ["What is 17 + 25 - 3?\n<code>\n# Step 1: add\nx = 17 + 25\nprint(x)\n<end_of_step>",
             "", "x = 3<end_of_code><output>3<end_of_output>", "print ( x )\n\n<answer>42</answer>",
             "  leading spaces and\ttabs ", "<end_of_answer>"]
    got = encode_many(tok, texts)     # first: `tokenizer.encode` clears backend truncation
    want = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert got == want
    assert max(len(w) for w in want) > 4
    assert encode_many(tok, []) == []

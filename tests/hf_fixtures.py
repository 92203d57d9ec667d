"""Tiny random Hugging Face Qwen2 checkpoints written by PyTorch transformers, for parity tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
            rope_theta=10000.0, rms_norm_eps=1e-6)


def make_hf_checkpoint(path: str, *, tie: bool, max_shard_size: str | None = None,
                       seed: int = 0, **overrides) -> "transformers.Qwen2ForCausalLM":
    """A randomly initialised torch Qwen2ForCausalLM saved to `path` (fp32 safetensors).

    Every tensor, biases and norms included, is random so a mapping mistake cannot hide.
    """
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(**{**TINY, **overrides}, tie_word_embeddings=tie)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.05 * torch.randn_like(p))
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return model


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids),
                    attention_mask=None if mask is None else torch.tensor(mask))
    return out.logits.float().numpy()


def edit_config(path: str, **changes) -> None:
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        d = json.load(f)
    d.update(changes)
    with open(cfg_path, "w") as f:
        json.dump(d, f)


def random_batch(batch: int, length: int, vocab: int, seed: int = 0):
    """Token ids [B, T] and a right-padded mask with rows of different lengths."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(batch, length)).astype(np.int64)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    return ids, mask

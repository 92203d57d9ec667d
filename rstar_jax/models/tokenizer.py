"""Tokenizer from a local checkpoint directory, with the reference's step tags as special tokens."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax.models.qwen2 import Qwen2ForCausalLM, Qwen2PPM
from rstar_jax.step_format import SPECIAL_TOKENS


def load_tokenizer(path: str | os.PathLike, *, add_step_tokens: bool = True):
    """`AutoTokenizer` from `path` (no hub access), with the step tags added as special tokens."""
    from transformers import AutoTokenizer
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    if _declares_generic_class(path):
        # A tokenizer saved as the generic fast class (e.g. the tiny tokenizer beside an
        # exported policy): AutoTokenizer would pick the class of config.json's model_type
        # (Qwen2Tokenizer), whose own pre-tokenizer splits digits and so changes the ids.
        from transformers import PreTrainedTokenizerFast
        tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if add_step_tokens:
        missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing},
                                   replace_extra_special_tokens=False)
    return tok


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _declares_generic_class(path: str) -> bool:
    """tokenizer_config.json names the generic fast class and tokenizer.json is present."""
    import json
    cfg = os.path.join(path, "tokenizer_config.json")
    if not (os.path.isfile(cfg) and os.path.isfile(os.path.join(path, "tokenizer.json"))):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            declared = json.load(f).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return False
    return declared in _GENERIC_TOKENIZER_CLASSES


def encode_many(tokenizer, texts) -> list[list[int]]:
    """Token ids of each text without special tokens added: `tokenizer.encode` per text.

    A fast tokenizer without truncation or padding set encodes the whole list in one call
    to its Rust backend, which skips transformers' per-call Python work (0.47 -> 0.33 ms
    a search prompt with the tiny tokenizer on this CPU); the ids are the same.
    """
    texts = list(texts)
    backend = getattr(tokenizer, "_tokenizer", None)
    if (texts and backend is not None and hasattr(backend, "encode_batch")
            and getattr(backend, "truncation", None) is None
            and getattr(backend, "padding", None) is None):
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def step_token_ids(tokenizer) -> dict[str, int]:
    """Token id of every step tag; each must be a single token for stop handling."""
    ids = {}
    for t in SPECIAL_TOKENS:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"step tag {t!r} is not a single token ({enc}); call load_tokenizer "
                             "with add_step_tokens=True")
        ids[t] = enc[0]
    return ids


def resize_embeddings(model: Qwen2ForCausalLM | Qwen2PPM, tokenizer, *,
                      original_size: int | None = None) -> None:
    """Make room for the tokenizer's added tokens; new rows start at the mean row.

    Qwen checkpoints pad the vocabulary (151936 rows for ~151665 tokens), so added tokens
    usually fit without growing; the rows they take are still set to the mean of the
    trained rows (rows [0, original_size)), as the reference does for new tokens, so that
    untrained padding rows never start the new tags' embeddings. The matrix grows only
    when the tokenizer is larger than the embedding; it is never shrunk.
    """
    lm = model.backbone if isinstance(model, Qwen2PPM) else model
    added = sorted(i for t, i in tokenizer.get_added_vocab().items() if t in SPECIAL_TOKENS)
    original_size = original_size or (min(added) if added else len(tokenizer))
    new_size = max(lm.cfg.vocab_size, len(tokenizer))

    def resized(matrix: np.ndarray, vocab_axis: int) -> np.ndarray:
        m = np.moveaxis(np.asarray(matrix), vocab_axis, 0)
        mean = m[:original_size].astype(np.float32).mean(axis=0).astype(m.dtype)
        if new_size > m.shape[0]:
            m = np.concatenate([m, np.broadcast_to(mean, (new_size - m.shape[0],) + m.shape[1:])])
        else:
            m = m.copy()
        m[added] = mean
        m[original_size:] = np.where(np.isin(np.arange(original_size, new_size), added)[:, None],
                                     mean, m[original_size:])
        return np.moveaxis(m, 0, vocab_axis)

    lm.embed.set_value(jnp.asarray(resized(lm.embed[...], 0)))
    if not lm.cfg.tie_word_embeddings:
        lm.lm_head.set_value(jnp.asarray(resized(lm.lm_head[...], 1)))
    cfg = lm.cfg.replace(vocab_size=new_size)
    lm.cfg = cfg
    if isinstance(model, Qwen2PPM):
        model.cfg = cfg

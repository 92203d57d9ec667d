"""Host side of training: rows -> token ids -> fixed-shape padded batches.

Nothing here touches a device. Batches are numpy arrays shaped
`[A, M, T]`: A gradient-accumulation micro-steps of M rows each (A * M = the global
batch), padded on the right to one of a few bucket lengths T so that a run compiles
the train step at most once per bucket.

The data order is a pure function of (seed, epoch, step in epoch), so a resumed run
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np

from rstar_jax.step_format import build_prompt


# ------------------------------------------------------------------------------ rows

def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file (a JSON list file is accepted too); errors name file and line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training data file {path} does not exist")
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return list(rows)
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON ({e})") from e
    return rows


def _field(row: dict, name: str, i: int, source: str):
    if name not in row:
        raise KeyError(f"{source} row {i}: missing field {name!r} (has {sorted(row)})")
    return row[name]


def sft_prompt_response(row: dict, i: int = 0, source: str = "SFT data") -> tuple[str, str]:
    """(prompt, response) of an SFT row.

    Our rows (rstar_jax.data.sft_data) carry `prompt`; the reference's records
    (`{"query", "response"}`, §4.2) carry the bare question, which gets our prompt.
    """
    response = _field(row, "response", i, source)
    if "prompt" in row:
        return row["prompt"], response
    if "query" in row or "question" in row:
        return build_prompt(row.get("query", row.get("question"))), response
    raise KeyError(f"{source} row {i}: needs 'prompt' (or 'query'/'question'), has {sorted(row)}")


def check_sft_rows(rows: Sequence, source: str) -> None:
    """Every row is an object with a text `response` and a text prompt (`prompt`, or the
    reference's `query` / a `question`); errors name the file and row."""
    if not rows:
        raise ValueError(f"{source}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source} row {i}: expected a JSON object, got {type(row).__name__}")
        prompt, response = sft_prompt_response(row, i, source)
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ValueError(f"{source} row {i}: prompt/query and response must be strings")


def check_pair_rows(rows: Sequence, source: str) -> None:
    """Every row has text `prompt`, `pos`, `neg` and integer counts (the reference's
    sample_rm_data.py records); errors name the file and row."""
    if not rows:
        raise ValueError(f"{source}: no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{source} row {i}: expected a JSON object, got {type(row).__name__}")
        for name in ("prompt", "pos", "neg"):
            if not isinstance(_field(row, name, i, source), str):
                raise ValueError(f"{source} row {i}: field {name!r} must be a string")
        counts = [_field(row, name, i, source) for name in ("pos_count", "neg_count")]
        if any(isinstance(c, bool) or not isinstance(c, int) for c in counts):
            raise ValueError(f"{source} row {i}: pos_count and neg_count must be integers")
        try:
            pair_weight(*counts)
        except ValueError as e:
            raise ValueError(f"{source} row {i}: {e}") from e


def pair_weight(pos_count: int, neg_count: int) -> float:
    """Reference per-pair loss factor (train/rm.py, §4.5): 1/(pos*neg), or 1/(pos+neg) if one is 0."""
    if pos_count < 0 or neg_count < 0 or pos_count + neg_count == 0:
        raise ValueError(f"pos_count={pos_count}, neg_count={neg_count}: need non-negative "
                         "counts, not both 0")
    if pos_count > 0 and neg_count > 0:
        return 1.0 / (pos_count * neg_count)
    return 1.0 / (pos_count + neg_count)


def fingerprint(rows: Sequence[dict]) -> str:
    """Short content hash, stored in checkpoints so a resume on other data is refused."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True).encode())
    return h.hexdigest()[:16]


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): `fraction` of n held out with a seeded permutation.

    The reference holds out 5% with seed 42 (`train_test_split`, §4.5); at least one row
    is held out whenever fraction > 0 and n > 1.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = 0 if fraction == 0 or n < 2 else max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


# -------------------------------------------------------------------------- tokenize

@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One tokenized SFT row: ids of prompt + response + eos; loss on ids[loss_start:]."""

    ids: np.ndarray     # [n] int32
    loss_start: int     # index of the first response token


@dataclasses.dataclass(frozen=True)
class PairExample:
    """One tokenized PPM pair: prompt+pos and prompt+neg ids and the pair's loss weight."""

    pos: np.ndarray     # [n_pos] int32
    neg: np.ndarray     # [n_neg] int32
    weight: float


def _encode(tokenizer, text: str) -> list[int]:
    # No BOS/EOS insertion: the reference tokenizes raw text (Qwen adds none anyway).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _check_ids(ids: Sequence[int], vocab_size: int | None, what: str):
    if vocab_size is not None and ids and max(ids) >= vocab_size:
        raise ValueError(f"{what}: token id {max(ids)} >= model vocab_size {vocab_size}; the "
                         "tokenizer does not match the model (resize the embeddings)")


def tokenize_sft(rows: Sequence[dict], tokenizer, max_length: int, *,
                 vocab_size: int | None = None) -> tuple[list[SFTExample], int]:
    """Tokenize SFT rows as the reference does (train_SFT.py, §4.4).

    The full text prompt + response + eos is tokenized once and the loss starts after
    the prompt's own token count (the reference masks `len(tokenize(source))` labels);
    sequences are cut on the right at `max_length`. Rows left with no response token
    after the cut are dropped; returns (examples, number dropped).
    """
    if tokenizer.eos_token is None:
        raise ValueError("SFT needs a tokenizer with an eos_token (the target ends with it)")
    examples, dropped = [], 0
    for i, row in enumerate(rows):
        prompt, response = sft_prompt_response(row, i)
        ids = _encode(tokenizer, prompt + response + tokenizer.eos_token)[:max_length]
        start = len(_encode(tokenizer, prompt))
        _check_ids(ids, vocab_size, f"SFT row {i}")
        if start >= len(ids):
            dropped += 1
            continue
        examples.append(SFTExample(np.asarray(ids, np.int32), start))
    return examples, dropped


def tokenize_pairs(rows: Sequence[dict], tokenizer, max_length: int, *,
                   vocab_size: int | None = None) -> list[PairExample]:
    """Tokenize PPM rows `{prompt, pos, neg, pos_count, neg_count}` (train/rm.py, §4.5).

    prompt + pos and prompt + neg are tokenized without special tokens and cut on the
    right at `max_length`, as the reference; the weight is `pair_weight(counts)`.
    """
    out = []
    for i, row in enumerate(rows):
        prompt = _field(row, "prompt", i, "PPM data")
        pos, neg = _field(row, "pos", i, "PPM data"), _field(row, "neg", i, "PPM data")
        try:
            w = pair_weight(int(_field(row, "pos_count", i, "PPM data")),
                            int(_field(row, "neg_count", i, "PPM data")))
        except ValueError as e:
            raise ValueError(f"PPM data row {i}: {e}") from e
        p_ids = _encode(tokenizer, prompt + pos)[:max_length]
        n_ids = _encode(tokenizer, prompt + neg)[:max_length]
        _check_ids(p_ids + n_ids, vocab_size, f"PPM data row {i}")
        if not p_ids or not n_ids:
            raise ValueError(f"PPM data row {i}: empty text after tokenization")
        out.append(PairExample(np.asarray(p_ids, np.int32), np.asarray(n_ids, np.int32), w))
    return out


# --------------------------------------------------------------------------- batches

def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= n (buckets sorted ascending; the last must cover max_length)."""
    for b in sorted(buckets):
        if n <= b:
            return int(b)
    raise ValueError(f"sequence of {n} tokens exceeds the largest bucket {max(buckets)}; "
                     "bucket_lengths must include max_length")


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a permutation that depends only on (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


GROUP_WINDOW = 16   # batches sorted together when grouping by length


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which rows make global batch `step`: epochs of shuffled rows, cut in batches.

    The last batch of an epoch is padded with empty rows (zero loss weight) so every step
    has the same [A, M] shape and no row is dropped (HF's default `drop_last=False`).

    With `lengths` (group by length, as HF's `group_by_length`): each epoch's shuffled
    rows are cut into windows of `GROUP_WINDOW` batches, each window is sorted by row
    length and cut into batches, and the batches are shuffled; every batch then pads to
    a length close to its longest row. Still a pure function of (seed, epoch).
    """

    num_rows: int
    batch_size: int          # global batch, rows (pairs for the PPM) per optimizer step
    micro_batch_size: int    # rows per accumulation micro-step
    epochs: int
    seed: int
    lengths: tuple[int, ...] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.num_rows < 1:
            raise ValueError("no training rows")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of "
                             f"micro_batch_size ({self.micro_batch_size})")

    @property
    def accum_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def steps_per_epoch(self) -> int:
        # Grouping windows hold a whole number of batches, so the count is the same.
        return math.ceil(self.num_rows / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def rows_of_step(self, step: int) -> np.ndarray:
        """Row indices of global batch `step` (fewer than batch_size at an epoch's end)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self.lengths is None:
            return epoch_order(self.num_rows, self.seed, epoch)[k * self.batch_size:
                                                                (k + 1) * self.batch_size]
        return self._grouped_batches(epoch)[k]

    def _grouped_batches(self, epoch: int) -> list[np.ndarray]:
        cache = self.__dict__.setdefault("_grouped", {})
        if epoch not in cache:
            order = epoch_order(self.num_rows, self.seed, epoch)
            lengths = np.asarray(self.lengths)
            window = self.batch_size * GROUP_WINDOW
            batches = []
            for start in range(0, len(order), window):
                part = order[start:start + window]
                part = part[np.argsort(lengths[part], kind="stable")]
                batches += [part[i:i + self.batch_size] for i in range(0, len(part), self.batch_size)]
            perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
            cache.clear()
            cache[epoch] = [batches[i] for i in perm]
        return cache[epoch]

    def epoch_of_step(self, step: int) -> float:
        return step / self.steps_per_epoch


def _pad_rows(seqs: Iterable[np.ndarray], rows: int, length: int, pad_id: int):
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
        mask[r, :len(s)] = 1
    return ids, mask


def sft_batch(examples: Sequence[SFTExample], rows: np.ndarray, plan: BatchPlan,
              buckets: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Global SFT batch `{input_ids, attention_mask, loss_mask}`, each [A, M, T] int32.

    loss_mask[a, m, t] = 1 where token t+1 is a response token, i.e. marks the positions
    whose next-token prediction is trained (the last position never is).
    """
    exs = [examples[i] for i in rows]
    t = bucket_length(max(len(e.ids) for e in exs), buckets)
    ids, mask = _pad_rows((e.ids for e in exs), plan.batch_size, t, pad_id)
    loss = np.zeros_like(mask)
    for r, e in enumerate(exs):
        loss[r, e.loss_start - 1:len(e.ids) - 1] = 1
    shape = (plan.accum_steps, plan.micro_batch_size, t)
    return {"input_ids": ids.reshape(shape), "attention_mask": mask.reshape(shape),
            "loss_mask": loss.reshape(shape)}


def pair_batch(examples: Sequence[PairExample], rows: np.ndarray, plan: BatchPlan,
               buckets: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """Global PPM batch: pos/neg ids and masks [A, M, T] int32 and weight [A, M] float32.

    Padding is on the right, and the value is read at each row's last real token, so
    the bucket length does not change any score (the reference pads to 2048).
    """
    exs = [examples[i] for i in rows]
    t = bucket_length(max(max(len(e.pos), len(e.neg)) for e in exs), buckets)
    pos_ids, pos_mask = _pad_rows((e.pos for e in exs), plan.batch_size, t, pad_id)
    neg_ids, neg_mask = _pad_rows((e.neg for e in exs), plan.batch_size, t, pad_id)
    # Empty padding rows: one real token so the last-token index is defined, weight 0.
    pos_mask[len(exs):, 0] = 1
    neg_mask[len(exs):, 0] = 1
    weight = np.zeros((plan.batch_size,), np.float32)
    weight[:len(exs)] = [e.weight for e in exs]
    valid = np.zeros((plan.batch_size,), np.float32)
    valid[:len(exs)] = 1
    a, m = plan.accum_steps, plan.micro_batch_size
    return {"pos_ids": pos_ids.reshape(a, m, t), "pos_mask": pos_mask.reshape(a, m, t),
            "neg_ids": neg_ids.reshape(a, m, t), "neg_mask": neg_mask.reshape(a, m, t),
            "weight": weight.reshape(a, m), "valid": valid.reshape(a, m)}

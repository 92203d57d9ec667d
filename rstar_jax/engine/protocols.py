"""The search-facing protocols of DESIGN.md on top of the engine: a proposer and a scorer.

proposer.propose(prompts, num_samples, temperature) -> list[list[str]]: each proposal is
one step's text ending with the stop tag it stopped on (the reference re-appends vLLM's
stop string, rstar_reference §2.2); a step that hit EOS or the token limit has no tag.
scorer.score(prompts) -> list[float]: PPM tanh(v / 5) at each prompt's last token.
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Sequence

import jax
import numpy as np

from rstar_jax.engine.scheduler import Completion, GenerationEngine, Request, pow2_at_least
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import forward_scores
from rstar_jax.models.tokenizer import encode_many, step_token_ids
from rstar_jax.step_format import STOP_TAGS


def stop_token_ids(tokenizer, tags: Sequence[str] = STOP_TAGS) -> list[int]:
    """Token ids of the stop tags; each must be one special token of the tokenizer."""
    ids = step_token_ids(tokenizer)
    missing = [t for t in tags if t not in ids]
    if missing:
        raise ValueError(f"stop tags {missing} are not step tokens of the tokenizer")
    return [ids[t] for t in tags]


class EngineProposer:
    """Proposes next steps with a GenerationEngine; counts generated tokens for progress bars.

    stop_tags: the step tags this proposer's samples stop at (None = the engine's stop
    ids); they travel with each request, so proposers with different tags can share one
    engine.

    Seeds are keyed by the prompt: the n-th request for a given prompt text gets the
    stream derived from (seed, prompt, n). A problem's tree therefore does not depend on
    which other problems are searched with it, in what chunks, or whether the run was
    interrupted and resumed; repeated expansions of one prompt still differ, and a rerun
    with the same seed repeats exactly (the reference fixes vLLM's seed to 0 for every
    run, rstar_reference §2.2).
    """

    def __init__(self, engine: GenerationEngine, tokenizer, *, max_new_tokens: int = 2048,
                 top_p: float = 1.0, top_k: int = -1, seed: int = 0,
                 stop_tags: Sequence[str] | None = None):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_new_tokens, self.top_p, self.top_k, self.seed = max_new_tokens, top_p, top_k, seed
        self.stop_ids = None if stop_tags is None else tuple(stop_token_ids(tokenizer, stop_tags))
        self.eos_id = tokenizer.eos_token_id
        self.tokens_generated = 0
        self.prompt_tokens = 0
        self._seen: dict[bytes, int] = {}     # prompt digest -> requests made for it
        self._encoded: dict[str, list[int]] = {}

    def _encode(self, prompt: str) -> list[int]:
        ids = self._encoded.pop(prompt, None)
        return ids if ids is not None else self.tokenizer.encode(prompt, add_special_tokens=False)

    def fits(self, prompts: Sequence[str]) -> list[bool]:
        """Whether each prompt leaves room in the engine's cache for at least one token.

        The search sets aside a node whose prompt no longer fits instead of failing.
        """
        out = []
        for p, ids in zip(prompts, encode_many(self.tokenizer, prompts)):
            self._encoded[p] = ids      # complete() reuses it (the search asks, then sends)
            out.append(0 < len(ids) < self.engine.max_len)
        return out

    def _seed_for(self, prompt: str) -> int:
        digest = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        n = self._seen.get(digest, 0)
        self._seen[digest] = n + 1
        mix = hashlib.blake2b(b"%d:%d:" % (self.seed, n) + digest, digest_size=4).digest()
        return int.from_bytes(mix, "little") & 0x7FFFFFFF

    def complete(self, prompts: Sequence[str], num_samples: int,
                 temperature: float) -> list[list[Completion]]:
        """Completions with text, token ids and stop reason."""
        missing = [p for p in prompts if p not in self._encoded]
        self._encoded.update(zip(missing, encode_many(self.tokenizer, missing)))
        requests = []
        for p in prompts:
            ids = self._encode(p)
            self.prompt_tokens += len(ids)
            requests.append(Request(ids, num_samples=num_samples,
                                    max_new_tokens=self.max_new_tokens,
                                    temperature=float(temperature), top_p=self.top_p,
                                    top_k=self.top_k, seed=self._seed_for(p),
                                    stop_ids=self.stop_ids))
        self._encoded.clear()
        results = self.engine.generate(requests)
        for samples in results:
            for c in samples:
                self.tokens_generated += len(c.token_ids)
                ids = c.token_ids
                if c.stop_reason == "eos":
                    ids = ids[:-1]    # as vLLM: EOS ends the text but is not part of it
                c.text = self.tokenizer.decode(ids, skip_special_tokens=False)
        return results

    def propose(self, prompts: Sequence[str], num_samples: int,
                temperature: float) -> list[list[str]]:
        return [[c.text for c in samples]
                for samples in self.complete(prompts, num_samples, temperature)]


class EngineScorer:
    """PPM scores of whole prompts, in fixed-size batches bucketed by padded length.

    Lengths are padded to powers of two (>= min_len), so at most log2(max_len) shapes
    compile. Prompts longer than max_len keep their last max_len tokens: the scored step
    sits at the end, and the reference's head truncation can cut it off (vllm #10794).

    prefix_reuse: prompts that share a prefix of >= min_prefix tokens (after truncation,
    so the result is that of the truncated prompt) are scored by encoding the prefix once
    and only each prompt's own tail against its keys and values (prefix_scoring.py); the
    K children of one node, which MCTS scores together, share question + steps so far.
    Prompts that share nothing are re-encoded whole. False always re-encodes whole (the
    baseline benchmarks and tests compare against). group_size: 0 sizes each prefix call
    to its groups; k > 0 gives every call k children per group (larger sibling sets split
    over the same prefix) and a power-of-two number of groups up to batch_size // k, so
    few shapes compile (`prefix_scoring.pack_groups`). `stats`
    counts prompts and tokens encoded by each path.
    """

    def __init__(self, ppm_params: dict, cfg: Qwen2Config, tokenizer, *, batch_size: int = 64,
                 min_len: int = 64, max_len: int = 4096, mesh=None, rules: Mapping | None = None,
                 prefix_reuse: bool = True, min_prefix: int = 16, group_size: int = 0):
        from rstar_jax.engine import prefix_scoring
        self._groups = prefix_scoring
        self.cfg, self.tokenizer = cfg, tokenizer
        self.batch_size, self.min_len, self.max_len = batch_size, min_len, max_len
        self.prefix_reuse, self.min_prefix = prefix_reuse, max(1, min_prefix)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
            raise ValueError(f"scorer: group_size must be an integer >= 0, got {group_size!r}")
        self.group_size = min(group_size, batch_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.stats = dict(prefix_groups=0, prefix_prompts=0, prefix_tokens=0, full_prompts=0,
                          full_tokens=0)
        self._rows_sharding = None
        if mesh is not None:
            from rstar_jax.models.sharding import batch_sharding, shard_params
            self.params = shard_params(ppm_params, mesh, rules)
            self._rows_sharding = batch_sharding(mesh, 2, rules, batch_size)
        else:
            self.params = ppm_params
        rules_key = None if rules is None else tuple(sorted(rules.items()))
        key = (cfg, mesh, rules_key, batch_size)
        if key not in EngineScorer._JITS:
            # one compile per shape for every scorer of a model (each round, each
            # benchmark path makes a new scorer; a new jit of a fresh lambda recompiles)
            EngineScorer._JITS[key] = self._jit(cfg, self.params, mesh, rules, batch_size)
        self._fn, self._prefix_fn = EngineScorer._JITS[key]

    _JITS: dict = {}

    @staticmethod
    def _jit(cfg, params, mesh, rules, batch_size):
        """(full re-encode, prefix scoring) jitted for this model and mesh."""
        import functools
        from jax.sharding import NamedSharding, PartitionSpec
        from rstar_jax.engine import prefix_scoring
        score_fn = functools.partial(prefix_scoring.prefix_scores, cfg=cfg)

        def prefix(p, prefix_ids, prefix_len, child_ids, child_len):
            return score_fn(p, prefix_ids=prefix_ids, prefix_len=prefix_len,
                            child_ids=child_ids, child_len=child_len)
        if mesh is None:
            return (jax.jit(lambda p, ids, mask: forward_scores(p, cfg, ids, mask)),
                    jax.jit(prefix))
        from rstar_jax.models.forward import jit_scores
        from rstar_jax.models.sharding import param_shardings
        # the group arrays are small and their leading axis varies per call:
        # replicated, while the weights stay sharded as the full path has them
        repl = NamedSharding(mesh, PartitionSpec())
        return (jit_scores(cfg, params, mesh, rules, batch_size),
                jax.jit(prefix, in_shardings=(param_shardings(params, mesh, rules),) + (repl,) * 4,
                        out_shardings=repl))

    def score_ids(self, ids: Sequence[Sequence[int]]) -> list[float]:
        ids = [list(x)[-self.max_len:] for x in ids]
        if any(len(x) == 0 for x in ids):
            raise ValueError("scorer: a prompt tokenized to zero tokens")
        out = np.zeros(len(ids), np.float32)
        whole = list(range(len(ids)))
        if self.prefix_reuse and len(ids) > 1:
            groups = self._groups.group_by_prefix(ids, self.min_prefix, self.batch_size)
            shared = [g for g in groups if len(g.members) > 1]
            whole = sorted(i for g in groups if len(g.members) == 1 for i in g.members)
            if shared:
                self._score_groups(ids, shared, out)
        if whole:
            self._score_whole(ids, whole, out)
        return out.tolist()

    def _score_groups(self, ids: list[list[int]], groups: list, out: np.ndarray) -> None:
        packs = self._groups.pack_groups(
            ids, groups, max_rows=self.batch_size, min_prefix_bucket=self.min_len,
            min_child_bucket=8, pad_id=self.pad_id, group_size=self.group_size)
        for pk in packs:
            scores = np.asarray(jax.device_get(self._prefix_fn(
                self.params, pk.prefix_ids, pk.prefix_len, pk.child_ids, pk.child_len)))
            real = pk.targets >= 0
            out[pk.targets[real]] = scores[real]
        self.stats["prefix_groups"] += len(groups)
        self.stats["prefix_prompts"] += sum(len(g.members) for g in groups)
        self.stats["prefix_tokens"] += sum(
            g.prefix_len + sum(len(ids[m]) - g.prefix_len for m in g.members) for g in groups)

    def _score_whole(self, ids: list[list[int]], which: list[int], out: np.ndarray) -> None:
        order = sorted(which, key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start: start + self.batch_size]
            t = min(pow2_at_least(max(len(ids[i]) for i in chunk), self.min_len),
                    pow2_at_least(self.max_len, self.min_len))
            tokens = np.full((self.batch_size, t), self.pad_id, np.int32)
            mask = np.zeros((self.batch_size, t), np.int32)
            mask[:, 0] = 1     # padding rows score a single token and are discarded
            for r, i in enumerate(chunk):
                tokens[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            if self._rows_sharding is not None and jax.process_count() > 1:
                # In a multi-process run jit takes only jax.Arrays for sharded inputs, even
                # on this process's own devices.
                tokens, mask = jax.device_put((tokens, mask), self._rows_sharding)
            scores = np.asarray(jax.device_get(self._fn(self.params, tokens, mask)))
            out[chunk] = scores[: len(chunk)]
        self.stats["full_prompts"] += len(which)
        self.stats["full_tokens"] += sum(len(ids[i]) for i in which)

    def score(self, prompts: Sequence[str]) -> list[float]:
        return self.score_ids(encode_many(self.tokenizer, prompts))

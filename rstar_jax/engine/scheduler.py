"""Host side of generation: slots, prefix reuse and continuous batching.

`GenerationEngine.generate(requests)` keeps every KV-cache slot busy across any number of
requests: free slots are refilled between jitted decode chunks. The host only decides
which prompt goes where; all arithmetic is in decode.py.

Prefix reuse. The host mirrors each slot's cached tokens. A new prompt reuses the slot
with the longest common token prefix (MCTS re-sends question + steps so far on every
expansion, so the parent's row usually holds all but the newest step) and only the
suffix is prefilled. The K samples of one prompt are prefilled once and the row is then
copied into K-1 more slots.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rstar_jax.engine import decode
from rstar_jax.engine.decode_attention import check_pallas_shapes, resolve_impl
from rstar_jax.engine.kv_cache import CACHE_AXES, KVCache, copy_rows, init_cache
from rstar_jax.models.config import Qwen2Config, resolve_dtype
from rstar_jax.models.sharding import logical_to_spec, param_shardings


@dataclasses.dataclass
class Request:
    """One prompt (token ids) and how to sample `num_samples` continuations of it."""

    prompt_ids: Sequence[int]
    num_samples: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int = 0
    # Token ids that end this request's samples; None = the engine's stop_token_ids.
    stop_ids: Sequence[int] | None = None


@dataclasses.dataclass
class Completion:
    """One sampled continuation: generated ids (the stop token included) and why it ended.

    stop_reason: "stop" (a stop tag), "eos", "length" (max_new_tokens) or "cache_full".
    """

    token_ids: list[int]
    stop_reason: str
    text: str = ""


# Jitted device functions keyed by (name, model config, static args, mesh, rules), so
# engines over the same model and mesh (tests, re-created proposers) compile once.
# Bounded: a long run builds engines over many configs (every round's policy shapes);
# the oldest entries go first.
_JIT_CACHE: dict = {}
_JIT_CACHE_SIZE = 256

# Most stop ids one request may carry: the state holds a fixed [S, M] table.
MAX_STOP_IDS = 8


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def pow2_at_least(n: int, floor: int) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


@dataclasses.dataclass
class _Group:
    """Samples of one request started in one admission round."""

    request_index: int
    prompt: np.ndarray          # [n] token ids
    num_samples: int            # samples to start now
    request: Request


@dataclasses.dataclass
class _Placement:
    """Where a group goes: its prefill slot, the cached prefix it reuses, its forks."""

    group: _Group
    source: int                 # slot whose cached prefix is reused, -1 for none
    reuse: int                  # tokens of that prefix reused
    slot: int                   # the slot prefilled with the prompt
    forks: list[int] = dataclasses.field(default_factory=list)   # slots of the other samples


class GenerationEngine:
    """Slot-based KV-cache generation for one policy.

    Args:
      params: policy parameters (`params_of(model)`), placed or not.
      cfg: model config.
      slots: concurrent sequences S; max_len: cache length T per slot.
      capacity: most tokens one request may generate (the output buffer width C).
      stop_token_ids: ids that end a step (the step tags); eos_token_id: None for none.
      steps_per_call: decode steps per jitted call.
      kv_bucket, prefill_len_bucket, prefill_batch: static-shape buckets (configs/engine.py).
      mesh, rules: shard slots over (data, fsdp) and KV heads over tensor when given.
      decode_attention: "xla" (read each decode chunk's kv bucket), "pallas" (the fused
        kernel of decode_attention.py: each slot's row in place up to its own length; one
        decode compile, no bucket; interpret mode on CPU) or "auto" (pallas on GPU where
        the model's shapes suit the kernel, else xla).
      decode_block_k: the Pallas kernel's key block (a power of two dividing max_len).
    """

    def __init__(self, params: dict, cfg: Qwen2Config, *, slots: int, max_len: int,
                 capacity: int, stop_token_ids: Sequence[int] = (),
                 eos_token_id: int | None = None, steps_per_call: int = 32,
                 kv_bucket: int = 512, prefill_len_bucket: int = 128, prefill_batch: int = 16,
                 mesh: Mesh | None = None, rules: Mapping | None = None, dtype=None,
                 decode_attention: str = "xla", decode_block_k: int = 32):
        if slots < 1 or max_len < 2 or capacity < 1 or steps_per_call < 1:
            raise ValueError(f"engine needs slots>=1, max_len>=2, capacity>=1, steps_per_call>=1; "
                             f"got {slots}, {max_len}, {capacity}, {steps_per_call}")
        if max_len > cfg.max_position_embeddings:
            raise ValueError(f"engine max_len {max_len} exceeds the model's "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        self.decode_attention = resolve_impl(decode_attention)
        self.decode_block_k = decode_block_k
        if self.decode_attention == "pallas":   # fail here, not at the first decode
            try:
                check_pallas_shapes(cfg.head_dim, max_len, decode_block_k,
                                    cfg.num_attention_heads // cfg.num_key_value_heads)
            except ValueError:
                if decode_attention != "auto":
                    raise
                self.decode_attention = "xla"   # "auto": the kernel does not fit this model
        self.cfg, self.slots, self.max_len, self.capacity = cfg, slots, max_len, capacity
        self.steps_per_call, self.kv_bucket = steps_per_call, kv_bucket
        self.prefill_len_bucket, self.prefill_batch = prefill_len_bucket, prefill_batch
        if len(stop_token_ids) > MAX_STOP_IDS:
            raise ValueError(f"at most {MAX_STOP_IDS} stop ids, got {len(stop_token_ids)}")
        self.stop_ids = tuple(int(t) for t in stop_token_ids)
        self.eos_id = np.int32(-1 if eos_token_id is None else eos_token_id)
        dtype = resolve_dtype(dtype) if dtype is not None else jax.tree.leaves(params)[0].dtype
        self._build(params, mesh, rules, dtype)
        # host mirror of the cache: cached tokens per slot, valid length, busy flag, LRU clock
        self._tokens = np.full((slots, max_len), -1, np.int32)
        self._cached_len = np.zeros(slots, np.int64)
        self._busy = np.zeros(slots, bool)
        self._last_used = np.zeros(slots, np.int64)
        self._clock = 0
        self.stats = dict(prefill_tokens=0, reused_tokens=0, generated_tokens=0,
                          decode_calls=0, prefill_calls=0, decode_seconds=0.0)

    # ---- jitted device functions -------------------------------------------------------
    def _build(self, params, mesh, rules, dtype):
        cfg, s = self.cfg, self.slots
        cache = init_cache(cfg, s, self.max_len, dtype)
        state = decode.init_state(s, self.capacity, MAX_STOP_IDS)
        if mesh is None:
            self.params, self.cache, self.state = decode.split_layers(params), cache, state
        else:
            p_shard = param_shardings(params, mesh, rules)
            layer_shard = decode.split_layer_shardings(p_shard, params, mesh, rules)

            def spec(logical, x):
                return NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh, rules))

            per_layer = tuple(spec(CACHE_AXES, x) for x in cache.k)
            c_shard = KVCache(k=per_layer, v=per_layer, lengths=spec(("batch",), cache.lengths))
            st_shard = jax.tree.map(lambda x: spec(("batch",) + (None,) * (x.ndim - 1), x), state)
            repl = NamedSharding(mesh, P())
            split = jax.jit(decode.split_layers, out_shardings=layer_shard)
            self.params = split(jax.device_put(params, p_shard))
            self.cache = jax.device_put(cache, c_shard)
            self.state = jax.device_put(state, st_shard)
            self._shardings = dict(params=layer_shard, cache=c_shard, state=st_shard, repl=repl)
        self._mesh = mesh
        self._rules_key = None if rules is None else tuple(sorted(rules.items()))

    def _fn(self, name: str, **static):
        """The jitted `name` for these static arguments (shared by engines of one model/mesh)."""
        sh = getattr(self, "_shardings", None)
        key = (name, self.cfg, tuple(sorted(static.items())), self._mesh, self._rules_key)
        if key in _JIT_CACHE:
            _JIT_CACHE[key] = _JIT_CACHE.pop(key)     # most recently used last
            return _JIT_CACHE[key]
        while len(_JIT_CACHE) >= _JIT_CACHE_SIZE:
            del _JIT_CACHE[next(iter(_JIT_CACHE))]
        f, donate, ins, outs = {
            "decode": (functools.partial(decode.decode_steps, cfg=self.cfg, **static), (1, 2),
                       lambda: (sh["params"], sh["cache"], sh["state"], sh["repl"]),
                       lambda: (sh["cache"], sh["state"])),
            "prefill": (functools.partial(decode.prefill, cfg=self.cfg, **static), (1,),
                        lambda: (sh["params"], sh["cache"]) + (sh["repl"],) * 4,
                        lambda: (sh["cache"], sh["repl"])),
            "copy": (copy_rows, (0,), lambda: (sh["cache"], sh["repl"], sh["repl"]),
                     lambda: sh["cache"]),
            "start": (decode.start_slots, (1,), lambda: (sh["cache"], sh["state"]) + (sh["repl"],) * 11,
                      lambda: sh["state"]),
        }[name]
        kw = {} if sh is None else dict(in_shardings=ins(), out_shardings=outs())
        # CPU cannot donate buffers (it warns and copies), so donate only on accelerators.
        if jax.default_backend() == "cpu":
            donate = ()
        fn = _JIT_CACHE[key] = jax.jit(f, donate_argnums=donate, **kw)
        return fn

    # ---- host scheduling ---------------------------------------------------------------
    def _lcp(self, ids: np.ndarray) -> np.ndarray:
        """Longest common prefix [S] of `ids` with every slot's cached tokens."""
        n = min(len(ids), self.max_len)
        eq = self._tokens[:, :n] == ids[None, :n]
        lcp = np.where(eq.all(axis=1), n, np.argmin(eq, axis=1))
        return np.minimum(lcp, self._cached_len)

    def _free_slots(self, claimed: set) -> list[int]:
        free = [i for i in np.argsort(self._last_used, kind="stable")
                if not self._busy[i] and i not in claimed]
        return [int(i) for i in free]

    def _admit_round(self, groups: list[_Group], live: dict) -> None:
        """Prefill one batch of prompts and start their samples.

        live: slot -> (request index, sample index, prompt length), filled here.
        """
        placements = self._place(groups)
        # 1. copy reused prefixes into their prefill slots (all sources read first)
        copies = [(p.source, p.slot) for p in placements if p.reuse > 0 and p.source != p.slot]
        if copies:
            self.cache = self._copy(copies)
        # 2. prefill the suffixes
        logits = self._prefill(placements)
        # 3. fork the prefilled rows into the other samples' slots
        forks = [(p.slot, f) for p in placements for f in p.forks]
        if forks:
            self.cache = self._copy(forks)
        # 4. sample first tokens
        self._start(placements, logits, live)

    def _place(self, groups: list[_Group]) -> list[_Placement]:
        """Where each group's prompt is prefilled, from which cached prefix, and which
        further slots its other samples take."""
        # Sources are looked up before anything in this round is written, so every group
        # sees the prefix map as it was when the round began.
        sources = []
        for g in groups:
            lcp = self._lcp(g.prompt)
            src = int(np.argmax(lcp))
            reuse = int(min(lcp[src], len(g.prompt) - 1))
            sources.append((src, reuse) if reuse > 0 else (-1, 0))
        wanted = {src for src, _ in sources if src >= 0}
        claimed: set[int] = set()

        def take(n: int) -> list[int]:
            # least recently used free rows, keeping rows that other groups reuse for last
            free = self._free_slots(claimed)
            free.sort(key=lambda i: i in wanted)
            claimed.update(free[:n])
            return free[:n]

        placements = []
        for g, (src, reuse) in zip(groups, sources):
            if src >= 0 and not self._busy[src] and src not in claimed:
                slot = src                                 # extend the row in place
                claimed.add(slot)
            else:
                slot = take(1)[0]
            placements.append(_Placement(g, src, reuse, slot))
        for p in placements:                               # fork targets are taken last
            p.forks = take(p.group.num_samples - 1)
        return placements

    def _prefill(self, placements: list[_Placement]) -> jax.Array:
        """Prefill every placement's uncached suffix; next-token logits [B, V]."""
        b = _round_up(len(placements), self.prefill_batch)
        longest = max(len(p.group.prompt) - p.reuse for p in placements)
        p_len = _round_up(longest, self.prefill_len_bucket)
        kv_len = min(self.max_len, _round_up(max(len(p.group.prompt) for p in placements),
                                             self.kv_bucket))
        tokens = np.zeros((b, p_len), np.int32)
        slots = np.full(b, self.slots, np.int32)
        starts = np.zeros(b, np.int32)
        num_new = np.ones(b, np.int32)
        for i, p in enumerate(placements):
            suffix = p.group.prompt[p.reuse:]
            tokens[i, : len(suffix)] = suffix
            slots[i], starts[i], num_new[i] = p.slot, p.reuse, len(suffix)
            self.stats["prefill_tokens"] += len(suffix)
            self.stats["reused_tokens"] += p.reuse
        self.cache, logits = self._fn("prefill", kv_len=kv_len)(
            self.params, self.cache, tokens, slots, starts, num_new)
        self.stats["prefill_calls"] += 1
        return logits

    def _start(self, placements: list[_Placement], logits: jax.Array, live: dict) -> None:
        """Mark the placements' slots busy and sample each sample's first token."""
        n = self.slots   # a fixed width: one compile of start_slots
        cols = dict(slots=np.full(n, n, np.int32), row=np.zeros(n, np.int32),
                    max_new=np.ones(n, np.int32), temperature=np.zeros(n, np.float32),
                    top_p=np.ones(n, np.float32), top_k=np.full(n, -1, np.int32),
                    seeds=np.zeros(n, np.int32), index=np.zeros(n, np.int32),
                    stops=np.full((n, MAX_STOP_IDS), -1, np.int32))
        k = 0
        for row, p in enumerate(placements):
            g, req = p.group, p.group.request
            first_sample = self._next_sample.get(g.request_index, 0)
            self._next_sample[g.request_index] = first_sample + g.num_samples
            stops = self.stop_ids if req.stop_ids is None else req.stop_ids
            for j, slot in enumerate([p.slot] + p.forks):
                live[slot] = (g.request_index, first_sample + j, len(g.prompt))
                self._tokens[slot, : len(g.prompt)] = g.prompt
                self._tokens[slot, len(g.prompt):] = -1
                self._cached_len[slot] = len(g.prompt)
                self._busy[slot] = True
                cols["slots"][k], cols["row"][k] = slot, row
                cols["max_new"][k] = req.max_new_tokens
                cols["temperature"][k], cols["top_p"][k], cols["top_k"][k] = (
                    req.temperature, req.top_p, req.top_k)
                cols["seeds"][k], cols["index"][k] = req.seed, first_sample + j
                cols["stops"][k, : len(stops)] = stops
                k += 1
        self.state = self._fn("start")(
            self.cache, self.state, logits, cols["row"], cols["slots"], cols["max_new"],
            cols["temperature"], cols["top_p"], cols["top_k"], cols["seeds"], cols["index"],
            cols["stops"], self.eos_id)

    def _copy(self, pairs: list[tuple[int, int]]) -> KVCache:
        # Power-of-two widths: log2(S) compiles in all, and a copy never gathers many
        # more rows than it moves.
        n = pow2_at_least(len(pairs), 8)
        src = np.zeros(n, np.int32)
        dst = np.full(n, self.slots, np.int32)
        for i, (a, b) in enumerate(pairs):
            src[i], dst[i] = a, b
        return self._fn("copy")(self.cache, src, dst)

    def generate(self, requests: Sequence[Request]) -> list[list[Completion]]:
        """All samples of all requests: result[i][j] is sample j of request i."""
        pending: list[list] = []   # [request index, prompt ids, samples not yet started]
        for i, r in enumerate(requests):
            ids = np.asarray(list(r.prompt_ids), np.int32)
            if len(ids) == 0:
                raise ValueError(f"request {i}: empty prompt")
            if len(ids) >= self.max_len:
                raise ValueError(f"request {i}: prompt of {len(ids)} tokens does not fit the "
                                 f"engine's max_len {self.max_len} (raise engine.max_seq_len)")
            if not 1 <= r.max_new_tokens <= self.capacity:
                raise ValueError(f"request {i}: max_new_tokens must be in [1, {self.capacity}], "
                                 f"got {r.max_new_tokens}")
            if r.num_samples < 1:
                raise ValueError(f"request {i}: num_samples must be >= 1, got {r.num_samples}")
            if r.stop_ids is not None and len(r.stop_ids) > MAX_STOP_IDS:
                raise ValueError(f"request {i}: at most {MAX_STOP_IDS} stop ids, "
                                 f"got {len(r.stop_ids)}")
            pending.append([i, ids, r.num_samples])
        results: list[list] = [[None] * r.num_samples for r in requests]
        live: dict[int, tuple[int, int, int]] = {}
        self._next_sample: dict[int, int] = {}
        gen_len = np.zeros(self.slots, np.int64)    # generated tokens, known after each chunk
        while pending or self._busy.any():
            self._admit(pending, requests, live)
            active = np.flatnonzero(self._busy)
            longest = int(max(self._cached_len[a] + max(gen_len[a] - 1, 0) for a in active))
            kv_len = min(self.max_len, _round_up(longest + self.steps_per_call, self.kv_bucket))
            if self.decode_attention == "pallas":
                kv_len = self.max_len    # the kernel ignores the bucket: one compile
            t0 = time.perf_counter()
            self.cache, self.state = self._fn("decode", num_steps=self.steps_per_call,
                                              kv_len=kv_len,
                                              sampling=self._sampling_mode(live, requests),
                                              **self._attention_args())(
                self.params, self.cache, self.state, self.eos_id)
            done, n_gen, reason = jax.device_get(
                (self.state.done, self.state.num_generated, self.state.stop_reason))
            self.stats["decode_seconds"] += time.perf_counter() - t0
            self.stats["decode_calls"] += 1
            gen_len[:] = n_gen
            finished = [int(a) for a in active if done[a]]
            if finished:
                # The whole [S, C] buffer: indexing the finished rows on device would
                # compile one gather per distinct count of finished slots.
                out = np.asarray(jax.device_get(self.state.out))
                for slot in finished:
                    row = out[slot]
                    req_idx, sample, plen = live.pop(slot)
                    ids = row[: n_gen[slot]].tolist()
                    results[req_idx][sample] = Completion(
                        ids, decode.STOP_REASON_NAMES[int(reason[slot])])
                    self.stats["generated_tokens"] += len(ids)
                    # the last token was sampled but never written to the cache
                    cached = ids[:-1][: self.max_len - plen]
                    self._tokens[slot, plen: plen + len(cached)] = cached
                    self._cached_len[slot] = plen + len(cached)
                    self._busy[slot] = False
                    self._clock += 1
                    self._last_used[slot] = self._clock
                    gen_len[slot] = 0
        return results

    def _attention_args(self) -> dict:
        """decode_steps' static attention arguments."""
        if self.decode_attention == "xla":
            return dict(attention="xla")
        shard = None
        if self._mesh is not None:
            shard = (self._mesh, self._shardings["cache"].k[0].spec)
        return dict(attention=self.decode_attention, attn_block_k=self.decode_block_k,
                    attn_shard=shard)

    @staticmethod
    def _sampling_mode(live: dict, requests: Sequence[Request]) -> str:
        """The cheapest static sampling mode that serves every running request."""
        running = [requests[req_idx] for req_idx, _, _ in live.values()]
        sampled = [r for r in running if r.temperature > 0]
        if not sampled:
            return "greedy"
        if any(r.top_p < 1.0 or r.top_k > 0 for r in sampled):
            return "filter"
        return "sample"

    def _admit(self, pending: list, requests: Sequence[Request], live: dict) -> None:
        """Fill free slots from the front of `pending`, one prefill batch at a time.

        While other slots run, wait until at least `prefill_batch` slots are free (or all
        that is pending fits): a prefill call costs the same with one real row as with a
        full batch, and slots freed one at a time would otherwise each pay for one.
        """
        while pending:
            free = int((~self._busy).sum())
            wanted = sum(p[2] for p in pending)
            if free == 0 or (self._busy.any() and free < min(wanted, self.prefill_batch)):
                return
            groups = []
            while pending and free > 0 and len(groups) < self.prefill_batch:
                req_idx, ids, remaining = pending[0]
                take = min(remaining, free)
                groups.append(_Group(req_idx, ids, take, requests[req_idx]))
                free -= take
                if take == remaining:
                    pending.pop(0)
                else:
                    pending[0][2] -= take
            self._admit_round(groups, live)

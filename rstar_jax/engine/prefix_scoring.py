"""PPM scores of sibling prompts that share a prefix, encoding the prefix once.

MCTS scores the K new children of a node together, and their prompts are the same
question + steps so far followed by one new step each. A full re-encode runs the shared
prefix K times; here it runs once (`prefix_kv`), and each child's new tokens then attend
to that prefix's keys and values (`child_scores`), so the cost is P + sum(C_k) tokens
instead of K * P + sum(C_k).

Shapes: B groups (one shared prefix each), P prefix tokens (padded), K children per
group (padded), C new tokens per child (padded), L layers, G key/value heads, H query
heads, R = H // G, Dh head dim, D hidden.

Both functions take the PPM parameters in the layout of qwen2.py (stacked layers, so the
layer loop is a `lax.scan` and compile time does not grow with depth) and reproduce
`qwen2.forward_scores` on the concatenated prompt up to fp32 round-off: the same
RMSNorm, RoPE at the true positions, and one softmax over prefix and child keys together.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rstar_jax.engine.scheduler import pow2_at_least
from rstar_jax.models.layers import (MASK_VALUE, attention_output, causal_mask, grouped_attention,
                                     qkv_projection, rms_norm, rope_tables, swiglu_mlp)
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import PPM_SCORE_SCALE, value_of_hidden


def prefix_kv(params: dict, cfg: Qwen2Config, prefix_ids: jax.Array, prefix_len: jax.Array):
    """Keys and values of every layer over the shared prefixes.

    params: PPM params ({"backbone", "v_head"}). prefix_ids [B, P] int right-padded;
    prefix_len [B] int real tokens (>= 0). Returns k, v [L, B, P, G, Dh]; entries at
    positions >= prefix_len are padding and must be masked by the reader.
    """
    bb = params["backbone"]
    b, p_len = prefix_ids.shape
    assert prefix_len.shape == (b,), (prefix_len.shape, b)
    positions = jnp.broadcast_to(jnp.arange(p_len, dtype=jnp.int32), (b, p_len))
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    # causal within the prefix; padded keys sit after every real query, so causality
    # alone keeps real positions exact (padded rows compute garbage that is never read)
    mask = causal_mask(None, b, p_len)
    eps = cfg.rms_norm_eps
    h = jnp.take(bb["embed"], prefix_ids, axis=0)

    def layer(h, p):
        q, k, v = qkv_projection(p, rms_norm(h, p["attn_norm"], eps), cos, sin)
        h = h + attention_output(p, grouped_attention(q, k, v, mask))
        h = h + swiglu_mlp(p, rms_norm(h, p["mlp_norm"], eps))
        return h, (k, v)

    _, (k, v) = jax.lax.scan(layer, h, bb["layers"])
    return k, v


def _attend_prefix_and_self(q, pk, pv, ck, cv, prefix_len):
    """Attention of child queries over [prefix keys ; the child's own keys, causal].

    q [B, K, C, H, Dh]; pk, pv [B, P, G, Dh]; ck, cv [B, K, C, G, Dh]; prefix_len [B].
    Returns [B, K, C, H, Dh]. Keys past a child's own length need no mask: they come after
    all of its real queries, which causality already hides them from. The prefix is never copied per child: the
    two score blocks are computed apart and share one softmax, which is exactly the
    softmax over the concatenated keys.
    """
    b, kk, c, h, dh = q.shape
    g = pk.shape[2]
    p_len = pk.shape[1]
    q = q.reshape(b, kk, c, g, h // g, dh)
    scale = dh ** -0.5
    s_pre = jnp.einsum("bkcgrd,bpgd->bkgrcp", q, pk).astype(jnp.float32) * scale
    s_own = jnp.einsum("bkcgrd,bkjgd->bkgrcj", q, ck).astype(jnp.float32) * scale
    pre_ok = (jnp.arange(p_len)[None, :] < prefix_len[:, None])[:, None, None, None, None, :]
    own_ok = (jnp.arange(c)[None, :] <= jnp.arange(c)[:, None])[None, None, None, None]
    s_pre = jnp.where(pre_ok, s_pre, MASK_VALUE)
    s_own = jnp.where(own_ok, s_own, MASK_VALUE)
    probs = jax.nn.softmax(jnp.concatenate([s_pre, s_own], axis=-1), axis=-1).astype(pv.dtype)
    out = (jnp.einsum("bkgrcp,bpgd->bkcgrd", probs[..., :p_len], pv)
           + jnp.einsum("bkgrcj,bkjgd->bkcgrd", probs[..., p_len:], cv))
    return out.reshape(b, kk, c, h, dh)


def child_scores(params: dict, cfg: Qwen2Config, k_prefix: jax.Array, v_prefix: jax.Array,
                 prefix_len: jax.Array, child_ids: jax.Array, child_len: jax.Array) -> jax.Array:
    """Search-time PPM score tanh(v / 5) at each child's last token: [B, K] float32.

    k_prefix, v_prefix [L, B, P, G, Dh] from `prefix_kv`; prefix_len [B]; child_ids
    [B, K, C] right-padded new tokens of each child (token j at position prefix_len + j);
    child_len [B, K] >= 1 for real children (padding children may be 0 and give a
    meaningless score).
    """
    bb = params["backbone"]
    b, kk, c = child_ids.shape
    assert child_len.shape == (b, kk), (child_len.shape, (b, kk))
    assert k_prefix.shape[1] == b, (k_prefix.shape, b)
    eps = cfg.rms_norm_eps
    positions = prefix_len[:, None, None] + jnp.arange(c, dtype=jnp.int32)[None, None, :]
    positions = jnp.broadcast_to(positions, (b, kk, c)).reshape(b * kk, c)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    h = jnp.take(bb["embed"], child_ids.reshape(b * kk, c), axis=0)     # [B*K, C, D]

    def layer(h, xs):
        p, pk, pv = xs
        q, k, v = qkv_projection(p, rms_norm(h, p["attn_norm"], eps), cos, sin)
        split = lambda x: x.reshape((b, kk) + x.shape[1:])  # noqa: E731
        attn = _attend_prefix_and_self(split(q), pk, pv, split(k), split(v), prefix_len)
        h = h + attention_output(p, attn.reshape((b * kk,) + attn.shape[2:]))
        h = h + swiglu_mlp(p, rms_norm(h, p["mlp_norm"], eps))
        return h, None

    h, _ = jax.lax.scan(layer, h, (bb["layers"], k_prefix, v_prefix))
    last = jnp.maximum(child_len.reshape(b * kk) - 1, 0)
    h_last = rms_norm(h[jnp.arange(b * kk), last], bb["final_norm"], eps)
    values = value_of_hidden(params["v_head"], h_last)
    return jnp.tanh(values / PPM_SCORE_SCALE).reshape(b, kk)


def prefix_scores(params: dict, cfg: Qwen2Config, prefix_ids: jax.Array, prefix_len: jax.Array,
                  child_ids: jax.Array, child_len: jax.Array) -> jax.Array:
    """`prefix_kv` then `child_scores`: [B, P], [B], [B, K, C], [B, K] -> [B, K] scores."""
    k, v = prefix_kv(params, cfg, prefix_ids, prefix_len)
    return child_scores(params, cfg, k, v, prefix_len, child_ids, child_len)


# ------------------------------------------------------------------ host-side grouping


@dataclasses.dataclass
class PrefixGroup:
    """Prompts (indices into the caller's list) whose first `prefix_len` tokens agree;
    every member keeps at least one token of its own after the prefix (its score is read
    at its last token, which must run through `child_scores`)."""

    members: list[int]
    prefix_len: int


def _lcp(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_by_prefix(ids: Sequence[Sequence[int]], min_prefix: int,
                    max_children: int) -> list[PrefixGroup]:
    """Partition prompts into groups that share a prefix of >= min_prefix tokens.

    Prompts are visited in lexicographic order, so siblings (the same question + steps,
    then one new step each, what MCTS sends) are adjacent whatever order they came in.
    A group's prefix only shrinks while it has one member: once two prompts agree on a
    prefix, a third joins only if it shares all of it, so one stray prompt never cuts the
    reuse of a whole sibling set. Groups hold at most max_children prompts. Prompts that
    share nothing long enough come back as groups of one.
    """
    order = sorted(range(len(ids)), key=lambda i: tuple(ids[i]))
    groups: list[PrefixGroup] = []
    for i in order:
        x = ids[i]
        if groups:
            g = groups[-1]
            head = ids[g.members[0]]
            shared = _lcp(head, x, min(g.prefix_len, len(x) - 1))
            joins = (len(g.members) < max_children and shared >= min_prefix
                     and (len(g.members) == 1 or shared == g.prefix_len))
            if joins:
                g.members.append(i)
                g.prefix_len = shared
                continue
        groups.append(PrefixGroup([i], len(x) - 1))
    return groups


@dataclasses.dataclass
class PackedGroups:
    """One prefix-scoring call's inputs (numpy, bucketed) and where its scores go.

    prefix_ids [B, P], prefix_len [B], child_ids [B, K, C], child_len [B, K] int32;
    targets [B, K] int64: the caller's prompt index of each child, -1 for padding.
    """

    prefix_ids: np.ndarray
    prefix_len: np.ndarray
    child_ids: np.ndarray
    child_len: np.ndarray
    targets: np.ndarray


def pack_groups(ids: Sequence[Sequence[int]], groups: Sequence[PrefixGroup], *, max_rows: int,
                min_prefix_bucket: int, min_child_bucket: int, pad_id: int,
                group_size: int = 0) -> list[PackedGroups]:
    """Batches of groups for `prefix_scores`, the P and C axes padded to powers of two.

    group_size 0: a call's K is the power of two that holds its smallest group, and its
    B the power of two that holds its groups, at most max(1, max_rows // K) of them.
    group_size k: every call has K = k, and a group of more than k prompts is split into
    groups of k over the same prefix; B is again the power of two that holds the call's
    groups, at most max(1, max_rows // k). Each distinct (B, K, P, C) compiles once
    (~1.7 s for the tiny model on a 2-core CPU), so fixing K leaves log2(max_rows / k) + 1
    B values times the P x C buckets. B is not fixed as well: a call's cost grows with its
    rows (tiny model, P = 512: 76 ms at B = 1, 1.03 s at B = 16), so padding a search's
    last few groups to a full call cost more than the compiles it saved.
    """
    if group_size:
        groups = [PrefixGroup(g.members[i: i + group_size], g.prefix_len)
                  for g in groups for i in range(0, len(g.members), group_size)]
    out = []
    todo = sorted(groups, key=lambda g: (len(g.members), g.prefix_len))
    while todo:
        k = group_size or pow2_at_least(len(todo[0].members), 1)
        fit = [g for g in todo if len(g.members) <= k]
        per_call = 1 << (max(1, max_rows // k).bit_length() - 1)   # a power of two
        batch = fit[:per_call]
        taken = {id(g) for g in batch}
        todo = [g for g in todo if id(g) not in taken]
        b = pow2_at_least(len(batch), 1)
        p = pow2_at_least(max(g.prefix_len for g in batch), min_prefix_bucket)
        c = pow2_at_least(max(len(ids[m]) - g.prefix_len for g in batch for m in g.members),
                          min_child_bucket)
        pk = PackedGroups(np.full((b, p), pad_id, np.int32), np.zeros(b, np.int32),
                          np.full((b, k, c), pad_id, np.int32), np.zeros((b, k), np.int32),
                          np.full((b, k), -1, np.int64))
        for r, g in enumerate(batch):
            head = ids[g.members[0]]
            pk.prefix_ids[r, : g.prefix_len] = head[: g.prefix_len]
            pk.prefix_len[r] = g.prefix_len
            for j, m in enumerate(g.members):
                own = ids[m][g.prefix_len:]
                pk.child_ids[r, j, : len(own)] = own
                pk.child_len[r, j] = len(own)
                pk.targets[r, j] = m
        out.append(pk)
    return out

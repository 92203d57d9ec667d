"""PPM scoring over a shared prefix equals the full re-encode (forward_scores) of each prompt."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rstar_jax.engine import EngineScorer
from rstar_jax.engine.prefix_scoring import group_by_prefix, prefix_scores
from rstar_jax.models.qwen2 import Qwen2PPM, forward_scores, params_of
from rstar_jax.models.sharding import make_mesh

from engine_fixtures import CFG

TOL = 1e-5
TOKENIZER = types.SimpleNamespace(pad_token_id=0)   # score_ids needs only the pad id


@pytest.fixture(scope="module")
def ppm():
    p = params_of(Qwen2PPM(CFG, rngs=nnx.Rngs(2)))
    # a value head large enough that scores spread over (-1, 1) instead of sitting at ~0
    p["v_head"]["kernel"] = jnp.asarray(np.random.default_rng(0).normal(size=(64, 1)), jnp.float32)
    return jax.tree.map(lambda x: x * 3 if x.ndim >= 2 and x.shape != (64, 1) else x, p)


def full_scores(ppm, prompts, max_len=None):
    """Independent expectation: each prompt (truncated to its last max_len) alone."""
    out = []
    for x in prompts:
        x = x[-max_len:] if max_len else x
        ids = jnp.asarray([x], jnp.int32)
        out.append(float(forward_scores(ppm, CFG, ids, jnp.ones_like(ids))[0]))
    return np.asarray(out)


def tokens(rng, n):
    return rng.integers(1, CFG.vocab_size, size=n).tolist()


def siblings(rng, prefix_len, child_lens):
    prefix = tokens(rng, prefix_len)
    return [prefix + tokens(rng, c) for c in child_lens]


def test_prefix_scores_equal_full_reencode_with_ragged_children(ppm):
    rng = np.random.default_rng(1)
    # two groups in one call: different prefix lengths, children of 1..9 tokens, padding
    groups = [(13, [1, 4, 9]), (5, [2, 7])]
    b, p, k, c = 2, 16, 4, 16
    pre_ids = np.zeros((b, p), np.int32)
    pre_len = np.zeros(b, np.int32)
    kid_ids = np.zeros((b, k, c), np.int32)
    kid_len = np.zeros((b, k), np.int32)
    prompts, where = [], []
    for r, (plen, lens) in enumerate(groups):
        sib = siblings(rng, plen, lens)
        pre_ids[r, :plen], pre_len[r] = sib[0][:plen], plen
        for j, x in enumerate(sib):
            kid_ids[r, j, : len(x) - plen] = x[plen:]
            kid_len[r, j] = len(x) - plen
            prompts.append(x)
            where.append((r, j))
    got = np.asarray(jax.jit(prefix_scores, static_argnums=1)(
        ppm, CFG, pre_ids, pre_len, kid_ids, kid_len))
    want = full_scores(ppm, prompts)
    np.testing.assert_allclose([got[r, j] for r, j in where], want, atol=TOL, rtol=0)
    assert len(set(np.round(want, 4))) == len(want)   # the check can tell children apart


def test_siblings_are_grouped_whatever_their_order():
    rng = np.random.default_rng(2)
    a = siblings(rng, 20, [3, 5, 2])
    b = siblings(rng, 30, [4, 1])
    stray = a[0][:18] + tokens(rng, 6)       # shares 18 tokens with a, not all of a's 20
    ids = [a[1], b[0], stray, a[0], b[1], a[2]]
    groups = group_by_prefix(ids, min_prefix=8, max_children=8)
    got = sorted((sorted(g.members), g.prefix_len) for g in groups)
    assert got == sorted([([0, 3, 5], 20), ([1, 4], 30), ([2], len(stray) - 1)])
    capped = group_by_prefix(ids, min_prefix=8, max_children=2)
    assert max(len(g.members) for g in capped) == 2


def mcts_like_prompts(rng):
    """Three nodes' children (ragged steps, shuffled), a lone child, unrelated prompts, and
    one prompt that is another's prefix plus a single token."""
    node_a = siblings(rng, 40, [6, 11, 3, 17])
    node_b = siblings(rng, 25, [9, 2, 14])
    node_c = siblings(rng, 18, [1, 1, 5])
    lone = tokens(rng, 33)
    unrelated = [tokens(rng, n) for n in (7, 22)]
    extended = node_b[0] + tokens(rng, 1)
    prompts = node_a + node_b + node_c + [lone] + unrelated + [extended]
    order = rng.permutation(len(prompts))
    return [prompts[i] for i in order]


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_scorer_equals_full_reencode(ppm, prefix_reuse):
    prompts = mcts_like_prompts(np.random.default_rng(3))
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=8, min_len=16, max_len=128,
                          prefix_reuse=prefix_reuse, min_prefix=8)
    got = np.asarray(scorer.score_ids(prompts))
    np.testing.assert_allclose(got, full_scores(ppm, prompts), atol=TOL, rtol=0)
    s = scorer.stats
    assert s["prefix_prompts"] + s["full_prompts"] == len(prompts)
    if prefix_reuse:
        assert s["prefix_groups"] >= 3 and s["prefix_prompts"] >= 10 and s["full_prompts"] >= 3
        assert s["prefix_tokens"] < sum(len(x) for x in prompts) - s["full_tokens"]
    else:
        assert s["prefix_prompts"] == 0


def test_scorer_no_shared_prefix_and_single_child(ppm):
    rng = np.random.default_rng(4)
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=4, min_len=16, max_len=128,
                      min_prefix=8)
    unrelated = [tokens(rng, n) for n in (12, 30, 5)]
    np.testing.assert_allclose(scorer.score_ids(unrelated), full_scores(ppm, unrelated),
                               atol=TOL, rtol=0)
    single = [tokens(rng, 21)]
    np.testing.assert_allclose(scorer.score_ids(single), full_scores(ppm, single),
                               atol=TOL, rtol=0)
    assert scorer.stats["prefix_prompts"] == 0 and scorer.stats["full_prompts"] == 4


def test_scorer_over_long_prompts_score_their_truncation(ppm):
    rng = np.random.default_rng(5)
    # same total length: the kept last 32 tokens still start together, so they share 27
    long_sibs = siblings(rng, 45, [5, 5, 5])
    # different lengths: their truncations start at different places (no shared prefix)
    ragged = siblings(rng, 45, [3, 8])
    prompts = long_sibs + ragged + [tokens(rng, 10)]
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=8, min_len=16, max_len=32,
                          min_prefix=8)
    got = scorer.score_ids(prompts)
    np.testing.assert_allclose(got, full_scores(ppm, prompts, max_len=32), atol=TOL, rtol=0)
    assert scorer.stats["prefix_prompts"] == 3


def test_scorer_rejects_a_zero_token_prompt(ppm):
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=4, min_len=16, max_len=64)
    with pytest.raises(ValueError, match="zero tokens"):
        scorer.score_ids([[1, 2, 3], []])


def test_scorer_on_eight_device_mesh_equals_full_reencode(ppm):
    prompts = mcts_like_prompts(np.random.default_rng(6))
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=8, min_len=16, max_len=128,
                          mesh=mesh, min_prefix=8)
    assert scorer.params["backbone"]["layers"]["q_kernel"].sharding.spec[2] == "tensor"
    got = scorer.score_ids(prompts)
    np.testing.assert_allclose(got, full_scores(ppm, prompts), atol=TOL, rtol=0)
    assert scorer.stats["prefix_prompts"] >= 10


def test_fixed_group_size_splits_large_groups_and_fixes_call_shapes(ppm):
    """group_size k: groups over k siblings are split over the same prefix, every call has
    k children per group and a power-of-two number of groups up to batch // k, and scores
    stay exact."""
    from rstar_jax.engine import prefix_scoring
    prompts = mcts_like_prompts(np.random.default_rng(7))   # sibling sets of 4, 3 and 3
    scorer = EngineScorer(ppm, CFG, TOKENIZER, batch_size=8, min_len=16, max_len=128,
                          min_prefix=8, group_size=2)
    shapes = []
    real_pack = prefix_scoring.pack_groups

    def spy(*args, **kwargs):
        packs = real_pack(*args, **kwargs)
        shapes.extend(pk.child_len.shape for pk in packs)
        return packs
    scorer._groups = types.SimpleNamespace(group_by_prefix=prefix_scoring.group_by_prefix,
                                           pack_groups=spy)
    got = scorer.score_ids(prompts)
    np.testing.assert_allclose(got, full_scores(ppm, prompts), atol=TOL, rtol=0)
    # sets of 4, 3, 3 split into six groups of <= 2: one full call of 4 groups, then 2
    assert sorted(shapes) == [(2, 2), (4, 2)]
    assert scorer.stats["prefix_prompts"] >= 10
    with pytest.raises(ValueError, match="group_size"):
        EngineScorer(ppm, CFG, TOKENIZER, batch_size=8, group_size=-1)

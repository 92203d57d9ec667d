"""Generation engine: cached decoding vs full recomputation, sampling, stops, sharding, PPM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rstar_jax.engine import (EngineProposer, EngineScorer, GenerationEngine, Request,
                              stop_token_ids)
from rstar_jax.engine.sampling import filter_logits
from rstar_jax.models.qwen2 import Qwen2ForCausalLM, Qwen2PPM, forward_logits, forward_scores, params_of
from rstar_jax.models.sharding import make_mesh

from engine_fixtures import CFG, ENGINE, make_params, prompts


@pytest.fixture(scope="module")
def params():
    return make_params()


def argmax_continuation(params, cfg, prompt, n):
    """Greedy continuation by full recomputation: forward_logits over the whole sequence."""
    seq = list(prompt)
    for _ in range(n):
        logits = forward_logits(params, cfg, jnp.asarray([seq], jnp.int32))
        seq.append(int(jnp.argmax(logits[0, -1])))
    return seq[len(prompt):]


def check_greedy(params, cfg, prompt, tokens):
    """Each generated token is the argmax of a full forward pass over everything before it."""
    full = jnp.asarray([list(prompt) + list(tokens)], jnp.int32)
    logits = np.asarray(forward_logits(params, cfg, full)[0])
    expect = np.argmax(logits[len(prompt) - 1: len(prompt) + len(tokens) - 1], axis=-1)
    assert list(tokens) == expect.tolist()


def test_greedy_cached_decoding_equals_full_recomputation(params):
    engine = GenerationEngine(params, CFG, **ENGINE)
    ps = prompts(0, [5, 11, 3, 20, 9, 14])
    # 6 prompts x 2 samples = 12 sequences through 8 slots: forks and slot refills
    res = engine.generate([Request(p, num_samples=2, max_new_tokens=10) for p in ps])
    assert engine.stats["prefill_calls"] >= 2
    for p, (a, b) in zip(ps, res):
        assert a.token_ids == b.token_ids and a.stop_reason == "length"
        assert len(a.token_ids) == 10
        check_greedy(params, CFG, p, a.token_ids)
    assert argmax_continuation(params, CFG, ps[2], 4) == res[2][0].token_ids[:4]
    # tree search re-sends prompt + step so far (+ more text): only the suffix is prefilled.
    # The slots hold the last 4 prompts (the first 2 were evicted, least recently used).
    before = engine.stats["reused_tokens"]
    extended = [p + r[0].token_ids + [7, 8] for p, r in zip(ps[2:], res[2:])]
    res2 = engine.generate([Request(p, num_samples=2, max_new_tokens=12) for p in extended])
    assert engine.stats["reused_tokens"] - before == sum(len(p) + 9 for p in ps[2:])
    # more samples than free slots: groups split across rounds, partial prefixes reused
    more = extended + [ps[0] + [1, 2], extended[0][:9] + [3]]
    res3 = engine.generate([Request(p, num_samples=3, max_new_tokens=12) for p in more])
    for p, samples in zip(extended + more, res2 + res3):
        for c in samples:
            check_greedy(params, CFG, p, c.token_ids)


def test_stops_exactly_at_first_stop_token(params):
    ps = prompts(1, [6, 13, 4])
    free = GenerationEngine(params, CFG, **ENGINE).generate(
        [Request(p, max_new_tokens=16) for p in ps])
    free_ids = [r[0].token_ids for r in free]
    stop = [free_ids[0][3], free_ids[1][5]]
    eos = free_ids[2][7]
    engine = GenerationEngine(params, CFG, stop_token_ids=stop, eos_token_id=eos, **ENGINE)
    res = engine.generate([Request(p, max_new_tokens=16) for p in ps])
    for ids, r in zip(free_ids, res):
        hits = [i for i, t in enumerate(ids) if t in stop or t == eos]
        if hits:
            cut = hits[0]
            assert r[0].token_ids == ids[: cut + 1]
            assert r[0].stop_reason == ("eos" if ids[cut] == eos and ids[cut] not in stop else "stop")
        else:
            assert r[0].token_ids == ids and r[0].stop_reason == "length"
    limited = engine.generate([Request(ps[1], max_new_tokens=2)])[0][0]
    assert limited.token_ids == free_ids[1][:2] and limited.stop_reason == "length"


def test_sampling_reproducible_under_seed_and_differs_across_seeds(params):
    engine = GenerationEngine(params, CFG, **ENGINE)
    ps = prompts(2, [7, 12])

    def run(seed, **kw):
        reqs = [Request(p, num_samples=3, max_new_tokens=12, temperature=1.0, seed=seed + i, **kw)
                for i, p in enumerate(ps)]
        return [[c.token_ids for c in r] for r in engine.generate(reqs)]

    a, b, c = run(0), run(0), run(100)
    assert a == b
    assert a != c
    assert len({tuple(x) for x in a[0]}) > 1          # the K samples of one prompt differ
    # one request alone samples what it sampled in a batch: streams are per request
    alone = engine.generate([Request(ps[1], num_samples=3, max_new_tokens=12, temperature=1.0,
                                     seed=1)])[0]
    assert [x.token_ids for x in alone] == a[1]
    # top-k 1 is greedy whatever the temperature
    greedy = run(5, top_k=1)
    for p, samples in zip(ps, greedy):
        for ids in samples:
            check_greedy(params, CFG, p, ids)


def test_filter_logits_matches_numpy_top_k_top_p():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 50)).astype(np.float32) * 2
    top_p = np.array([1.0, 0.5, 0.9, 0.3], np.float32)
    top_k = np.array([-1, -1, 10, 5], np.int32)
    got = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), jnp.asarray(top_p),
                                               jnp.asarray(top_k))))
    for row in range(4):
        order = np.argsort(-logits[row])
        k = top_k[row] if top_k[row] > 0 else 50
        kept = order[:k]
        probs = np.exp(logits[row, kept] - logits[row, kept].max())
        probs /= probs.sum()
        before = np.cumsum(probs) - probs
        kept = kept[before < top_p[row]]
        expect = np.zeros(50, bool)
        expect[kept] = True
        assert (got[row] == expect).all(), row


def test_sharded_mesh_gives_same_tokens_as_one_device(params):
    ps = prompts(3, [5, 17, 9])
    reqs = [Request(p, num_samples=2, max_new_tokens=10, temperature=0.0 if i else 1.0, seed=i)
            for i, p in enumerate(ps)]
    one = GenerationEngine(params, CFG, **ENGINE).generate(reqs)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    engine = GenerationEngine(params, CFG, mesh=mesh, **ENGINE)
    assert engine.cache.k[0].sharding.spec[0] == ("data", "fsdp")
    assert engine.cache.k[0].sharding.spec[1] == "tensor"
    assert engine.params["layers"][0]["gate_up_kernel"].sharding.spec[2] == "tensor"
    eight = engine.generate(reqs)
    assert [[c.token_ids for c in r] for r in one] == [[c.token_ids for c in r] for r in eight]


def test_prompt_longer_than_cache_is_rejected(params):
    engine = GenerationEngine(params, CFG, **ENGINE)
    with pytest.raises(ValueError, match="max_len 128"):
        engine.generate([Request(list(range(128)))])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


TOK_CFG = CFG.replace(vocab_size=512, tie_word_embeddings=False)


def test_proposer_stops_on_step_tag_and_keeps_it(tokenizer):
    params = jax.tree.map(lambda x: x * 3 if x.ndim >= 2 else x,
                          params_of(Qwen2ForCausalLM(TOK_CFG, rngs=nnx.Rngs(1))))
    prompt = "<|user|>:\nWhat is 2 + 3?\n<|assistant|>: Let's think step by step"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    free = argmax_continuation(params, TOK_CFG, ids, 6)
    tag = tokenizer.convert_tokens_to_ids("<end_of_step>")
    stops = stop_token_ids(tokenizer)
    # the token the model emits third gets a twin: the tag with an identical LM-head column
    # and a lower id, so greedy picks the tag exactly where it would pick that token
    target = next(t for t in free[2:] if t not in free[:2] and t > tag)
    cut = free.index(target)
    lm = np.asarray(params["lm_head"]).copy()
    lm[:, tag] = lm[:, target]
    params = {**params, "lm_head": jnp.asarray(lm)}
    engine = GenerationEngine(params, TOK_CFG, stop_token_ids=stops,
                              eos_token_id=tokenizer.eos_token_id, **ENGINE)
    proposer = EngineProposer(engine, tokenizer, max_new_tokens=16)
    (props,) = proposer.propose([prompt], num_samples=2, temperature=0.0)
    expect = tokenizer.decode(free[:cut] + [tag], skip_special_tokens=False)
    assert props == [expect, expect]
    assert props[0].endswith("<end_of_step>")
    assert proposer.tokens_generated == 2 * (cut + 1)


def test_scorer_matches_forward_scores_per_prompt(tokenizer):
    ppm = Qwen2PPM(TOK_CFG, rngs=nnx.Rngs(2))
    p = params_of(ppm)
    p["v_head"]["kernel"] = jnp.asarray(np.random.default_rng(0).normal(size=(64, 1)), jnp.float32)
    scorer = EngineScorer(p, TOK_CFG, tokenizer, batch_size=4, min_len=16, max_len=128)
    texts = ["What is 2 + 3?", "x = 3 + 4\nprint(x)\n<end_of_step>",
             "A train travels 60 miles per hour for 3 hours. How many miles does it travel?" * 2,
             "Solve for x", "<answer>The answer is \\boxed{7}.<end_of_answer>"]
    got = scorer.score(texts)
    for text, s in zip(texts, got):
        ids = jnp.asarray([tokenizer.encode(text, add_special_tokens=False)], jnp.int32)
        want = float(forward_scores(p, TOK_CFG, ids, jnp.ones_like(ids))[0])
        assert abs(s - want) < 1e-5
    assert all(-1 < s < 1 for s in got) and len(set(got)) == len(got)


def test_each_request_stops_at_its_own_stop_ids(params):
    """Requests with different stop lists share one engine (and one compile): each one
    stops exactly where an engine built with its list as the default would."""
    ps = prompts(3, [6, 13, 4, 9])
    free = [r[0].token_ids for r in GenerationEngine(params, CFG, **ENGINE).generate(
        [Request(p, max_new_tokens=16) for p in ps])]
    lists = [[free[0][2]], [free[1][4], free[1][6]], [], None]
    default = [free[3][5]]
    mixed = GenerationEngine(params, CFG, stop_token_ids=default, **ENGINE).generate(
        [Request(p, max_new_tokens=16, stop_ids=s) for p, s in zip(ps, lists)])
    for p, s, got in zip(ps, lists, mixed):
        alone = GenerationEngine(params, CFG, stop_token_ids=default if s is None else s,
                                 **ENGINE).generate([Request(p, max_new_tokens=16)])[0][0]
        assert got[0].token_ids == alone.token_ids
        assert got[0].stop_reason == alone.stop_reason
    assert mixed[0][0].stop_reason == "stop" and len(mixed[0][0].token_ids) <= 3
    assert mixed[2][0].stop_reason == "length"       # an empty list: no stop tag at all
    with pytest.raises(ValueError, match="stop ids"):
        GenerationEngine(params, CFG, **ENGINE).generate(
            [Request(ps[0], max_new_tokens=4, stop_ids=list(range(20)))])


def test_generation_compiles_nothing_after_warm_up(params):
    """A workload that repeats the shapes of one already run compiles nothing new, even
    with different prompts, sample counts, finishing orders and stop lists."""
    counter = {"n": 0}

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    engine = GenerationEngine(params, CFG, stop_token_ids=[5, 9], **ENGINE)

    def workload(seed):
        rng = np.random.default_rng(seed)
        reqs = [Request(p, num_samples=int(rng.integers(1, 4)), max_new_tokens=int(rng.integers(4, 17)),
                        temperature=1.0, seed=int(rng.integers(1 << 30)),
                        stop_ids=[int(t) for t in rng.integers(0, 128, size=2)])
                for p in prompts(seed, rng.integers(3, 30, size=12).tolist())]
        return engine.generate(reqs)

    for seed in range(4):             # warm-up: every bucket these shapes reach
        workload(seed)
    before = counter["n"]
    for seed in range(10, 13):
        workload(seed)
    assert counter["n"] == before, f"{counter['n'] - before} compiles after warm-up"


def test_proposer_fits_and_prompt_keyed_seeds(tokenizer):
    params = jax.tree.map(lambda x: x * 3 if x.ndim >= 2 else x,
                          params_of(Qwen2ForCausalLM(TOK_CFG, rngs=nnx.Rngs(1))))
    engine = GenerationEngine(params, TOK_CFG, stop_token_ids=stop_token_ids(tokenizer),
                              eos_token_id=tokenizer.eos_token_id, **ENGINE)
    short, other = "What is 2 + 3?", "Solve for x: x + 4 = 9."
    too_long = "9 " * 200
    assert EngineProposer(engine, tokenizer).fits([short, too_long]) == [True, False]

    def sample(batch, seed=0):
        prop = EngineProposer(engine, tokenizer, max_new_tokens=12, seed=seed)
        return prop.propose(batch, num_samples=2, temperature=1.0)

    # A prompt's samples do not depend on what it is batched with or where it sits.
    alone = sample([short])[0]
    assert sample([other, short])[1] == alone
    assert sample([short], seed=1)[0] != alone
    # The n-th request for one prompt gets its own stream; a new proposer starts over.
    prop = EngineProposer(engine, tokenizer, max_new_tokens=12)
    first, second = (prop.propose([short], 2, 1.0)[0] for _ in range(2))
    assert first == alone and second != first
    # Its own stop tags travel with its requests (the engine test above checks that each
    # request stops at its own list).
    sent = []
    plain = EngineProposer(engine, tokenizer, max_new_tokens=12, stop_tags=("<end_of_answer>",))
    real_generate = engine.generate
    engine.generate = lambda reqs: sent.extend(reqs) or real_generate(reqs)
    try:
        plain.complete([short], 1, 0.0)
    finally:
        engine.generate = real_generate
    assert [r.stop_ids for r in sent] == [tuple(stop_token_ids(tokenizer, ("<end_of_answer>",)))]

"""End-to-end MCTS benchmark: the serial path vs the fast path on the same problems.

Prints one JSON object: for each path, problems per hour, tokens generated and the wall
time split into prefill, decode, PPM scoring, executor, grader, tree updates and device
idle/other; then the fast path's speedups.

  serial: search.chunks_in_flight = 1, the PPM re-encodes every prompt whole
  fast:   search.chunks_in_flight = 2 (one chunk's code runs and grading on a host
          thread while the device works on the other's level), PPM prefix reuse
          (rstar_jax/engine/prefix_scoring.py)

Replay mode. Random weights cannot write real steps, so the step texts come from the
scripted bootstrap policy (rstar_jax/evolve/bootstrap.py: code-augmented steps with
realistic mistakes, a pure function of seed, prompt and sample index), which makes the
sandboxed executor run real programs and the grader grade real answers. The device still
does the generation work: for every expansion the random-weight policy decodes, with stop
tokens and EOS off, as many tokens as the longest of the K recorded steps of that prompt
(the K samples of one prompt run in lock-step slots), from the real prompt (question +
steps so far) tokenized. The random-weight PPM scores the real prompts. Both paths see the
same problems, chunks and steps.

  python launch/bench_mcts.py --preset tiny                     # CPU, under ~2 minutes
  python launch/bench_mcts.py --preset qwen2.5-math-1.5b --problems 256 --children 8 \
      --rollouts 4 --slots 256 --max-len 2048 --dtype bfloat16     # GPU

Timing: device calls are blocked on (block_until_ready) inside their timers so that
asynchronous dispatch does not bill one call's work to the next; "prefill" is everything
the engine runs outside its decode loop (suffix prefill, prefix-row copies, slot
start-up). With two chunks in flight the executor and grader time overlaps device time,
so the parts can sum to more than the wall time (`unaccounted_s` < 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import threading
import time
import typing

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rstar_jax import cli  # noqa: E402

PARTS = ("prefill", "decode", "ppm_scoring", "executor", "grader", "tree_updates")
DEVICE_PARTS = ("prefill", "decode", "ppm_scoring", "tree_updates")


def _args(argv):
    from configs import model as model_presets
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=model_presets.PRESETS,
                   help="model architecture (random weights) for the policy and the PPM")
    p.add_argument("--problems", type=int, default=8, help="chain-sum problems (reasoning-gym)")
    p.add_argument("--chunk", type=int, default=None,
                   help="problems per chunk (search.batch_size); default: half, so the fast "
                        "path has two chunks to overlap")
    p.add_argument("--children", type=int, default=4, help="search.num_children (K)")
    p.add_argument("--rollouts", type=int, default=2, help="search.num_rollouts")
    p.add_argument("--depth", type=int, default=8, help="search.max_depth")
    p.add_argument("--slots", type=int, default=32, help="engine KV-cache slots")
    p.add_argument("--max-len", type=int, default=512, help="engine and PPM max length")
    p.add_argument("--max-new-tokens", type=int, default=96,
                   help="cap on the tokens one expansion decodes (engine capacity)")
    p.add_argument("--steps-per-call", type=int, default=16)
    p.add_argument("--score-batch", type=int, default=16, help="PPM rows per call")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="sandboxed executor processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed first pass of each path (compiles, worker start)")
    cli.add_distributed_arguments(p)
    a = p.parse_args(argv)
    for name in ("problems", "children", "rollouts", "depth", "slots", "max_new_tokens",
                 "steps_per_call", "score_batch", "workers"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.chunk is not None and a.chunk < 1:
        p.error(f"--chunk must be >= 1, got {a.chunk}")
    if a.max_new_tokens >= a.max_len:
        p.error(f"--max-new-tokens {a.max_new_tokens} must be below --max-len {a.max_len}")
    return a


class Timers:
    """Seconds per part, added from the driver thread and the host helper thread."""

    def __init__(self):
        self.s = dict.fromkeys(PARTS, 0.0)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def part(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.s[name] += time.perf_counter() - t0


def _blocking(fn, timers, part):
    import jax

    def run(*a, **kw):
        with timers.part(part):
            return jax.block_until_ready(fn(*a, **kw))
    return run


@contextlib.contextmanager
def timed_tree_ops(timers):
    """Bill the jitted tree operations that mcts.py calls (through the module) to
    tree_updates for the duration of one search."""
    from rstar_jax.search import tree as device_tree
    names = ("level_update", "select_step", "grow")
    saved = {n: getattr(device_tree, n) for n in names}
    try:
        for n in names:
            setattr(device_tree, n, _blocking(saved[n], timers, "tree_updates"))
        yield
    finally:
        for n, f in saved.items():
            setattr(device_tree, n, f)


def time_engine(engine, timers):
    """Split the engine's device calls into decode and prefill (the rest) by name."""
    fn = engine._fn

    def named(name, **static):
        return _blocking(fn(name, **static), timers, "decode" if name == "decode" else "prefill")
    engine._fn = named
    return engine


class ReplayProposer:
    """Step texts from a scripted policy; the device decodes the matching token counts."""

    def __init__(self, script, engine, tokenizer, max_new_tokens: int, seed: int):
        self.script, self.engine, self.tokenizer = script, engine, tokenizer
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.tokens_generated = 0      # decoded by the device
        self.step_tokens = 0           # of the recorded steps the search receives
        self._calls = 0

    def fits(self, prompts):
        return [len(self.tokenizer.encode(p, add_special_tokens=False)) + self.max_new_tokens
                < self.engine.max_len for p in prompts]

    def propose(self, prompts, num_samples, temperature):
        import numpy as np
        from rstar_jax.engine import Request
        texts = self.script.propose(prompts, num_samples, temperature)
        seeds = np.random.SeedSequence([self.seed, self._calls]).generate_state(
            max(len(prompts), 1)) & 0x7FFFFFFF
        self._calls += 1
        requests = []
        for p, steps, s in zip(prompts, texts, seeds):
            lengths = [len(self.tokenizer.encode(t, add_special_tokens=False)) for t in steps]
            self.step_tokens += sum(lengths)
            requests.append(Request(self.tokenizer.encode(p, add_special_tokens=False),
                                    num_samples=num_samples,
                                    max_new_tokens=min(self.max_new_tokens, max(lengths)),
                                    temperature=float(temperature), seed=int(s)))
        for samples in self.engine.generate(requests):
            self.tokens_generated += sum(len(c.token_ids) for c in samples)
        return texts


class TimedExecutor:
    def __init__(self, executor, timers):
        self.executor, self.timers = executor, timers

    def run(self, programs):
        with self.timers.part("executor"):
            return self.executor.run(programs)


class Setup(typing.NamedTuple):
    """What both paths share: models, tokenizer, problems, the executor."""

    cfg: object
    policy: dict
    ppm: dict
    tokenizer: object
    problems: list


def random_params(cfg, dtype, seed: int) -> dict:
    """Random policy weights in the qwen2.py layout (the engine benchmark's own)."""
    from launch.bench_engine import random_params as engine_random_params
    return engine_random_params(cfg, dtype, seed)


def random_value_head(cfg, dtype, seed: int) -> dict:
    """A value head that spreads scores over (-1, 1), so backups are not all ~0."""
    import jax
    import jax.numpy as jnp
    kernel = jax.random.normal(jax.random.PRNGKey(seed), (cfg.hidden_size, 1)).astype(dtype)
    return {"kernel": kernel, "bias": jnp.zeros((1,), dtype)}


def make_problems(n: int, seed: int) -> list[dict]:
    from configs import rounds
    from rstar_jax.data.problems import load_problems
    # the tiny run's training mix of chain sums: 2-5 terms, so trees differ in depth
    spec = rounds.reasoning_gym("chain_sum", dict(min_terms=2, max_terms=5, min_digits=1,
                                                  max_digits=2), 1_000 + seed, n)
    return load_problems(spec, "bench.problems", dedupe=False)


def build_setup(a) -> Setup:
    from configs import model as model_presets
    from rstar_jax.models.config import Qwen2Config, resolve_dtype
    from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
    problems = make_problems(a.problems, a.seed)
    # merges learned from the problems keep prompts short, as in the tiny run
    tok = build_tiny_tokenizer(None, extra_corpus=[p["question"] for p in problems])
    cfg = Qwen2Config.from_config_dict(model_presets.get_config(a.preset))
    if len(tok) > cfg.vocab_size:
        raise SystemExit(f"error: tokenizer has {len(tok)} tokens, more than --preset "
                         f"{a.preset}'s vocabulary {cfg.vocab_size}")
    if a.max_len > cfg.max_position_embeddings:
        raise SystemExit(f"error: --max-len {a.max_len} exceeds --preset {a.preset}'s "
                         f"max_position_embeddings {cfg.max_position_embeddings}")
    dtype = resolve_dtype(a.dtype)
    policy = random_params(cfg, dtype, a.seed)
    ppm = {"backbone": random_params(cfg, dtype, a.seed + 1),
           "v_head": random_value_head(cfg, dtype, a.seed + 2)}
    return Setup(cfg, policy, ppm, tok, problems)


def search_config(a, chunks_in_flight: int):
    from configs import search as search_presets
    s = search_presets.get_config("round3")    # terminal-guided, PPM-initialised children
    s.num_children, s.num_rollouts, s.max_depth = a.children, a.rollouts, a.depth
    s.batch_size = a.chunk or max(1, math.ceil(a.problems / 2))
    s.chunks_in_flight = chunks_in_flight
    s.initial_num_slots = 64
    s.seed = a.seed
    return s


def run_path(a, st: Setup, *, fast: bool) -> dict:
    from rstar_jax.engine import EngineScorer, GenerationEngine
    from rstar_jax.evolve.bootstrap import BootstrapProposer, BootstrapSettings
    from rstar_jax.search import mcts
    from rstar_jax.search.settings import MCTSSettings
    from rstar_jax.verify.executor import PythonExecutor
    timers = Timers()
    # a fresh engine per run: no cached prefixes carried over from another run
    engine = time_engine(GenerationEngine(
        st.policy, st.cfg, slots=a.slots, max_len=a.max_len, capacity=a.max_new_tokens,
        steps_per_call=a.steps_per_call, kv_bucket=64, prefill_len_bucket=32,
        prefill_batch=min(16, a.slots)), timers)
    script = BootstrapProposer(BootstrapSettings(
        mistake_rate=0.3, kind_weights=(0.35, 0.35, 0.2, 0.1), seed=a.seed, terms_per_step=2))
    proposer = ReplayProposer(script, engine, st.tokenizer, a.max_new_tokens, a.seed)
    scorer = EngineScorer(st.ppm, st.cfg, st.tokenizer, batch_size=a.score_batch, min_len=32,
                          max_len=a.max_len, prefix_reuse=fast)
    score = scorer.score

    def timed_score(prompts):
        with timers.part("ppm_scoring"):
            return score(prompts)
    scorer.score = timed_score

    search_cfg = search_config(a, 2 if fast else 1)
    extract = mcts.settings_answer_fn(MCTSSettings.from_config(search_cfg))

    def answer_fn(text):
        with timers.part("grader"):
            return extract(text)

    def grade_fn(pred, gold):
        with timers.part("grader"):
            return mcts.grader_equal(pred, gold)

    summary: dict = {}
    # a fresh executor per run: its result cache would otherwise answer the second
    # path's programs without running them
    with PythonExecutor(a.workers, timeout_s=10.0) as executor:
        executor.run(["print(1)"])            # workers started and warm before the clock
        t0 = time.perf_counter()
        with timed_tree_ops(timers):
            trees = mcts.search(st.problems, proposer, TimedExecutor(executor, timers),
                                search_cfg, scorer,
                                answer_fn=answer_fn, grade_fn=grade_fn, progress=False,
                                summary=summary)
        wall = time.perf_counter() - t0
    parts = {f"{k}_s": round(v, 3) for k, v in timers.s.items()}
    device = sum(timers.s[k] for k in DEVICE_PARTS)
    return {
        "chunks_in_flight": 2 if fast else 1, "prefix_reuse": fast,
        "problems": len(trees), "trees": len(trees),
        "nodes": sum(len(t.nodes) for t in trees),
        "solved": summary["solved"], "steps": summary["steps"],
        "problems_per_hour": round(3600 * len(trees) / wall, 1),
        "tokens_generated": proposer.tokens_generated,
        "recorded_step_tokens": proposer.step_tokens,
        "decode_tok_per_s": round(proposer.tokens_generated / max(timers.s["decode"], 1e-9), 1),
        "wall_s": round(wall, 3),
        "split": {**parts, "device_idle_or_other_s": round(wall - device, 3),
                  "unaccounted_s": round(wall - sum(timers.s.values()), 3)},
        "ppm": dict(scorer.stats),
        "_shape": [[n.text for n in t.nodes] for t in trees],
    }


def main(argv=None):
    a = _args(argv)
    process = cli.start_distributed_from_args(a)  # each process benchmarks its own devices; process 0 prints
    import jax
    st = build_setup(a)
    if not a.no_warmup:
        for fast in (False, True):
            run_path(a, st, fast=fast)
    serial = run_path(a, st, fast=False)
    fast = run_path(a, st, fast=True)
    same_trees = serial.pop("_shape") == fast.pop("_shape")
    out = {
        "bench": "mcts_end_to_end",
        "mode": "replay (scripted bootstrap steps, random-weight policy decodes their lengths)",
        "preset": a.preset, "dtype": a.dtype,
        "shape": {"problems": a.problems, "chunk": search_config(a, 1).batch_size,
                  "K": a.children, "rollouts": a.rollouts, "depth": a.depth,
                  "slots": a.slots, "max_len": a.max_len, "max_new_tokens": a.max_new_tokens},
        "serial": serial, "fast": fast,
        "speedup": {
            "wall": round(serial["wall_s"] / fast["wall_s"], 3),
            "ppm_scoring": round(serial["split"]["ppm_scoring_s"]
                                 / max(fast["split"]["ppm_scoring_s"], 1e-9), 3),
            "problems_per_hour": round(fast["problems_per_hour"]
                                       / serial["problems_per_hour"], 3)},
        "same_trees": same_trees,
        "device": str(jax.devices()[0]), "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if process.is_main:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""Benchmark of the jitted tree operations at paper scale; prints one JSON object.

A synthetic MCTS runs on device only: B problems, K children per expansion, R rollouts of
D levels (the paper's data-generation scale: B = 1024 of a 3000-problem chunk, K = 12,
R = 16, D = 16), so every tree has N = R * D * K + 1 node slots. Each level calls
`level_update` (add K children to every expanding tree, back up their values - PPM init on
open children, a recursive backup for answer children, -1 on invalid terminals - and select
the next node), exactly what the MCTS driver calls per level; each rollout starts with one
`select_step`. Times are taken after warm-up with `block_until_ready`, including the
host->device copy of the level's inputs and the fetch of the selected nodes.

The share of a level is measured against an estimate of that level's generation time,
from a stated assumption: B * K proposals of `--tokens_per_step` tokens at `--tok_per_s`
(65,000 tok/s is the engine's target). Baseline in the same run: the same select + backup
done by plain Python over node lists (the reference's per-node objects), on a sample of
trees, scaled to B.

    python launch/bench_search.py [--batch 1024 --children 12 --rollouts 16 --depth 16]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

from rstar_jax import cli


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--children", type=int, default=12)
    p.add_argument("--rollouts", type=int, default=16)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--tokens_per_step", type=int, default=100)
    p.add_argument("--tok_per_s", type=float, default=65000.0)
    p.add_argument("--answer_rate", type=float, default=0.05,
                   help="chance that a new child is an answer step (recursive backup)")
    p.add_argument("--python_sample", type=int, default=32,
                   help="trees the plain-Python baseline times (scaled to --batch)")
    p.add_argument("--seed", type=int, default=0)
    cli.add_distributed_arguments(p)
    return p.parse_args()


def _level_inputs(rng, expanding, k, answer_rate):
    """Random children for the expanding rows: PPM-initialised open steps, answers, errors."""
    b = expanding.shape[0]
    num_new = np.where(expanding, k, 0).astype(np.int32)
    u = rng.random((b, k))
    answer = u < answer_rate
    invalid = (u >= answer_rate) & (u < 2 * answer_rate)
    child_terminal = (answer | invalid) & expanding[:, None]
    values = np.where(invalid, -1.0, rng.uniform(-0.99, 0.99, (b, k))).astype(np.float32)
    modes = np.where(answer, 2, 1).astype(np.int32) * expanding[:, None]
    return num_new, child_terminal, values, modes.astype(np.int32), np.zeros((b, k), bool)


def run_jax(a):
    import jax
    from rstar_jax.search import tree as device_tree

    b, k = a.batch, a.children
    n = a.rollouts * a.depth * k + 1
    rng = np.random.default_rng(a.seed)
    dev = device_tree.init_tree(b, n, k)
    has_children = np.zeros((b, n), bool)
    num_nodes = np.ones(b, np.int64)
    live = np.ones(b, bool)
    level_times, select_times = [], []

    def timed(fn, *args, **kw):
        t0 = time.perf_counter()
        out = fn(*args, **kw)
        jax.block_until_ready(out)
        return out, time.perf_counter() - t0

    # Warm-up: compile both functions on a throw-away tree of the same shapes.
    warm = device_tree.init_tree(b, n, k)
    warm, cur = device_tree.select_step(warm, np.zeros(b, np.int32), live)
    ins = _level_inputs(rng, np.ones(b, bool), k, a.answer_rate)
    warm, cur, _ = device_tree.level_update(warm, np.asarray(cur), np.ones(b, bool), *ins,
                                  max_path=a.depth + 2)
    jax.block_until_ready(cur)
    del warm

    for _ in range(a.rollouts):
        (dev, cur), dt = timed(device_tree.select_step, dev, np.zeros(b, np.int32), live)
        select_times.append(dt)
        cur = np.asarray(cur)
        for _ in range(a.depth):
            active = cur >= 0
            if not active.any():
                break
            rows = np.arange(b)
            safe = np.where(active, cur, 0)
            expanding = active & ~has_children[rows, safe] & (num_nodes + k <= n)
            ins = _level_inputs(rng, expanding, k, a.answer_rate)
            t0 = time.perf_counter()
            dev, nxt, overflow = device_tree.level_update(dev, cur.astype(np.int32), active, *ins,
                                                max_path=a.depth + 2)
            nxt = np.asarray(nxt)       # the host needs the selected nodes: part of the cost
            level_times.append(time.perf_counter() - t0)
            assert not np.asarray(overflow).any(), "backup path longer than depth + 2"
            has_children[rows[expanding], safe[expanding]] = True
            num_nodes += ins[0]
            cur = nxt
    visits = np.asarray(dev.visits)
    depth = np.asarray(dev.depth)
    used = np.arange(n)[None, :] < num_nodes[:, None]
    return {
        "node_slots": n,
        "levels_timed": len(level_times),
        "level_update_ms_mean": 1e3 * float(np.mean(level_times)),
        "level_update_ms_p50": 1e3 * float(np.median(level_times)),
        "level_update_ms_p90": 1e3 * float(np.percentile(level_times, 90)),
        "select_from_root_ms_mean": 1e3 * float(np.mean(select_times)),
        "nodes_per_tree_mean": float(num_nodes.mean()),
        "max_tree_depth": int(depth[used].max()),
        "root_visits_mean": float(visits[:, 0].mean()),
        "device": str(jax.devices()[0]),
    }


class _PyNode:
    __slots__ = ("parent", "children", "visits", "value_sum", "value", "terminal")

    def __init__(self, parent):
        self.parent, self.children = parent, []
        self.visits, self.value_sum, self.value, self.terminal = 0, 0.0, 0.0, False


def run_python(a):
    """Plain-Python select + backup over node objects, the reference's way, per level."""
    rng = np.random.default_rng(a.seed + 1)
    trees = a.python_sample
    roots = [_PyNode(None) for _ in range(trees)]
    times = []

    def update(node, v):
        if node.visits == 0:
            node.value = v
        node.visits += 1
        node.value_sum += v

    def select(node):
        best, best_s = None, -math.inf
        for c in node.children:
            if c.terminal:
                continue
            q = c.value_sum / c.visits if c.visits else 0.0
            u = 2.0 * math.sqrt(math.log(node.visits) / c.visits) if c.visits and node.visits else 0.0
            if q + u > best_s:
                best, best_s = c, q + u
        if best is None:
            node.terminal = True
        return best

    for _ in range(a.rollouts):
        cur = [r for r in roots]
        for _ in range(a.depth):
            ins = _level_inputs(rng, np.ones(trees, bool), a.children, a.answer_rate)
            t0 = time.perf_counter()
            for i in range(trees):
                node = cur[i]
                if node is None:
                    continue
                if not node.children:
                    for j in range(a.children):
                        c = _PyNode(node)
                        c.terminal = bool(ins[1][i, j])
                        node.children.append(c)
                        update(c, float(ins[2][i, j]))
                        if ins[3][i, j] == 2:
                            p = node
                            while p is not None:
                                update(p, float(ins[2][i, j]))
                                p = p.parent
                cur[i] = select(node)
            times.append(time.perf_counter() - t0)
    per_tree = float(np.mean(times)) / trees
    return {"python_level_ms_scaled_to_batch": 1e3 * per_tree * a.batch,
            "python_trees_timed": trees}


def main():
    a = _args()
    process = cli.start_distributed_from_args(a)  # each process benchmarks its own devices; process 0 prints
    res = run_jax(a)
    base = run_python(a)
    gen_s = a.batch * a.children * a.tokens_per_step / a.tok_per_s
    level_s = res["level_update_ms_mean"] / 1e3
    out = {
        "bench": "search_tree_ops",
        "shape": {"B": a.batch, "K": a.children, "rollouts": a.rollouts, "depth": a.depth,
                  "N": res["node_slots"]},
        "assumption": (f"generation per level = B*K*{a.tokens_per_step} tokens at "
                       f"{a.tok_per_s:.0f} tok/s = {gen_s:.1f} s"),
        "generation_s_per_level_estimate": gen_s,
        **res,
        **base,
        "speedup_vs_python": base["python_level_ms_scaled_to_batch"] / res["level_update_ms_mean"],
        "share_of_level_pct": 100.0 * level_s / (level_s + gen_s),
        "target_share_pct": 5.0,
        "platform": platform.platform(),
    }
    if process.is_main:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

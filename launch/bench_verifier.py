"""Benchmark: sandboxed executor pool vs the reference's execution approach.

Prints one JSON object. The workload imitates tree search on code-augmented CoT
(rstar_reference.md §2, §3.4): for each problem, each rollout walks down the tree;
at every level the policy proposes `--children` steps (drawn from a few variants per
depth, so siblings and later rollouts repeat each other as sampled LM steps do) and
every child's whole cumulative program is executed in one batch. Steps mix sympy
solving, numpy, plain arithmetic and loops.

Compared on the same program sequence, with the same number of processes:
* `reference_style`: what the reference does -- `exec` in the pool process itself
  under a SIGALRM timeout, inside a `concurrent.futures.ProcessPoolExecutor`, no cache
  (the same output semantics, `program_runner.run_program`, so only isolation and
  scheduling differ);
* `ours_no_cache`: `PythonExecutor(cache_size=0)`, a sandboxed fork per program;
* `ours_cached`: `PythonExecutor` with its LRU cache.
`isolation` reports what confined our programs on this machine (as root: uid 65534
and a tmpfs per program; otherwise the caller's uid and a watched disk quota).
Throughput is programs requested per second of `run` calls; pool start-up (imports)
is reported separately. `outputs_match` checks both give identical observations.

Usage: python launch/bench_verifier.py [--workers 2] [--problems 8] [--rollouts 4]
"""

from __future__ import annotations

import argparse
import builtins
import concurrent.futures
import json
import os
import platform
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rstar_jax.verify import program_runner  # noqa: E402
from rstar_jax.verify.executor import DEFAULT_PRELOAD, PythonExecutor  # noqa: E402

# A few variants per depth; {p} is a per-problem constant so problems differ.
STEP_VARIANTS = [
    ["# Step 1: Define the unknown as a sympy symbol\nfrom sympy import symbols, solve, Eq\n"
     "x = symbols('x')",
     "# Step 1: Import sympy and create the variable x\nfrom sympy import symbols, solve, "
     "Eq\nx = symbols('x')"],
    ["# Step 2: Write the equation from the problem statement\neq = Eq(3*x + {p}, 5*x - 7)",
     "# Step 2: Set up the linear equation\neq = Eq(5*x - 7, 3*x + {p})",
     "# Step 2: Equation relating both sides\neq = Eq(2*x, {p} + 7)"],
    ["# Step 3: Solve the equation for x\nsol = solve(eq, x)",
     "# Step 3: Use sympy to solve\nsol = solve(eq, x)\nsol"],
    ["# Step 4: Sum the given values with numpy\nimport numpy as np\n"
     "vals = np.array([{p}, 12, 7, 3])\ntotal = int(vals.sum())",
     "# Step 4: Average of the data\nimport numpy as np\n"
     "total = int(np.mean(np.array([{p}, 12, 7, 3])) * 4)"],
    ["# Step 5: Add the squares of the first few integers\nacc = 0\n"
     "for i in range(1, {p} + 20):\n    acc += i * i",
     "# Step 5: Same sum with a comprehension\nacc = sum(i * i for i in range(1, {p} + 20))",
     "# Step 5: Closed form for the sum of squares\nn = {p} + 19\nacc = n * (n + 1) * "
     "(2 * n + 1) // 6"],
    ["# Now print the final answer\nprint(sol[0] + total + acc)",
     "# Now print the final answer\nprint(float(sol[0]) + total + acc)"],
]


def make_batches(problems: int, rollouts: int, children: int, seed: int) -> list[list[str]]:
    """The sequence of `run` batches a lock-step tree search would issue."""
    rng = random.Random(seed)
    batches = []
    for _ in range(rollouts):
        paths = [[] for _ in range(problems)]
        for depth, variants in enumerate(STEP_VARIANTS):
            batch, picks = [], []
            for p, path in enumerate(paths):
                kids = [variants[rng.randrange(len(variants))].format(p=p + 2)
                        for _ in range(children)]
                batch += ["\n".join(path + [kid]) for kid in kids]
                picks.append(kids[rng.randrange(children)])
            for path, kid in zip(paths, picks):
                path.append(kid)
            batches.append(batch)
    return batches


# -- the reference's approach -----------------------------------------------------------

class _Alarm(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def _reference_worker_init(preload: list[str]) -> None:
    for name in preload:
        __import__(name)


def _reference_exec(program: str, timeout_s: float) -> str:
    """In-process exec under a signal timeout, as the reference's PythonInterpreter."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        return program_runner.run_program(program, namespace, 1 << 20, 4096)[0]
    except _Alarm:
        return f"TimeoutError: timed out after {timeout_s:g} seconds"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def bench_reference(batches, workers: int, timeout_s: float) -> dict:
    start = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(
            workers, initializer=_reference_worker_init,
            initargs=(list(DEFAULT_PRELOAD),)) as pool:
        list(pool.map(_reference_exec, ["0"] * workers, [timeout_s] * workers))  # warm
        startup = time.perf_counter() - start
        outputs, t0 = [], time.perf_counter()
        for batch in batches:
            outputs += list(pool.map(_reference_exec, batch, [timeout_s] * len(batch)))
        elapsed = time.perf_counter() - t0
    return {"startup_s": startup, "elapsed_s": elapsed, "outputs": outputs}


def bench_ours(batches, workers: int, timeout_s: float, cache_size: int) -> dict:
    start = time.perf_counter()
    with PythonExecutor(workers, timeout_s=timeout_s, cache_size=cache_size) as ex:
        ex.run([f"{i}" for i in range(workers)])  # wait until every worker is ready
        startup = time.perf_counter() - start
        info0 = ex.cache_info()
        outputs, t0 = [], time.perf_counter()
        for batch in batches:
            outputs += [r.output for r in ex.run(batch)]
        elapsed = time.perf_counter() - t0
        info = ex.cache_info()
        isolation = ex.isolation
    hits = info["hits"] - info0["hits"]
    return {"startup_s": startup, "elapsed_s": elapsed, "outputs": outputs,
            "cache_hit_rate": hits / max(1, hits + info["misses"] - info0["misses"]),
            "isolation": isolation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--timeout-s", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("workers", "problems", "rollouts", "children"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    batches = make_batches(args.problems, args.rollouts, args.children, args.seed)
    n = sum(len(b) for b in batches)
    runs = {
        "reference_style": bench_reference(batches, args.workers, args.timeout_s),
        "ours_no_cache": bench_ours(batches, args.workers, args.timeout_s, 0),
        "ours_cached": bench_ours(batches, args.workers, args.timeout_s, 1 << 16),
    }
    ref_out = runs["reference_style"]["outputs"]
    report = {
        "host": platform.node(), "cpu_count": os.cpu_count(), "workers": args.workers,
        "programs": n, "unique_programs": len({p for b in batches for p in b}),
        "batches": len(batches),
        # what each approach actually executes: the reference runs every request; our
        # executor dedupes within a batch, and with its cache across batches too
        "executed": {"reference_style": n,
                     "ours_no_cache": sum(len(set(b)) for b in batches),
                     "ours_cached": len({p for b in batches for p in b})},
        "error_outputs": sum("error" in o.lower() for o in ref_out),
        "isolation": runs["ours_no_cache"]["isolation"],
    }
    for name, r in runs.items():
        report[name] = {
            "programs_per_s": round(n / r["elapsed_s"], 1),
            "elapsed_s": round(r["elapsed_s"], 3), "startup_s": round(r["startup_s"], 3),
            "outputs_match_reference_style": sum(a == b for a, b in zip(r["outputs"], ref_out))
            / n,
        }
        if "cache_hit_rate" in r:
            report[name]["cache_hit_rate"] = round(r["cache_hit_rate"], 3)
    base = report["reference_style"]["programs_per_s"]
    report["speedup_vs_reference_style"] = {
        k: round(report[k]["programs_per_s"] / base, 2) for k in ("ours_no_cache", "ours_cached")}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

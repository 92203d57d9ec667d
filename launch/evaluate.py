"""Evaluate a policy (and PPM) on a benchmark, a problem file or a reasoning-gym spec.

  python launch/evaluate.py --policy DIR --problems math500 --modes greedy
  python launch/evaluate.py --policy DIR --ppm DIR --problems aime2024 \
      --modes greedy,best_of_n,beam,mcts --n 16 --runs 4 --out aime.json
  python launch/evaluate.py --policy DIR --problems "reasoning_gym:chain_sum:seed=7,size=50,min_terms=5,max_terms=6"

Modes: greedy (pass@1 at temperature 0, sft_eval_greedy.yaml); best_of_n (N sampled
solutions: maj@N, pass@N and, with --ppm, best-of-N by the PPM's score); beam (step beam
search with the PPM, sft_eval_bs.yaml); mcts (PPM-guided MCTS, sft_eval_mcts.yaml; with
--runs k > 1, k independent runs with the reference's eval_maj.py votes: pass1 of the
top PPM answer, passn, majority and PPM-weighted majority). Sets under 100 problems are
evaluated with --seeds seeds (default 4) and reported as mean and standard error, as
harnesses do for AIME. Prints a table and writes --out (JSON).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rstar_jax import cli  # noqa: E402

MODES = ("greedy", "best_of_n", "beam", "mcts")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with cli.config_flag_errors():
    _SEARCH = config_flags.DEFINE_config_file(
        "search_config", os.path.join(_ROOT, "configs/search.py:eval_mcts"),
        "configs/search.py[:preset] (MCTS settings; its greedy and beam blocks for those modes)")
    _ENGINE = config_flags.DEFINE_config_file(
        "engine_config", os.path.join(_ROOT, "configs/engine.py"), "configs/engine.py[:preset]")
_POLICY = flags.DEFINE_string("policy", None, "Hugging Face policy directory")
_PPM = flags.DEFINE_string("ppm", None, "PPM directory (needed by beam and mcts)")
_PROBLEMS = flags.DEFINE_string(
    "problems", None, "a benchmark name, a .json/.jsonl file, or "
    "reasoning_gym:DATASET:seed=S,size=N[,param=value...]")
_LIMIT = flags.DEFINE_integer("limit", None, "only the first N problems", lower_bound=1)
_MODES = flags.DEFINE_list("modes", ["greedy"], f"any of {','.join(MODES)}")
_N = flags.DEFINE_integer("n", 16, "samples per problem for best_of_n (maj@N)", lower_bound=1)
_RUNS = flags.DEFINE_integer("runs", 1, "independent MCTS runs to vote over", lower_bound=1)
_SEEDS = flags.DEFINE_integer("seeds", None, "seeds (default: 4 below 100 problems, else 1)",
                              lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "sampling temperature for best_of_n",
                                  lower_bound=0.0)
_OUT = flags.DEFINE_string("out", None, "results JSON (optional)")
_WORKERS = flags.DEFINE_integer("executor_workers", max(1, (os.cpu_count() or 2) - 1),
                                "sandboxed Python worker processes", lower_bound=1)
cli.define_distributed_flags()
_EXEC_TIMEOUT = flags.DEFINE_float("executor_timeout_s", 30.0, "per-program limit",
                                   lower_bound=0.01)


def parse_problems(text: str | None, limit: int | None) -> list[dict]:
    """Problems from a benchmark name, a file, or a reasoning-gym spec string."""
    from rstar_jax.data.problems import load_problems
    if not text:
        raise cli.UsageError("--problems is required (a benchmark name, a .json/.jsonl file or "
                             "reasoning_gym:DATASET:seed=S,size=N)")
    if text.startswith("reasoning_gym:"):
        parts = text.split(":", 2)
        if len(parts) < 3 or not parts[1]:
            raise cli.UsageError(f"--problems {text}: expected reasoning_gym:DATASET:seed=S,size=N"
                                 "[,param=value...]")
        kv = {}
        for item in filter(None, parts[2].split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise cli.UsageError(f"--problems {text}: {item!r} is not key=value")
            kv[key.strip()] = json.loads(value) if value.strip().lstrip("-").replace(".", "", 1).isdigit() \
                or value.strip() in ("true", "false") else value.strip()
        for key in ("seed", "size"):
            if key not in kv:
                raise cli.UsageError(f"--problems {text}: {key}=... is required")
        spec = {"kind": "reasoning_gym", "dataset": parts[1], "seed": kv.pop("seed"),
                "size": kv.pop("size"), "params": kv}
    elif text.endswith((".json", ".jsonl")) or os.sep in text:
        spec = {"kind": "file", "path": text, "limit": 0}
    else:
        spec = {"kind": "benchmark", "name": text, "limit": 0}
    with cli.validating():
        probs = load_problems({"problems": spec}, "--problems", dedupe=False)
    probs = probs[:limit] if limit else probs
    if not probs:
        raise cli.UsageError(f"--problems {text}: no problems")
    return probs


def validate():
    from rstar_jax.engine.settings import check_engine_config
    from rstar_jax.search.settings import MCTSSettings
    modes = [m.strip() for m in _MODES.value if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise cli.UsageError(f"--modes {','.join(_MODES.value)}: use some of {','.join(MODES)}")
    with cli.validating():
        settings = MCTSSettings.from_config(_SEARCH.value, "--search_config")
        check_engine_config(_ENGINE.value, "--engine_config")
    policy = cli.check_dir(_POLICY.value, "policy", must_contain=("config.json",),
                           what="Hugging Face policy directory")
    ppm = cli.check_dir(_PPM.value, "ppm", must_contain=("config.json",),
                        what="PPM directory") if _PPM.value else None
    if ppm is None and {"beam", "mcts"} & set(modes):
        raise cli.UsageError("--ppm is required for the beam and mcts modes")
    problems = parse_problems(_PROBLEMS.value, _LIMIT.value)
    out = cli.check_writable_parent(_OUT.value, "out") if _OUT.value else None
    return modes, settings, policy, ppm, problems, out


def evaluate_all(modes, settings, policy, ppm, problems, *, seeds, n, runs, temperature,
                 workers, timeout_s, engine_cfg, ) -> dict:
    """Every mode over every seed: {mode: {"metrics": {key: {"mean", "stderr"}},
    "per_seed": [metrics]}}. With several processes each evaluates its own strided
    shard of the problems on its own devices, and the shards' per-problem records are
    scored together (the same numbers as one process)."""
    import jax

    from rstar_jax import distributed
    from rstar_jax.evolve import evaluate
    from rstar_jax.evolve.models import ModelCache
    from rstar_jax.models import mesh_from_config
    from rstar_jax.search import answers, mcts
    from rstar_jax.search.shards import shard_positions
    from rstar_jax.verify.executor import PythonExecutor
    process = distributed.current()
    positions = shard_positions(len(problems), process.index, process.count)
    mine = [problems[j] for j in positions]
    models = ModelCache(engine_cfg, policy,
                        mesh=mesh_from_config(engine_cfg.mesh, devices=jax.local_devices()))
    scorer = models.scorer(ppm) if ppm else None
    grading = evaluate.Grading()
    results = {}

    def merged(rows):
        """Every process's per-problem rows, back in problem order."""
        out = [None] * len(problems)
        for k, part in enumerate(distributed.gather_objects(rows)):
            for pos, row in zip(shard_positions(len(problems), k, process.count), part,
                                strict=True):
                out[pos] = row
        return out

    with PythonExecutor(workers, timeout_s=timeout_s) as executor:
        for mode in modes:
            per_seed = []
            for seed in seeds:
                if mode == "greedy":
                    prop = models.proposer(policy, stop_tags=settings.greedy.stop_tags, seed=seed)
                    res = evaluate.greedy(mine, prop, executor, settings, grading)
                    metrics = evaluate.pass1_metrics(merged(res["problems"]))
                elif mode == "best_of_n":
                    prop = models.proposer(policy, stop_tags=settings.greedy.stop_tags, seed=seed)
                    res = evaluate.sampled(mine, prop, executor, settings, grading,
                                           n_values=(n,), temperature=temperature, scorer=scorer)
                    metrics = evaluate.sampled_metrics(merged(res["problems"]), grading,
                                                       n_values=(n,), scored=scorer is not None)
                elif mode == "beam":
                    prop = models.proposer(policy, stop_tags=settings.beam.stop_tags, seed=seed)
                    res = evaluate.beam_search(mine, prop, executor, settings, grading,
                                               scorer=scorer)
                    metrics = evaluate.pass1_metrics(merged(res["problems"]))
                elif runs == 1:
                    prop = models.proposer(policy, stop_tags=settings.stop_tags, seed=seed)
                    res = evaluate.guided_mcts(mine, prop, executor, settings, grading,
                                               scorer=scorer)
                    metrics = evaluate.mcts_metrics(merged(res["problems"]), grading)
                else:
                    trees = mcts.search_runs(
                        mine, lambda s: models.proposer(policy, stop_tags=settings.stop_tags,
                                                        seed=s),
                        executor, _with_seed(settings, seed * 1000), scorer, num_runs=runs,
                        progress=False)
                    m = answers.evaluate_runs(trees, grading.correct, grading.equal,
                                              top_n=settings.vote.top_n,
                                              max_node_per_tree=settings.vote.max_node_per_tree)
                    keys = ("pass1", "passn", "majority", "weighted")
                    # Fractions of each shard's problems back to counts, summed over shards.
                    counts = distributed.gather_objects(
                        {k: round(m[k] * len(mine)) for k in keys})
                    metrics = {k: sum(c[k] for c in counts) / max(len(problems), 1)
                               for k in keys}
                per_seed.append(metrics)
            summary = {}
            for key in per_seed[0]:
                mean, se = evaluate.mean_and_stderr([m[key] for m in per_seed])
                summary[key] = {"mean": mean, "stderr": se}
            results[mode] = {"metrics": summary, "per_seed": per_seed}
    return results


def _with_seed(settings, seed):
    import dataclasses
    return dataclasses.replace(settings, seed=seed)


def table(results: dict, problems: int, seeds: list[int]) -> str:
    lines = [f"{problems} problems, {len(seeds)} seed(s)", "",
             f"{'mode':12s} {'metric':16s} {'accuracy':>9s} {'± s.e.':>8s}"]
    for mode, r in results.items():
        for key, v in r["metrics"].items():
            se = f"{100 * v['stderr']:.1f}" if len(seeds) > 1 else "–"
            lines.append(f"{mode:12s} {key:16s} {100 * v['mean']:8.1f}% {se:>8s}")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    modes, settings, policy, ppm, problems, out = validate()
    process = cli.setup_command()
    seeds = list(range(_SEEDS.value or (4 if len(problems) < 100 else 1)))
    t0 = time.perf_counter()
    results = evaluate_all(modes, settings, policy, ppm, problems, seeds=seeds, n=_N.value,
                           runs=_RUNS.value, temperature=_TEMPERATURE.value,
                           workers=_WORKERS.value, timeout_s=_EXEC_TIMEOUT.value,
                           engine_cfg=_ENGINE.value)
    if not process.is_main:
        return
    print(table(results, len(problems), seeds))
    doc = {"problems": _PROBLEMS.value, "num_problems": len(problems), "seeds": seeds,
           "policy": policy, "ppm": ppm, "results": results,
           "seconds": round(time.perf_counter() - t0, 2)}
    if out:
        from rstar_jax.evolve.workdir import write_json_atomic
        write_json_atomic(doc, out)
        print(f"written to {out}")


if __name__ == "__main__":
    cli.run(main)

"""Tree search over a benchmark with a local policy (and optional PPM) checkpoint.

  python launch/search.py --policy <hf dir> --problems math500 --out trees.jsonl \
      [--ppm <ppm dir>] [--mode mcts|beam|greedy] [--limit 100] \
      [--search_config configs/search.py:round2] [--engine_config configs/engine.py]

--problems: a shipped benchmark name (gsm8k, math500, ...) or a local .json/.jsonl file of
{question, answer} records. Data generation (the round presets) backs up graded answers
and needs gold answers; evaluation uses `--search_config configs/search.py:eval_mcts`
(PPM-valued answers). MCTS trees are appended to --out as each problem finishes, and
a rerun with the same --out resumes (finished problems are not searched again). Prints a
JSON summary: problems, solve rate of the best answer when gold answers exist, tokens.
Model code runs only in the sandboxed executor's worker processes.

Several processes (one per host or GPU: `--coordinator_address --num_processes
--process_id`, or a SLURM / Open MPI / TPU-pod launch that JAX detects) split the
problems: each searches its own strided shard with its own engine on its local devices
into `<out>.partI-of-N.jsonl`, and process 0 merges the parts into --out. Rerunning
the same command after a crash redoes only the problems no part holds yet.
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

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with cli.config_flag_errors():
    _SEARCH = config_flags.DEFINE_config_file(
        "search_config", os.path.join(_ROOT, "configs/search.py"), "configs/search.py[:preset]")
    _ENGINE = config_flags.DEFINE_config_file(
        "engine_config", os.path.join(_ROOT, "configs/engine.py"), "configs/engine.py[:preset]")
_POLICY = flags.DEFINE_string("policy", None, "Hugging Face policy directory")
_PPM = flags.DEFINE_string("ppm", None, "PPM directory (save_pretrained with a value head)")
_PROBLEMS = flags.DEFINE_string("problems", None, "benchmark name or .json/.jsonl file")
_LIMIT = flags.DEFINE_integer("limit", None, "only the first N problems", lower_bound=1)
_OUT = flags.DEFINE_string("out", None, "trees JSONL (appended, resumable)")
_MODE = flags.DEFINE_enum("mode", "mcts", ["mcts", "beam", "greedy"], "search algorithm")
_WORKERS = flags.DEFINE_integer("executor_workers", max(1, (os.cpu_count() or 2) - 1),
                                "sandboxed Python worker processes", lower_bound=1)
cli.define_distributed_flags()
_EXEC_TIMEOUT = flags.DEFINE_float("executor_timeout_s", 30.0,
                                   "per-program limit (the reference's python tool: 30 s)",
                                   lower_bound=0.01)


def validate(search_cfg, engine_cfg, *, policy: str | None, ppm: str | None,
             problems: str | None, limit: int | None, out: str | None, mode: str):
    """Every input checked before a model is loaded: (settings, problems, paths)."""
    from rstar_jax.data.benchmarks import load_benchmark
    from rstar_jax.engine.settings import check_engine_config
    from rstar_jax.search.settings import MCTSSettings

    with cli.validating():
        settings = MCTSSettings.from_config(search_cfg, "--search_config")
        check_engine_config(engine_cfg, "--engine_config")
    policy = cli.check_dir(policy, "policy", must_contain=("config.json",),
                           what="Hugging Face policy directory")
    if ppm:
        ppm = cli.check_dir(ppm, "ppm", must_contain=("config.json",), what="PPM directory")
    if not problems:
        raise cli.UsageError("--problems is required (a benchmark name or a .json/.jsonl file)")
    probs = load_benchmark(problems, limit=limit)
    if not probs:
        raise cli.UsageError(f"--problems {problems}: no problems in it")
    if settings.terminal_guided and mode == "mcts" and not all(p.has_answer for p in probs):
        raise cli.UsageError(f"--problems {problems}: terminal-guided search needs a gold answer "
                             "for every problem; use an evaluation preset (terminal_guided=False)")
    out = cli.check_writable_parent(out, "out")
    return settings, probs, policy, ppm, out


def build(policy_dir: str, ppm_dir: str | None, engine_cfg):
    """(proposer, scorer or None, tokenizer) for a policy and optional PPM directory."""
    from rstar_jax.engine import EngineProposer, EngineScorer, engine_from_config
    from rstar_jax.models import (load_ppm, load_pretrained, load_tokenizer, mesh_from_config,
                                  params_of, resize_embeddings)
    import jax
    # Each process searches its own problems: its engine lives on its own devices.
    mesh = mesh_from_config(engine_cfg.mesh, devices=jax.local_devices())
    tok = load_tokenizer(policy_dir)
    policy = load_pretrained(policy_dir, dtype=engine_cfg.dtype)
    if len(tok) > policy.cfg.vocab_size:
        resize_embeddings(policy, tok)   # new tag rows start at the mean embedding
    engine = engine_from_config(params_of(policy), policy.cfg, engine_cfg, tokenizer=tok,
                                mesh=mesh)
    proposer = EngineProposer(engine, tok, max_new_tokens=engine_cfg.max_new_tokens,
                              top_p=engine_cfg.top_p, top_k=engine_cfg.top_k,
                              seed=engine_cfg.seed)
    scorer = None
    if ppm_dir:
        ppm = load_ppm(ppm_dir, dtype=engine_cfg.dtype)
        scorer = EngineScorer(params_of(ppm), ppm.cfg, load_tokenizer(ppm_dir),
                              batch_size=engine_cfg.score_batch,
                              min_len=engine_cfg.score_min_len, max_len=engine_cfg.max_seq_len,
                              mesh=mesh, group_size=engine_cfg.score_group_size)
    return proposer, scorer, tok


def run(search_cfg, engine_cfg, *, policy: str, ppm: str | None, problems: str,
        limit: int | None, out: str, mode: str, workers: int, exec_timeout_s: float,
        progress: bool = True) -> dict:
    """Search every problem and return the summary that the CLI prints (the same on every
    process of a multi-process run)."""
    from rstar_jax import distributed
    from rstar_jax.search import answers, beam, mcts, shards
    from rstar_jax.search.host_tree import resume_from_dump
    from rstar_jax.verify.executor import PythonExecutor

    search_cfg, probs, policy, ppm, out = validate(
        search_cfg, engine_cfg, policy=policy, ppm=ppm, problems=problems, limit=limit,
        out=out, mode=mode)
    process = distributed.current()
    proposer, scorer, _ = build(policy, ppm, engine_cfg)
    show = progress and process.is_main
    t0 = time.perf_counter()
    with PythonExecutor(workers, timeout_s=exec_timeout_s) as executor:
        def search_fn(todo, path):
            """Search `todo`, appending finished trees to `path` (resuming from it)."""
            if mode == "mcts":
                return mcts.search(todo, proposer, executor, search_cfg, scorer,
                                   output_path=path, progress=show)
            if mode == "greedy":
                return mcts.greedy(todo, proposer, executor, search_cfg, output_path=path,
                                   progress=show)
            # Beam search finishes all its problems together: skip those already written.
            done = resume_from_dump(path, mcts.new_trees(todo, mode="bs"))
            rest = [p for i, p in enumerate(todo) if i not in done]
            if rest:
                beam.beam_search(rest, proposer, executor, search_cfg, scorer, output_path=path)
            return None

        if process.multi:
            trees = shards.search_sharded(
                mcts.new_trees(probs, mode="bs" if mode == "beam" else "mcts"), probs,
                search_fn, out, index=process.index, count=process.count,
                barrier=distributed.barrier, name=f"search {out}")
        elif mode == "beam":
            trees = beam.beam_search(probs, proposer, executor, search_cfg, scorer,
                                     output_path=out)
        else:
            trees = search_fn(probs, out)
    graded = [t for t in trees if t.answer is not None]
    solved = sum(1 for t in graded
                 if (best := answers.best_answer(t)) is not None
                 and mcts.grader_equal(best[0], t.answer))
    return {"problems": len(trees), "graded": len(graded),
            "solve_rate": solved / len(graded) if graded else None,
            "tokens_generated": int(distributed.sum_over_processes(proposer.tokens_generated)),
            "seconds": round(time.perf_counter() - t0, 2), "out": os.path.abspath(out),
            "mode": mode, "ppm": bool(ppm), "processes": process.count}


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    process = cli.setup_command()
    summary = run(_SEARCH.value, _ENGINE.value, policy=_POLICY.value, ppm=_PPM.value,
                  problems=_PROBLEMS.value, limit=_LIMIT.value, out=_OUT.value,
                  mode=_MODE.value, workers=_WORKERS.value,
                  exec_timeout_s=_EXEC_TIMEOUT.value)
    if process.is_main:
        print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)

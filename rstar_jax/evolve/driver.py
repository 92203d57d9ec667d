"""Running a self-evolution config over a workdir: check, plan, run the stages, report.

`prepare(config, workdir)` checks everything a run needs (the config, every path, every
problem set, the workdir's earlier config and rounds) without writing anything and
without loading a model; `run(prepared)` then runs each round's stages in order, skips
the ones marked done, times them and writes the report. Killing the process at any point
and running the same command again resumes at the first unfinished stage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from rstar_jax.evolve import stages as st
from rstar_jax.evolve.settings import RunSettings, as_dict
from rstar_jax.evolve.workdir import Workdir, read_json


class PlanError(ValueError):
    """The config, a path, a problem set or the workdir does not allow this run."""


@dataclasses.dataclass
class Prepared:
    settings: RunSettings
    workdir: Workdir
    resolved: dict
    train_problems: list[dict]
    eval_problems: dict[str, list[dict]]
    tokenizer_source: str     # a checkpoint directory, or "tiny" (built locally)


def resolved_config(config: Any) -> dict:
    return json.loads(json.dumps(as_dict(config)))


def prepare(config: Any, workdir: str, *, check_paths: bool = True) -> Prepared:
    """Everything checked, nothing written: raises PlanError naming the problem.

    `check_paths=False` (a dry run) checks the config and the workdir only: missing
    checkpoints are not an error, and problem sets that cannot be read are reported by
    `describe_plan` instead.
    """
    try:
        settings = RunSettings.from_config(config)
    except (ValueError, TypeError, KeyError) as e:
        raise PlanError(str(e)) from e
    wd = Workdir(workdir)
    resolved = resolved_config(config)
    _check_workdir(settings, wd, resolved, dependencies=check_paths)
    m = settings.model
    needs_base = any(not wd.is_done(f"round{r.k}", "policy") for r in settings.rounds)
    if check_paths and m["init"] == "checkpoint" and needs_base:
        _need_checkpoint(m["base"], "config.model.base")
    if check_paths and settings.bootstrap["kind"] == "checkpoint" and \
            settings.rounds[0].k == 1 and not wd.is_done("round1", "search"):
        _need_checkpoint(settings.bootstrap["path"], "config.bootstrap.path")
    tokenizer = m["tokenizer"] or (os.path.expanduser(m["base"]) if m["init"] == "checkpoint" else "")
    if not tokenizer:
        raise PlanError("config.model.tokenizer: a random-init model needs a tokenizer: a "
                        "directory, or 'tiny' for the locally built tiny tokenizer")
    if tokenizer != "tiny" and check_paths and not os.path.isdir(os.path.expanduser(tokenizer)):
        raise PlanError(f"config.model.tokenizer {tokenizer}: no such directory")
    if check_paths:
        train, evals = load_problem_sets(settings)
    else:
        train, evals = _try_load_problem_sets(settings)
    return Prepared(settings, wd, resolved, train, evals, tokenizer)


def _try_load_problem_sets(settings: RunSettings):
    """Problem sets for a dry run: a list, or the reason it cannot be read (a str)."""
    from rstar_jax.data.benchmarks import BenchmarkFormatError
    from rstar_jax.data.problems import load_problems

    def attempt(spec, where, **kw):
        try:
            return load_problems(spec, where, **kw)
        except (BenchmarkFormatError, ValueError, OSError) as e:
            return f"not readable: {e}"
    return (attempt(settings.problems["train"], "config.problems.train"),
            {split: attempt(parts, f"config.problems.eval.{split}", dedupe=False)
             for split, parts in settings.problems["eval"].items()})


def _need_checkpoint(path: str, field: str) -> None:
    full = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(full, "config.json")):
        raise PlanError(f"{field} {path}: no Hugging Face checkpoint there (no config.json); "
                        "download it and pass its local directory")


def load_problem_sets(settings: RunSettings) -> tuple[list[dict], dict[str, list[dict]]]:
    from rstar_jax.data.benchmarks import BenchmarkFormatError
    from rstar_jax.data.problems import load_problems
    try:
        train = load_problems(settings.problems["train"], "config.problems.train")
        evals = {split: load_problems(parts, f"config.problems.eval.{split}", dedupe=False)
                 for split, parts in settings.problems["eval"].items()}
    except (BenchmarkFormatError, ValueError) as e:
        raise PlanError(str(e)) from e
    if not train:
        raise PlanError("config.problems.train: no problems")
    missing = [i for i, p in enumerate(train) if p.get("answer") in (None, "")]
    if missing:
        raise PlanError(f"config.problems.train: problem {train[missing[0]]['index']} has no "
                        "gold answer; terminal-guided MCTS grades every training problem")
    for split, probs in evals.items():
        if not probs:
            raise PlanError(f"config.problems.eval.{split}: no problems")
    return train, evals


def _check_workdir(settings: RunSettings, wd: Workdir, resolved: dict, *,
                   dependencies: bool = True) -> None:
    from rstar_jax.evolve.workdir import config_differences
    if os.path.exists(wd.root) and not os.path.isdir(wd.root):
        raise PlanError(f"--workdir {wd.root} is a file")
    checks = []
    if settings.kind == "run":
        checks.append((os.path.join(wd.root, "config.json"), resolved, "config"))
    for r in settings.rounds:
        checks.append((os.path.join(wd.round_dir(r.k), "config.json"),
                       round_view(resolved, r.k), f"round {r.k} config"))
    for path, current, what in checks:
        if os.path.isfile(path):
            diff = config_differences(read_json(path), current)
            if diff:
                shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
                raise PlanError(f"{path} was written with another {what}; fields that differ: "
                                f"{shown}. Resume with the same config and overrides, or use a "
                                "new --workdir")
    first = settings.rounds[0].k
    if dependencies and first > 1 and not wd.is_done(f"round{first - 1}", "export"):
        raise PlanError(f"round {first} reads round {first - 1}'s exported policy and PPM from "
                        f"{wd.round_dir(first - 1)}/export, which is not finished; run the "
                        "earlier rounds first (or the run config that chains them)")


def round_view(resolved: dict, k: int) -> dict:
    """What round k depends on: the shared sections and its own (not later rounds')."""
    out = {key: v for key, v in resolved.items() if key not in ("rounds", "kind", "control")}
    out["round"] = resolved["rounds"][f"round{k}"]
    return out


# ------------------------------------------------------------------------------ run


def _tokenizer_dir(p: Prepared) -> str:
    if p.tokenizer_source != "tiny":
        return os.path.expanduser(p.tokenizer_source)
    from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
    d = os.path.join(p.workdir.root, "tokenizer")
    if not os.path.isfile(os.path.join(d, "tokenizer.json")):
        tmp = d + ".tmp"
        build_tiny_tokenizer(tmp, extra_corpus=tiny_corpus(p), split_digits=True)
        os.replace(tmp, d)
    return d


def tiny_corpus(p: Prepared) -> list[str]:
    """Text the tiny tokenizer learns its merges from: the training questions and the
    bootstrap's correct solutions to a few of them (so numbers and step words are short)."""
    from rstar_jax.evolve.bootstrap import BootstrapProposer, BootstrapSettings, plan_for
    b = p.settings.bootstrap
    boot = BootstrapProposer(BootstrapSettings(0.0, (1.0, 0, 0, 0), 0,
                                               int(b.get("terms_per_step", 1))))
    texts = []
    for prob in p.train_problems[:400]:
        texts.append(prob["question"])
        if plan_for(prob["question"], boot.settings.terms_per_step) is not None:
            texts.append(boot.solution(prob["question"]))
    return texts


def run(p: Prepared, *, log: Callable[[str], None] = print, process=None) -> dict:
    """Run (or resume) every stage; returns the report.

    process: this process's place in a multi-process run (`distributed.current()`);
    every process runs this with the same arguments, and process 0 writes what is shared.
    """
    from rstar_jax import distributed
    from rstar_jax.evolve import report
    process = process or distributed.Process()
    wd = p.workdir
    if not process.is_main:
        log = _quiet

    def main_first(name: str, fn: Callable[[], Any]) -> Any:
        """Process 0 writes (or checks) a shared file, then the others check it."""
        out = fn() if process.is_main else None
        distributed.barrier(name)
        return out if process.is_main else fn()

    os.makedirs(wd.root, exist_ok=True)
    if p.settings.kind == "run":
        main_first("config", lambda: wd.check_config(os.path.join(wd.root, "config.json"),
                                                      p.resolved, what="config"))
    tokenizer_dir = main_first("tokenizer", lambda: _tokenizer_dir(p))
    ctx = st.Context(p.settings, wd, p.train_problems, p.eval_problems, tokenizer_dir, log=log,
                     process=process)
    try:
        for r in p.settings.rounds:
            unit = f"round{r.k}"
            main_first(f"round {r.k} config", lambda r=r: wd.check_config(
                os.path.join(wd.round_dir(r.k), "config.json"), round_view(p.resolved, r.k),
                what=f"round {r.k} config"))
            for stage in st.STAGES:
                _run_stage(ctx, unit, stage, lambda s=stage, r=r: st.STAGE_FUNCTIONS[s](ctx, r), log)
        if p.settings.control_enabled:
            _run_stage(ctx, "control", "policy", lambda: st.stage_control_policy(ctx), log)
            _run_stage(ctx, "control", "eval", lambda: st.stage_control_eval(ctx), log)
    finally:
        ctx.close()
    rep = report.build(wd, p.settings, p.train_problems, p.eval_problems)
    if process.is_main:
        report.write(wd, rep, plots=p.settings.plots)
    distributed.barrier("report")
    log(f"report: {os.path.join(wd.root, 'report.md')}")
    return rep


def _quiet(message: str) -> None:
    """The log of processes other than 0 (process 0 speaks for the run)."""


def _run_stage(ctx: st.Context, unit: str, stage: str, fn: Callable[[], dict], log) -> None:
    """Run a stage unless it is done; with several processes all run it, then process 0
    marks it done once every process has finished its part."""
    wd = ctx.workdir
    if wd.is_done(unit, stage):
        return
    t0 = time.perf_counter()
    info = fn() or {}
    seconds = time.perf_counter() - t0
    ctx.barrier(f"{unit}/{stage}: finished")
    if ctx.process.is_main:
        wd.mark_done(unit, stage, {"seconds": seconds, **info})
    ctx.barrier(f"{unit}/{stage}: marked done")
    log(f"{unit}/{stage}: done in {seconds:.1f} s")


# -------------------------------------------------------------------------- dry run


def describe_plan(p: Prepared) -> str:
    """The plan in words: rounds, stages (done or to run), problem counts, models, mesh."""
    from rstar_jax.models.config import Qwen2Config
    from rstar_jax.search.settings import MCTSSettings
    s, wd = p.settings, p.workdir
    lines = [f"run {s.name} ({s.kind} config) in {wd.root}"]
    arch = Qwen2Config.from_config_dict(s.model["arch"])
    source = s.model["base"] or s.model["arch"].get("checkpoint") or s.model["arch"].get("name", "")
    lines.append(f"model: {s.model['init']} {source}; "
                 f"shape {arch.num_hidden_layers} layers x {arch.hidden_size} hidden, "
                 f"{arch.num_attention_heads}/{arch.num_key_value_heads} q/kv heads, vocab "
                 f"{arch.vocab_size}, ~{_param_count(arch) / 1e6:.1f}M parameters")
    boot = s.bootstrap
    first = s.rounds[0].k
    if first > 1 and not wd.is_done(f"round{first - 1}", "export"):
        lines.append(f"needs round {first - 1}'s export in {wd.round_dir(first - 1)} "
                     "(not finished there yet)")
    lines.append("bootstrap (round 1 search): " + (boot["path"] if boot["kind"] == "checkpoint"
                 else f"scripted stand-in, mistake rate {boot['mistake_rate']}"))
    lines.append(f"training problems: {_count(p.train_problems, s.problems['train'])}")
    for split in s.problems["eval"]:
        lines.append(f"eval split {split}: {_count(p.eval_problems.get(split), None)}")
    mesh = s.engine.mesh
    lines.append(f"engine: {s.engine.slots} slots x {s.engine.max_seq_len} tokens, {s.engine.dtype}, "
                 f"mesh data={mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor} over "
                 f"{_device_count()} device(s)")
    for r in s.rounds:
        cfg = MCTSSettings.from_config(r.search)
        ppm = "PPM-augmented" if r.use_ppm else "terminal-guided"
        extra = f", then {'/'.join(map(str, r.extra_rollouts))} rollouts for unsolved" \
            if r.extra_rollouts else ""
        lines.append(f"round {r.k}: MCTS {cfg.num_rollouts} rollouts x {cfg.num_children} children, "
                     f"{ppm}{extra}; SFT from {r.policy_init} ({r.sft.epochs} epochs, lr "
                     f"{r.sft.optim.learning_rate}, batch {r.sft.batch_size}, mesh "
                     f"{dict(r.sft.mesh)}); PPM from the round's policy ({r.ppm.epochs} epochs, "
                     f"lr {r.ppm.optim.learning_rate}, batch {r.ppm.batch_size})")
        for stage in st.STAGES:
            lines.append(f"  {stage:7s} {'done' if wd.is_done(f'round{r.k}', stage) else 'to run'}")
    if s.control_enabled:
        lines.append("control: policy r1 trained further on round 1's SFT set for as many "
                     "steps as the later rounds' SFT together; greedy eval")
    return "\n".join(lines)


def _count(probs, spec) -> str:
    if isinstance(probs, str):
        return probs
    return f"{len(probs)} problems"


def _param_count(cfg) -> int:
    from rstar_jax.models.qwen2 import layer_param_shapes
    import math
    layers = sum(math.prod(x) for x in layer_param_shapes(cfg).values())
    emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return layers + emb + cfg.hidden_size


def _device_count() -> int:
    import jax
    return jax.device_count()

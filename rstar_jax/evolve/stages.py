"""The stages of one self-evolution round, each a function of (context, round).

    search   MCTS over the training problems -> search/trees*.jsonl (resumes per problem)
    data     trees -> data/sft.jsonl (top-2 by mean Q) and data/ppm.jsonl (step pairs),
             plus the reference's own files (sft.json, rm.json)
    policy   SFT of the round's policy -> policy/ (orbax state; resumes mid-training)
    ppm      the PPM, initialised from this round's policy (reference issue #29) -> ppm/
    export   Hugging Face directories of both -> export/policy, export/ppm
    eval     greedy, PPM-guided MCTS and test-time scaling -> eval/*.json (one file a unit)

A stage writes into DIR/round<k>/<stage>/ and ends with its DONE marker; a stage that
has one is never run again (workdir.py).

With several processes (JAX's distributed runtime) every process runs every stage:
search and evaluation split the problems between them (`search/shards.py`), training
runs on one mesh over all their devices, and process 0 alone writes the files that are
the same for all (data, export, summaries, markers); the driver puts a barrier after
each stage.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import shutil
import time
from typing import Any, Callable

from rstar_jax import distributed
from rstar_jax import step_format as sf
from rstar_jax.evolve import evaluate
from rstar_jax.evolve.settings import RoundSettings, RunSettings
from rstar_jax.evolve.workdir import Workdir, read_json, write_json_atomic

STAGES = ("search", "data", "policy", "ppm", "export", "eval")
TREES = "trees.jsonl"


@dataclasses.dataclass
class Context:
    """What the stages share: settings, workdir, loaded problems, models, the executor."""

    settings: RunSettings
    workdir: Workdir
    train_problems: list[dict]
    eval_problems: dict[str, list[dict]]
    tokenizer_dir: str
    log: Callable[[str], None] = print
    process: distributed.Process = dataclasses.field(default_factory=distributed.Process)
    _models: Any = None
    _executor: Any = None

    @property
    def models(self):
        if self._models is None:
            import jax

            from rstar_jax.evolve.models import ModelCache
            from rstar_jax.models import mesh_from_config
            # Each process searches its own problems with an engine on its own devices.
            self._models = ModelCache(self.settings.engine, self.tokenizer_dir,
                                      mesh=mesh_from_config(self.settings.engine.mesh,
                                                            devices=jax.local_devices()))
        return self._models

    @property
    def executor(self):
        if self._executor is None:
            from rstar_jax.verify.executor import PythonExecutor
            ex = self.settings.executor
            preload = {} if ex.get("preload") is None else {"preload": tuple(ex["preload"])}
            self._executor = PythonExecutor(ex["workers"], timeout_s=float(ex["timeout_s"]),
                                            memory_limit_mb=int(ex["memory_limit_mb"]), **preload)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def unit(self, k: int) -> str:
        return f"round{k}"

    def stage_dir(self, unit: str, stage: str) -> str:
        d = self.workdir.stage_dir(unit, stage)
        os.makedirs(d, exist_ok=True)
        return d

    def barrier(self, name: str) -> None:
        """Every process waits here (a no-op for one process)."""
        if self.process.multi:
            distributed.barrier(name)

    def search(self, problems: list[dict], path: str, search_fn: Callable[[list, str], Any],
               *, name: str, mode: str = "mcts") -> list:
        """Every problem's tree, in problem order, written to `path` (resumable).

        search_fn(problems, output_path) searches and appends finished trees to the file.
        One process searches everything; several each search their own shard into a part
        file, which process 0 merges into `path`.
        """
        if not self.process.multi:
            trees = search_fn(problems, path)
            _in_problem_order(trees, path)
            return trees
        from rstar_jax.search import mcts, shards
        return shards.search_sharded(mcts.new_trees(problems, mode=mode), problems, search_fn,
                                     path, index=self.process.index, count=self.process.count,
                                     barrier=self.barrier, name=name)

    def export_dir(self, unit: str, what: str) -> str:
        return os.path.join(self.workdir.stage_dir(unit, "export"), what)

    def tokenizer(self):
        return self.models.tokenizer


# -------------------------------------------------------------------------- search


def round_seed(settings: RunSettings, k: int, attempt: int = 0) -> int:
    """The proposer seed of round k's search (attempt > 0: round 4's extra rollouts)."""
    return settings.seed * 1_000_003 + 1000 * k + attempt


def _search_policy(ctx: Context, r: RoundSettings, stop_tags, seed: int):
    s = ctx.settings
    if r.k == 1:
        if s.bootstrap["kind"] == "scripted":
            from rstar_jax.evolve.bootstrap import BootstrapProposer, BootstrapSettings
            b = BootstrapSettings.from_config(s.bootstrap)
            return BootstrapProposer(dataclasses.replace(b, seed=b.seed + seed))
        return ctx.models.proposer(os.path.expanduser(s.bootstrap["path"]), stop_tags=stop_tags,
                                   seed=seed)
    return ctx.models.proposer(ctx.export_dir(ctx.unit(r.k - 1), "policy"), stop_tags=stop_tags,
                               seed=seed)


def _in_problem_order(trees, path: str) -> None:
    """Rewrite a finished search's dump in problem order (atomically).

    The search appends trees as problems finish, and a resumed search finishes them in
    another order; the data rules read the file in order (SFT shuffles and pair sampling
    are seeded), so without this an interrupted run would train on other data.
    """
    from rstar_jax.search.host_tree import save_trees
    tmp = path + ".tmp"
    save_trees(trees, tmp, append=False)
    os.replace(tmp, path)


def solved_by_tree(tree, positive_reward: float) -> bool:
    """The tree holds a correct trajectory: a valid answer leaf graded +1 (terminal-guided)."""
    return any(n.value == positive_reward and n.visit_count > 0
               for n in tree.valid_answer_nodes())


def stage_search(ctx: Context, r: RoundSettings) -> dict:
    from rstar_jax.search import mcts
    from rstar_jax.search.settings import MCTSSettings
    unit = ctx.unit(r.k)
    out = ctx.stage_dir(unit, "search")
    cfg = MCTSSettings.from_config(r.search, f"config.rounds.{unit}.search")
    scorer = ctx.models.scorer(ctx.export_dir(ctx.unit(r.k - 1), "ppm")) if r.use_ppm else None
    proposer = _search_policy(ctx, r, cfg.stop_tags, round_seed(ctx.settings, r.k))
    ctx.log(f"{unit}/search: MCTS over {len(ctx.train_problems)} problems "
            f"({cfg.num_rollouts} rollouts, {cfg.num_children} children"
            f"{', PPM-augmented' if scorer is not None else ', terminal-guided'})")
    trees = ctx.search(ctx.train_problems, os.path.join(out, TREES),
                       lambda todo, path: mcts.search(todo, proposer, ctx.executor, cfg, scorer,
                                                      output_path=path,
                                                      progress=ctx.process.is_main),
                       name=f"{unit}/search")
    tokens = [getattr(proposer, "tokens_generated", None)]
    solved = [solved_by_tree(t, cfg.positive_reward) for t in trees]
    extra = []
    for attempt, rollouts in enumerate(r.extra_rollouts, start=1):
        todo = [p for p, ok in zip(ctx.train_problems, solved) if not ok]
        if not todo:
            break
        more = dataclasses.replace(cfg, num_rollouts=rollouts)
        ctx.log(f"{unit}/search: {len(todo)} problems without a correct trajectory get "
                f"{rollouts} rollouts with a new seed")
        proposer = _search_policy(ctx, r, cfg.stop_tags, round_seed(ctx.settings, r.k, attempt))
        again = ctx.search(todo, os.path.join(out, f"trees_extra{rollouts}.jsonl"),
                           lambda todo, path, more=more, proposer=proposer: mcts.search(
                               todo, proposer, ctx.executor, more, scorer, output_path=path,
                               progress=ctx.process.is_main),
                           name=f"{unit}/search extra {rollouts}")
        tokens.append(getattr(proposer, "tokens_generated", None))
        fixed = {t.question for t in again if solved_by_tree(t, cfg.positive_reward)}
        solved = [ok or p["question"] in fixed for p, ok in zip(ctx.train_problems, solved)]
        extra.append({"rollouts": rollouts, "problems": len(todo), "newly_solved": len(fixed)})
    summary = {"problems": len(trees), "solve_rate": _mean(solved),
               "solve_rate_by_part": _by_part(ctx.train_problems, solved, "source"),
               "solve_rate_by_difficulty": _by_part(ctx.train_problems, solved, "num_terms"),
               "nodes": sum(len(t.nodes) for t in trees),
               # Counted in the trees, so a resumed or split search counts the same.
               "context_full": sum(n.final_answer == sf.CONTEXT_FULL
                                   for t in trees for n in t.nodes),
               # Generated by this command's processes (a resumed search counts only the rest).
               "tokens_generated": _tokens_over_processes(tokens),
               "extra_rollouts": extra}
    if ctx.process.is_main:
        write_json_atomic(summary, os.path.join(out, "summary.json"))
    return summary


def _tokens_over_processes(counts: list) -> int | None:
    if any(c is None for c in counts):
        return None
    return int(distributed.sum_over_processes(float(sum(counts))))


def _by_part(problems: list[dict], flags: list[bool], key: str) -> dict:
    groups: dict[str, list[bool]] = collections.defaultdict(list)
    for p, f in zip(problems, flags):
        if key in p:
            groups[str(p[key])].append(f)
    return {g: _mean(v) for g, v in sorted(groups.items())}


def _mean(xs) -> float:
    xs = list(xs)
    return sum(map(bool, xs)) / len(xs) if xs else 0.0


# ---------------------------------------------------------------------------- data


def _trees_files(ctx: Context, k: int) -> list[str]:
    d = ctx.workdir.stage_dir(ctx.unit(k), "search")
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.startswith("trees") and f.endswith(".jsonl"))


def stage_data(ctx: Context, r: RoundSettings) -> dict:
    from rstar_jax.data import ppm_pairs, sft_data
    from rstar_jax.data.rstar_trees import load_tree_records
    unit = ctx.unit(r.k)
    out = ctx.stage_dir(unit, "data")
    d = ctx.settings.data
    this = [rec for f in _trees_files(ctx, r.k) for rec in load_tree_records(f)]
    sft_records = this
    if r.sft_trees == "all":
        sft_records = [rec for k in range(1, r.k) for f in _trees_files(ctx, k)
                       for rec in load_tree_records(f)] + this
    rows = sft_data.build_sft_rows(sft_records, top_k=d.sft.top_k,
                                   banned_substring=d.sft.banned_substring,
                                   shuffle_seed=d.sft.shuffle_seed,
                                   reference_newlines=d.sft.reference_newlines)
    if not rows:
        raise RuntimeError(f"{unit}: the search found no correct trajectory, so there is no SFT "
                           "data; search more (rollouts, children) or check the problems' golds")
    pairs = ppm_pairs.build_ppm_pairs(this, ppm_pairs.rules_from_config(d.ppm))
    summary = {"trees": len(this), "sft_rows": len(rows),
               "sft_questions": len({x["question"] for x in rows}), "ppm_pairs": len(pairs)}
    if not ctx.process.is_main:    # every process computes the same rows; one writes them
        return summary
    sft_data.write_sft_jsonl(rows, os.path.join(out, "sft.jsonl"))
    sft_data.write_reference_sft_json(rows, os.path.join(out, "sft.json"))
    ppm_pairs.write_ppm_jsonl(pairs, os.path.join(out, "ppm.jsonl"),
                              reference_newlines=d.ppm.reference_newlines)
    ppm_pairs.write_reference_ppm_json(pairs, os.path.join(out, "rm.json"))
    write_json_atomic(summary, os.path.join(out, "summary.json"))
    ctx.log(f"{unit}/data: {summary['sft_rows']} SFT rows over {summary['sft_questions']} "
            f"problems, {summary['ppm_pairs']} PPM pairs")
    return summary


# ------------------------------------------------------------------------ training


def base_policy(ctx: Context):
    """The model every round's SFT starts from (fp32 masters)."""
    from flax import nnx

    from rstar_jax.models import (Qwen2Config, Qwen2ForCausalLM, load_pretrained,
                                  resize_embeddings)
    m = ctx.settings.model
    tok = ctx.tokenizer()
    if m["init"] == "random":
        arch = dict(m["arch"])
        arch["vocab_size"] = len(tok)
        cfg = Qwen2Config.from_config_dict(arch)
        return Qwen2ForCausalLM(cfg, dtype="float32", rngs=nnx.Rngs(ctx.settings.seed))
    policy = load_pretrained(os.path.expanduser(m["base"]), dtype="float32")
    if len(tok) > policy.cfg.vocab_size:
        resize_embeddings(policy, tok)
    return policy


def _sft_steps(config, num_rows: int) -> int:
    from rstar_jax.train.data import BatchPlan
    from rstar_jax.train.trainer import total_steps_of
    plan = BatchPlan(num_rows, int(config.batch_size), int(config.micro_batch_size),
                     int(config.epochs), int(config.data_seed))
    return total_steps_of(config, plan)


def train_policy(ctx: Context, unit: str, config, init_model, rows: list[dict]) -> dict:
    from rstar_jax.models import mesh_from_config
    from rstar_jax.train import train_sft
    from rstar_jax.train.metrics import read_metrics
    out = ctx.stage_dir(unit, "policy")
    ctx.log(f"{unit}/policy: SFT on {len(rows)} rows, about {_sft_steps(config, len(rows))} steps")
    train_sft(config, init_model, rows, ctx.tokenizer(), out, mesh=mesh_from_config(config.mesh))
    logged = [m for m in read_metrics(os.path.join(out, "metrics_sft.jsonl")) if "loss" in m]
    return {"rows": len(rows), "steps": int(logged[-1]["step"]) if logged else 0,
            "final_loss": float(logged[-1]["loss"]) if logged else None}


def stage_policy(ctx: Context, r: RoundSettings) -> dict:
    from rstar_jax.models import load_pretrained
    from rstar_jax.train.data import read_jsonl
    unit = ctx.unit(r.k)
    rows = read_jsonl(os.path.join(ctx.workdir.stage_dir(unit, "data"), "sft.jsonl"))
    if r.policy_init == "previous" and r.k > 1:
        model = load_pretrained(ctx.export_dir(ctx.unit(r.k - 1), "policy"), dtype="float32",
                                remat=bool(r.sft.remat))
    else:
        model = base_policy(ctx)
    return train_policy(ctx, unit, r.sft, model, rows)


def stage_ppm(ctx: Context, r: RoundSettings) -> dict:
    from rstar_jax.models import Qwen2PPM, load_pretrained, mesh_from_config, save_pretrained
    from rstar_jax.train import train_ppm
    from rstar_jax.train.data import read_jsonl
    from rstar_jax.train.metrics import read_metrics
    unit = ctx.unit(r.k)
    out = ctx.stage_dir(unit, "ppm")
    policy = load_pretrained(os.path.join(ctx.workdir.stage_dir(unit, "policy"), "policy"),
                             dtype="float32", remat=bool(r.ppm.remat))
    # Each round the PPM starts from this round's policy (reference issue #29, §4.5).
    ppm = Qwen2PPM.from_policy(policy, seed=int(r.ppm.seed))
    rows = read_jsonl(os.path.join(ctx.workdir.stage_dir(unit, "data"), "ppm.jsonl"))
    if not rows:
        ctx.log(f"{unit}/ppm: no preference pairs; the PPM keeps its initial value head")
        if ctx.process.is_main:
            save_pretrained(ppm, os.path.join(out, "ppm"), tokenizer=ctx.tokenizer())
        return {"pairs": 0, "trained": False, "pair_accuracy": None}
    ctx.log(f"{unit}/ppm: {len(rows)} pairs")
    train_ppm(r.ppm, ppm, rows, ctx.tokenizer(), out, mesh=mesh_from_config(r.ppm.mesh))
    final = [m for m in read_metrics(os.path.join(out, "metrics_ppm.jsonl"))
             if m.get("event") == "final_eval"]
    acc = final[-1]["eval_accuracy"] if final else None
    return {"pairs": len(rows), "trained": True, "pair_accuracy": acc,
            "held_out_pairs": final[-1].get("eval_pairs") if final else 0}


def stage_export(ctx: Context, r: RoundSettings) -> dict:
    unit = ctx.unit(r.k)
    out = ctx.stage_dir(unit, "export")
    if not ctx.process.is_main:    # copies of files every process can read
        return {"policy": os.path.join(out, "policy"), "ppm": os.path.join(out, "ppm")}
    for what, src in (("policy", os.path.join(ctx.workdir.stage_dir(unit, "policy"), "policy")),
                      ("ppm", os.path.join(ctx.workdir.stage_dir(unit, "ppm"), "ppm"))):
        dst = os.path.join(out, what)
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        ctx.tokenizer().save_pretrained(tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        _check_opens_in_transformers(dst)
    return {"policy": os.path.join(out, "policy"), "ppm": os.path.join(out, "ppm")}


def _check_opens_in_transformers(path: str) -> None:
    """transformers reads the exported config and tokenizer (the weights need torch, which
    the tests use to load them fully)."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type != "qwen2":
        raise RuntimeError(f"{path}: exported config has model_type {cfg.model_type!r}")


# ---------------------------------------------------------------------------- eval


def eval_seeds(ctx: Context, split: str) -> list[int]:
    e = ctx.settings.eval
    n = e.small_set_seeds if len(ctx.eval_problems[split]) < e.small_set else 1
    return [ctx.settings.seed + i for i in range(n)]


def _unit_file(out: str, mode: str, split: str) -> str:
    return os.path.join(out, f"{mode}.{split}.json")


def run_eval_unit(ctx: Context, out: str, mode: str, split: str,
                  fn: Callable[[int, list], dict], metrics_fn: Callable[[list], dict]) -> dict:
    """One (mode, split) evaluation over its seeds, written atomically; skipped when its
    file exists (a resumed eval stage redoes only unfinished units).

    fn(seed, problems) evaluates problems (`evaluate.greedy` and friends);
    metrics_fn(rows) scores per-problem rows, so that several processes can each
    evaluate a shard and process 0 scores the merged rows.
    """
    path = _unit_file(out, mode, split)
    if os.path.isfile(path):
        return read_json(path)
    t0 = time.perf_counter()
    seeds = eval_seeds(ctx, split) if mode != "greedy" else [ctx.settings.seed]
    problems = ctx.eval_problems[split]
    if ctx.process.multi:
        rows, trees = _eval_shards(ctx, path, problems, seeds, fn)
    else:
        runs = [fn(seed, problems) for seed in seeds]
        rows = [run["problems"] for run in runs]
        trees = runs[0].get("trees")
        if trees is not None:
            trees = [t.to_record() for t in trees]
    result = None
    if ctx.process.is_main:
        runs_metrics = [metrics_fn(r) for r in rows]
        metrics = {}
        for key in runs_metrics[0]:
            mean, se = evaluate.mean_and_stderr([m[key] for m in runs_metrics])
            metrics[key] = mean
            if len(runs_metrics) > 1:
                metrics[f"{key}_stderr"] = se
        result = {"mode": mode, "split": split, "problems": len(problems),
                  "seeds": seeds, "metrics": metrics, "per_problem": rows,
                  "seconds": time.perf_counter() - t0}
        if trees is not None:
            _write_tree_records(trees, path.replace(".json", ".trees.jsonl"))
        write_json_atomic(result, path)
        for part in _eval_parts(path, ctx.process.count):
            if os.path.exists(part):
                os.remove(part)
        ctx.log(f"  {mode} on {split}: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()
                                                     if not k.endswith("stderr")))
    if ctx.process.multi:
        ctx.barrier(f"{path}: written")
        return read_json(path)
    return result


def _write_tree_records(records: list[dict], path: str) -> None:
    """Tree records as JSONL, atomically."""
    from rstar_jax.search.host_tree import save_tree_records
    tmp = path + ".tmp"
    save_tree_records(records, tmp, append=False)
    os.replace(tmp, path)


def _eval_parts(path: str, count: int) -> list[str]:
    base = path[:-len(".json")]
    return [f"{base}.part{i:05d}-of-{count:05d}.json" for i in range(count)]


def _eval_shards(ctx: Context, path: str, problems: list, seeds: list[int], fn):
    """This process's shard of one evaluation unit, written to its part file (kept on a
    rerun); then, on process 0 only (which removes the parts once the unit is written),
    every part's rows merged in problem order: (rows per seed, tree records of the first
    seed or None). Other processes get (None, None)."""
    from rstar_jax.search.shards import shard_positions
    i, n = ctx.process.index, ctx.process.count
    parts = _eval_parts(path, n)
    if not os.path.isfile(parts[i]):
        mine = [problems[j] for j in shard_positions(len(problems), i, n)]
        runs = [fn(seed, mine) for seed in seeds]
        trees = runs[0].get("trees")
        write_json_atomic({"rows": [run["problems"] for run in runs],
                           "trees": None if trees is None else [t.to_record() for t in trees]},
                          parts[i], indent=None)
    ctx.barrier(f"{path}: evaluated")
    if not ctx.process.is_main:
        return None, None
    rows: list[list] = [[None] * len(problems) for _ in seeds]
    trees: list | None = [None] * len(problems)
    for k, part in enumerate(parts):
        got = read_json(part)
        positions = shard_positions(len(problems), k, n)
        for r, run_rows in enumerate(got["rows"]):
            for pos, row in zip(positions, run_rows, strict=True):
                rows[r][pos] = row
        if got["trees"] is None:
            trees = None
        elif trees is not None:
            for pos, rec in zip(positions, got["trees"], strict=True):
                trees[pos] = rec
    return rows, trees


def evaluate_policy(ctx: Context, unit: str, policy_dir: str, ppm_dir: str | None, *,
                    scaling: bool) -> dict:
    """Greedy on every greedy split; with a PPM, PPM-guided MCTS; with `scaling`, the
    test-time scaling curves (paper Fig. 3)."""
    from rstar_jax.search.settings import MCTSSettings
    e = ctx.settings.eval
    out = ctx.stage_dir(unit, "eval")
    grading = evaluate.Grading()
    search = MCTSSettings.from_config(e.search, "config.eval.search")
    greedy_prop = ctx.models.proposer(policy_dir, stop_tags=search.greedy.stop_tags, seed=0)
    results = {}
    for split in e.greedy_splits:
        results[("greedy", split)] = run_eval_unit(
            ctx, out, "greedy", split,
            lambda seed, probs: evaluate.greedy(probs, greedy_prop, ctx.executor, search,
                                                grading),
            evaluate.pass1_metrics)
    if ppm_dir is None:
        return results
    scorer = ctx.models.scorer(ppm_dir)

    def mcts_run(settings, n_values):
        def fn(seed, probs):
            prop = ctx.models.proposer(policy_dir, stop_tags=settings.stop_tags, seed=seed)
            return evaluate.guided_mcts(probs, prop, ctx.executor, settings, grading,
                                        scorer=scorer, n_values=n_values)
        return fn

    def mcts_scores(n_values):
        return lambda rows: evaluate.mcts_metrics(rows, grading, n_values=n_values)

    for split in e.mcts_splits:
        results[("mcts", split)] = run_eval_unit(ctx, out, "mcts", split, mcts_run(search, ()),
                                                 mcts_scores(()))
    if scaling:
        n_max = max(e.scaling_n)
        deep = dataclasses.replace(search, num_rollouts=max(search.num_rollouts, n_max))
        for split in e.scaling_splits:
            def sample_fn(seed, probs):
                prop = ctx.models.proposer(policy_dir, stop_tags=search.greedy.stop_tags,
                                           seed=seed)
                return evaluate.sampled(probs, prop, ctx.executor, search, grading,
                                        n_values=e.scaling_n, temperature=e.sample_temperature,
                                        scorer=scorer)
            results[("sample", split)] = run_eval_unit(
                ctx, out, "sample", split, sample_fn,
                lambda rows: evaluate.sampled_metrics(rows, grading, n_values=e.scaling_n,
                                                      scored=True))
            results[("mcts_scaling", split)] = run_eval_unit(
                ctx, out, "mcts_scaling", split, mcts_run(deep, e.scaling_n),
                mcts_scores(e.scaling_n))
    return results


def stage_eval(ctx: Context, r: RoundSettings) -> dict:
    unit = ctx.unit(r.k)
    ctx.log(f"{unit}/eval")
    res = evaluate_policy(ctx, unit, ctx.export_dir(unit, "policy"), ctx.export_dir(unit, "ppm"),
                          scaling=r.k == ctx.settings.last_round)
    return {f"{mode}.{split}": v["metrics"] for (mode, split), v in res.items()}


STAGE_FUNCTIONS = {"search": stage_search, "data": stage_data, "policy": stage_policy,
                   "ppm": stage_ppm, "export": stage_export, "eval": stage_eval}


# ------------------------------------------------------------------------- control


def control_steps(ctx: Context) -> int:
    """Optimizer steps rounds 2..N spent on policy SFT, together."""
    return sum(int(ctx.workdir.done_info(ctx.unit(k), "policy")["steps"])
               for k in range(2, ctx.settings.last_round + 1))


def stage_control_policy(ctx: Context) -> dict:
    """Policy r1 trained further on round 1's SFT set for as many steps as rounds 2..N used."""
    from rstar_jax.models import load_pretrained
    from rstar_jax.train.data import read_jsonl
    r1 = ctx.settings.rounds[0]
    rows = read_jsonl(os.path.join(ctx.workdir.stage_dir("round1", "data"), "sft.jsonl"))
    steps = control_steps(ctx)
    config = r1.sft.copy_and_resolve_references()
    per_epoch = max(1, _sft_steps(_with(config, epochs=1, max_steps=-1), len(rows)))
    with config.unlocked():
        config.epochs = max(1, math.ceil(steps / per_epoch))
        config.max_steps = steps
    model = load_pretrained(ctx.export_dir("round1", "policy"), dtype="float32",
                            remat=bool(config.remat))
    info = train_policy(ctx, "control", config, model, rows)
    return {**info, "matched_steps": steps}


def _with(config, **kw):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for k, v in kw.items():
            c[k] = v
    return c


def stage_control_eval(ctx: Context) -> dict:
    ctx.log("control/eval")
    policy = os.path.join(ctx.workdir.stage_dir("control", "policy"), "policy")
    res = evaluate_policy(ctx, "control", policy, None, scaling=False)
    return {f"{mode}.{split}": v["metrics"] for (mode, split), v in res.items()}

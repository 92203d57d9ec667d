"""Self-evolution configs: the four rounds of rStar-Math (arXiv 2501.04519 §3.3, Table 2)
as ml_collections ConfigDicts for `launch/evolve.py`.

`round_config(k, preset)` is one round (it reads the previous round's outputs from the
workdir); `run_config(preset)` chains rounds 1-4. The per-model files in
configs/qwen2.5-math-7b/ and configs/qwen2.5-math-1.5b/ call these. Every number names
its source: the paper (§ / Table), or the reference (rstar_reference.md §, which quotes
microsoft/rStar's yaml and scripts). Models and problem files are local paths the user
gives (`--config.model.base=...`); nothing is downloaded.

A run config:
  kind         "run" (chains config.rounds) or "round" (config.rounds holds one round)
  model        the base policy every round's SFT starts from, and its tokenizer
  bootstrap    round 1's search policy: a local checkpoint (paper: DeepSeek-Coder-V2-
               Instruct; here any Qwen2-family model) or the scripted stand-in (tiny)
  problems     train: {part: spec}; eval: {split: {part: spec}} (data/problems.py specs)
  engine       configs/engine.py;  executor: the sandbox's workers and limits
  data         configs/data.py (SFT selection and PPM pair rules)
  eval         what each round's evaluation runs
  control      the same-compute control (policy r1 trained longer on round 1's data)
  rounds       round<k>: search (configs/search.py), use_ppm, extra_rollouts, sft
               (configs/train_sft.py), ppm (configs/train_ppm.py), policy_init
"""

from __future__ import annotations

import ml_collections

from configs import data as data_config
from configs import engine as engine_config
from configs import model as model_config
from configs import search as search_config
from configs import train_ppm as ppm_config
from configs import train_sft as sft_config

# Local checkpoint directories the user downloads (Hugging Face names in comments).
MODELS = {
    "qwen2.5-math-7b": "~/ckpt/Qwen2.5-Math-7B",       # Qwen/Qwen2.5-Math-7B (paper §4.1)
    "qwen2.5-math-1.5b": "~/ckpt/Qwen2.5-Math-1.5B",   # Qwen/Qwen2.5-Math-1.5B (paper §4.1)
}
# Round 1's bootstrap policy: the paper uses DeepSeek-Coder-V2-Instruct (236B, §3.3);
# our engine runs Qwen2-family decoders, so any local Qwen2-family checkpoint goes here.
BOOTSTRAP = "~/ckpt/bootstrap-policy"
# The paper's 747k math word problems (§3.3, "747k math word problems"); a local file.
TRAIN_PROBLEMS = "~/data/rstar_math_problems.jsonl"
# Evaluation sets of the paper's Table 5, shipped with the package (rstar_jax/data/benchmarks).
EVAL_BENCHMARKS = ("math500", "aime2024", "amc23", "olympiadbench", "collegemath", "gsm8k",
                   "gaokao2023en", "omni_math", "math")


def benchmark(name: str, limit: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"kind": "benchmark", "name": name, "limit": limit})


def problem_file(path: str, limit: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"kind": "file", "path": path, "limit": limit})


def reasoning_gym(dataset: str, params: dict, seed: int, size: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"kind": "reasoning_gym", "dataset": dataset,
                                      "params": dict(params), "seed": seed, "size": size})


def round_section(k: int) -> ml_collections.ConfigDict:
    """Round k's own settings (paper §3.3, Table 2; reference §2.8, §8)."""
    r = ml_collections.ConfigDict()
    if k == 1:
        # Round 1: terminal-guided MCTS with the bootstrap policy, 8 rollouts (paper §3.3
        # "limited to 8 rollouts"; maintainer in issue #26), 12 children, T = 0.7, two
        # consecutive code errors end a branch (sample_mcts.yaml, §2.8).
        r.search = search_config.get_config("round1")
        r.use_ppm = False
    elif k == 2:
        # Round 2: MCTS with policy r1, still terminal-guided: PPM r1 is not used in search
        # (paper §3.3 Round 2), 16 rollouts (paper; issue #20).
        r.search = search_config.get_config("round2")
        r.use_ppm = False
    else:
        # Rounds 3-4: PPM-augmented MCTS with the previous round's policy and PPM (§3.3).
        r.search = search_config.get_config("round3")
        r.use_ppm = True
    # Round 4: problems with no correct trajectory after the regular rollouts are searched
    # again with more rollouts and new seeds (paper §3.3 Round 4: 64, then 128).
    r.extra_rollouts = (64, 128) if k == 4 else ()
    r.sft = sft_config.get_config()   # paper §4.1 / reference §4.4: lr 7e-6, 2 epochs, batch 128
    r.ppm = ppm_config.get_config()   # reference §4.5: lr 7e-6, 2 epochs, 512 pairs per step
    # Each round's policy is fine-tuned from the base model on that round's SFT set (paper
    # §3.3: "fine-tune the base model"); "previous" continues from policy r(k-1).
    r.policy_init = "base"
    # Which rounds' trees feed this round's SFT set: "this" (the reference's scripts run on
    # one round's MCTS output) or "all" (every round so far, pooled by question).
    r.sft_trees = "this"
    return r


def base_config(preset: str) -> ml_collections.ConfigDict:
    """Everything but the rounds, for a paper-scale model preset."""
    if preset not in MODELS:
        raise ValueError(f"configs/rounds.py: unknown preset {preset!r}; choose one of {sorted(MODELS)}")
    c = ml_collections.ConfigDict()
    c.name = f"rstar-math-{preset}"
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        base=MODELS[preset],   # local HF checkpoint directory (user-given)
        # configs/model.py shapes: --dry_run prints them without weights; a run reads the
        # checkpoint's own config.json.
        arch=model_config.get_config(preset),
        tokenizer="",          # "" = the base checkpoint's tokenizer (+ step tags, §3.2)
        init="checkpoint",     # "random": a random init of `preset` (the tiny default)
    ))
    c.bootstrap = ml_collections.ConfigDict(dict(kind="checkpoint", path=BOOTSTRAP))
    c.problems = ml_collections.ConfigDict()
    c.problems.train = ml_collections.ConfigDict({"train": problem_file(TRAIN_PROBLEMS)})
    c.problems.eval = ml_collections.ConfigDict(
        {name: ml_collections.ConfigDict({name: benchmark(name)}) for name in EVAL_BENCHMARKS})
    c.engine = engine_config.get_config("default")
    c.executor = ml_collections.ConfigDict(dict(
        workers=12,            # pebble ProcessPool(max_workers=12) in the reference (§2.11)
        timeout_s=30.0,        # python_tool TIMEOUT_SECONDS = 30 (§3.4)
        memory_limit_mb=1024,  # ours: the reference has no memory limit
        # Modules each worker imports once before forking programs; None: the executor's
        # DEFAULT_PRELOAD (math, sympy, numpy, scipy, ...), so model code starts warm.
        preload=None,
    ))
    c.data = data_config.get_config()
    c.eval = ml_collections.ConfigDict()
    # Greedy pass@1 of each round's policy on every split (sft_eval_greedy.yaml, §2.8).
    c.eval.greedy_splits = tuple(EVAL_BENCHMARKS)
    # PPM-guided MCTS pass@1 of each round with a PPM (sft_eval_mcts.yaml: 32 children,
    # 12 rollouts, §2.8); the costly mode, so on the smaller sets.
    c.eval.mcts_splits = ("math500", "aime2024", "amc23")
    c.eval.search = search_config.get_config("eval_mcts")
    # Test-time scaling (paper Fig. 3): N trajectories for majority vote, best-of-N with the
    # PPM and PPM-guided MCTS, for the last round, on these splits.
    c.eval.scaling_splits = ("math500",)
    c.eval.scaling_n = (1, 2, 4, 8, 16)
    c.eval.sample_temperature = 1.0   # sampling temperature of the reference's eval yamls (§2.8)
    # Sets under this many problems are evaluated with this many seeds, mean and standard
    # error reported (AIME 2024 has 30 problems, AMC 2023 40).
    c.eval.small_set = 100
    c.eval.small_set_seeds = 4
    # PPM pair accuracy is measured on the held-out pairs of the PPM's own training
    # (configs/train_ppm.py holdout_fraction, §4.5: 5%).
    c.control = ml_collections.ConfigDict(dict(enabled=False))
    c.report = ml_collections.ConfigDict(dict(plots=True))
    return c


def run_config(preset: str, rounds=(1, 2, 3, 4)) -> ml_collections.ConfigDict:
    """The four rounds chained (paper §3.3)."""
    c = base_config(preset)
    c.kind = "run"
    c.rounds = ml_collections.ConfigDict({f"round{k}": round_section(k) for k in rounds})
    return c


def round_config(k: int, preset: str) -> ml_collections.ConfigDict:
    """Round k alone; rounds before k must have finished in the same workdir."""
    c = base_config(preset)
    c.kind = "round"
    c.rounds = ml_collections.ConfigDict({f"round{k}": round_section(k)})
    return c

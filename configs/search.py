"""Search section of a round config (MCTS, step beam search, greedy, answer voting).

`get_config(preset)` returns an ml_collections ConfigDict; the round configs embed it as
`config.search`. Presets follow the reference's run-mode files (rstar_reference.md §2.8):
  round1     sample_mcts.yaml, with the paper's 8 rollouts (issue #26)
  round2     sft_sample_mcts.yaml, with the paper's 16 rollouts (issue #20); searched
             without a PPM in round 2 (the paper does not search with PPM r1, Table 2)
  round3     the same settings, PPM-augmented (a scorer is given) in rounds 3 and 4
  eval_mcts  sft_eval_mcts.yaml
  eval_bs    sft_eval_bs.yaml (only the `beam` section is used)
  greedy     sft_eval_greedy.yaml (only the `greedy` section is used)
Every number names its source. Where we fix a reference quirk, the switch is named here.
"""

from __future__ import annotations

import ml_collections

PRESETS = ("round1", "round2", "round3", "eval_mcts", "eval_bs", "greedy")
# Stop strings of the reference's run modes (rstar_reference.md §2.8): every search
# stops after one step; round 1 also at <end_of_output> (sample_mcts.yaml); greedy only
# after the whole code block or the answer (sft_eval_greedy.yaml).
STEP_STOP_TAGS = ("<end_of_step>", "<end_of_code>", "<end_of_answer>")
ROUND1_STOP_TAGS = ("<end_of_step>", "<end_of_code>", "<end_of_output>", "<end_of_answer>")
GREEDY_STOP_TAGS = ("<end_of_code>", "<end_of_answer>")


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
    """The search config for `preset` (default "round2")."""
    preset = preset or "round2"
    if preset not in PRESETS:
        raise ValueError(f"configs/search.py: unknown preset {preset!r}; choose one of {PRESETS}")
    c = ml_collections.ConfigDict()
    # --- MCTS (§2) ---
    c.num_rollouts = 16          # paper's later rounds (issue #20); the yaml ships 48 (§2.8)
    c.num_children = 12          # n_generate_sample in sample_mcts/sft_sample_mcts.yaml (§2.8)
    c.temperature = 1.0          # sft_sample_mcts.yaml (§2.8)
    c.max_depth = 16             # max_depth in every MCTS yaml (§2.8)
    c.c_puct = 2.0               # c_puct in every yaml, BaseConfig default 2 (§2.3)
    # "zero": an unvisited child scores exactly 0 as in the reference (§2.3, quirk 1);
    # "inf": the textbook UCT choice of visiting every child first.
    c.unvisited_score = "zero"
    c.errors_threshold = 1       # sft_sample_mcts.yaml; round 1 uses 2 (§2.8, §3.5)
    c.positive_reward = 1.0      # BaseConfig positive_reward (§2.5)
    c.negative_reward = -1.0     # BaseConfig negative_reward (§2.5)
    # is_sampling: grade answer steps against the gold answer and back up +1/-1 at
    # creation (terminal-guided annotation, §2.5). False at inference: answer steps back
    # up their PPM score instead (§2.7).
    c.terminal_guided = True
    # update_leaf_value: a new non-terminal child gets its PPM score as its first value
    # (one visit, not propagated, §2.7). Only used when a scorer is given.
    c.ppm_init_children = True
    # The reference flags a code step as failed when its output contains "error" in any
    # case (§3.5, quirk 5), so a program printing "Error: none" fails. False: a step fails
    # only when its program raised or ended abnormally (the executor's `error`) or timed out.
    c.error_substring = True
    c.batch_size = 3000          # problems advanced in lock-step; sft_sample_mcts.yaml (§2.8)
    c.initial_num_slots = 256    # node slots allocated per tree; trees grow by doubling
    # Chunks searched at once (ours): with 2, one chunk's code runs and grading happen on
    # the host while the device generates the other's next level; 1 is the plain serial
    # path. The trees are the same either way.
    c.chunks_in_flight = 2
    c.seed = 0                   # first run's seed; run r uses seed + r (fixes quirk 8, §2.4)
    # The reference puts "\n\n" before <|assistant|> at search time but "\n" in training
    # (§3.1, quirk 9); False uses the training form everywhere (step_format.build_prompt).
    c.reference_prompt_newlines = False
    # The reference reads an answer step's final answer only from the text before its
    # first ".\n", less a trailing "." (§3.6, quirk 6), so "...sum.\nSo \boxed{12}" has
    # no box. True cuts as it does (comparison runs); False (ours) reads the whole step.
    c.reference_answer_cut = False
    c.stop_tags = STEP_STOP_TAGS  # sft_sample_mcts.yaml `stop` (§2.8)

    # --- step-level beam search (§2.10, sft_eval_bs.yaml) ---
    c.beam = ml_collections.ConfigDict()
    c.beam.width = 8             # step_beam_width (§2.8)
    c.beam.num_samples = 8       # n_generate_sample (§2.8)
    c.beam.max_depth = 16        # max_depth (§2.8)
    c.beam.temperature = 1.0     # temperature (§2.8)
    c.beam.stop_tags = STEP_STOP_TAGS  # sft_eval_bs.yaml `stop` (§2.8)

    # --- greedy decoding (sft_eval_greedy.yaml) ---
    c.greedy = ml_collections.ConfigDict()
    c.greedy.max_depth = 2       # the whole code block is one step there (§2.8, §3.5)
    c.greedy.errors_threshold = 3  # (§2.8)
    c.greedy.temperature = 0.0   # (§2.8)
    c.greedy.stop_tags = GREEDY_STOP_TAGS  # (§2.8, §3.5)

    # --- answer selection across runs (§2.9, eval_maj.py) ---
    c.vote = ml_collections.ConfigDict()
    c.vote.num_runs = 64         # the paper's 64 trajectories = 64 runs (§2.9)
    c.vote.top_n = 4             # eval_maj.py --top_n default (§2.9)
    c.vote.max_node_per_tree = 1  # eval_maj.py default: each run contributes its best answer

    if preset == "round1":
        c.num_rollouts = 8       # paper / maintainer in issue #26 (the yaml ships 48)
        c.temperature = 0.7      # sample_mcts.yaml
        c.errors_threshold = 2   # sample_mcts.yaml
        c.ppm_init_children = False  # terminal_sample: no PPM in round 1
        c.batch_size = 2500      # sample_mcts.yaml
        c.stop_tags = ROUND1_STOP_TAGS  # sample_mcts.yaml adds <end_of_output>
    elif preset == "eval_mcts":
        c.num_rollouts = 12      # sft_eval_mcts.yaml iterations (§8 test column)
        c.num_children = 32      # sft_eval_mcts.yaml n_generate_sample
        c.terminal_guided = False  # is_sampling False
        c.batch_size = 8000      # sft_eval_mcts.yaml
    elif preset in ("eval_bs", "greedy"):
        c.terminal_guided = False
        c.batch_size = 5000      # sft_eval_bs.yaml / sft_eval_greedy.yaml
    return c

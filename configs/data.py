"""Numbers of the data rules that turn search trees into training data.

Every default reproduces the reference (microsoft/rStar, branch rStar-math);
each comment names where the number comes from (rstar_reference.md section and
reference file). Read with `rstar_jax.data.ppm_pairs.rules_from_config(config.ppm)`
and the keyword arguments of `rstar_jax.data.sft_data.build_sft_rows`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Data-rule config: `sft` (trace selection) and `ppm` (preference pairs)."""
    config = ml_collections.ConfigDict()

    sft = ml_collections.ConfigDict()
    # §4.2, train/sample_sft_data.py --n 2 (README: "two traces with the highest
    # average scores"); ranked by (mean step Q, min step Q).
    sft.top_k = 2
    # §4.2: responses containing this (any case) are dropped after the top-k cut.
    sft.banned_substring = "error"
    # §4.2: sample_sft_data.py calls random.seed(0) then shuffles once; None keeps order.
    sft.shuffle_seed = 0
    # §3.1 quirk 9: the reference searches with two newlines before <|assistant|> but
    # trains with one; we use one for both. True writes our rows with two.
    sft.reference_newlines = False
    config.sft = sft

    ppm = ml_collections.ConfigDict()
    # §4.3, extra_rm_file.py: top 2 positive x top 2 negative children per node.
    ppm.pairs_per_side = 2
    # §4.3, extra_rm_file.py: with a single positive (negative), up to 4 of the other side.
    ppm.fallback_per_side = 4
    # §4.3, train/sample_rm_data.py: drop pairs with Q(pos) - Q(neg) < 0.5.
    ppm.min_step_margin = 0.5
    # §4.3, train/sample_rm_data.py: drop pairs whose step texts are < 20 character
    # edits apart (editdistance.eval).
    ppm.min_edit_distance = 20
    # §4.3, extra_rm_file.py --mode: "all" descends into every child with both correct
    # and wrong leaves below; "vis_count" only into the most visited one.
    ppm.mode = "all"
    # Paper §3.3 final-answer pairs (whole correct vs whole wrong trajectories). The
    # reference code never builds them, though its released examples contain some
    # (§4.3), so they are off by default to match the code.
    ppm.final_step_pairs = False
    # §3.1 quirk 9, as for sft.reference_newlines.
    ppm.reference_newlines = False
    config.ppm = ppm

    return config

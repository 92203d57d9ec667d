"""Batch plans: every row once per epoch, resumable order, grouping by length."""

import numpy as np

from rstar_jax.train.data import GROUP_WINDOW, BatchPlan


def epoch_rows(plan, epoch):
    return [plan.rows_of_step(epoch * plan.steps_per_epoch + k) for k in range(plan.steps_per_epoch)]


def test_grouped_plan_covers_every_row_once_per_epoch_and_pads_less():
    rng = np.random.default_rng(0)
    lengths = tuple(int(x) for x in rng.integers(20, 260, 1000))
    plain = BatchPlan(1000, 32, 8, 3, 7)
    grouped = BatchPlan(1000, 32, 8, 3, 7, lengths=lengths)
    assert grouped.steps_per_epoch == plain.steps_per_epoch == 32
    for epoch in range(3):
        rows = np.concatenate(epoch_rows(grouped, epoch))
        assert sorted(rows.tolist()) == list(range(1000))
    lens = np.asarray(lengths)

    def padded(plan):
        return sum(len(b) * lens[b].max() for e in range(3) for b in epoch_rows(plan, e))
    assert padded(grouped) < 0.8 * padded(plain)
    # A pure function of (seed, epoch): a fresh plan (a resumed run) gives the same batches.
    again = BatchPlan(1000, 32, 8, 3, 7, lengths=lengths)
    for step in (0, 31, 32, 95):
        assert np.array_equal(again.rows_of_step(step), grouped.rows_of_step(step))
    # Within a sorting window, batches are length-sorted runs.
    window = epoch_rows(grouped, 0)
    spans = [lens[b].max() - lens[b].min() for b in window]
    assert np.median(spans) < 0.25 * (max(lengths) - min(lengths)), GROUP_WINDOW

"""A smoke run of the whole loop in a few minutes: configs/tiny.py at a fraction of the
size, three rounds (round 3 searches with the PPM), the control and the report. The test
suite runs it (tests/test_evolve_smoke.py); nothing it learns is meant to be good.
"""

from configs import model as model_config
from configs import tiny


def get_config():
    c = tiny.get_config()
    c.name = "smoke"
    c.model.arch = model_config.get_config("tiny")
    c.problems = tiny.problem_sets(scale=0.06)
    c.engine.slots = 32
    c.engine.max_new_tokens = 96
    c.engine.max_seq_len = 256
    c.eval.scaling_n = (1, 2, 4)
    c.eval.search.num_rollouts = 4
    c.eval.search.num_children = 2
    del c.rounds["round4"]
    for k, r in enumerate(c.rounds.values(), start=1):
        # Round 1 searches in small chunks and saves training checkpoints often, so the
        # resume test can kill it mid-search and mid-training.
        r.search.batch_size = 10 if k == 1 else 1000
        r.sft.checkpoint.save_every = 2 if k == 1 else 100
        r.search.num_rollouts = 2
        r.search.num_children = 2
        r.search.max_depth = 8
        r.sft.epochs = 4 if k == 1 else 2
        r.sft.batch_size = 16
        r.sft.micro_batch_size = 16
        r.sft.bucket_lengths = (256,)          # one compiled step shape
        r.ppm.max_length = 256               # = engine.max_seq_len here
        r.ppm.bucket_lengths = (256,)
        r.sft.log_every = 5
        r.ppm.epochs = 1
        r.ppm.batch_size = 16
        r.ppm.micro_batch_size = 16
        r.ppm.eval_batch_size = 16
    return c

"""Train the process preference model on step pairs (rstar_reference §4.5).

Usage:
  python launch/train_ppm.py --config configs/train_ppm.py[:tiny] --data pairs.jsonl \
      --init <this round's policy dir> --out <dir>

--data: JSONL (or JSON list) of `{"prompt", "pos", "neg", "pos_count", "neg_count"}`
rows (rstar_jax.data.ppm_pairs.to_rows, or the reference's records). The PPM starts
from the policy in --init with a freshly initialised value head (the reference
re-initialises the PPM from the policy each round); a directory that already has a
value head continues from it. Writes <out>/checkpoints, <out>/metrics_ppm.jsonl
(held-out pairwise accuracy as eval_accuracy) and <out>/ppm.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402

from rstar_jax.train.cli import define_training_flags, quiet_logging  # noqa: E402

FLAGS = define_training_flags("configs/train_ppm.py[:tiny]", "PPM pairs, JSONL",
                              "policy (or PPM) directory to start from")


def main(argv):
    del argv
    quiet_logging()
    from rstar_jax.models import load_ppm, load_tokenizer, mesh_from_config
    from rstar_jax.train import train_ppm
    from rstar_jax.train.data import read_jsonl

    config = FLAGS.config.value
    mesh = mesh_from_config(config.mesh)
    rows = read_jsonl(FLAGS.data.value)
    tokenizer = load_tokenizer(FLAGS.tokenizer.value or FLAGS.init.value)
    model = load_ppm(FLAGS.init.value, dtype="float32", mesh=mesh, remat=bool(config.remat),
                     init_value_head_seed=int(config.seed))
    train_ppm(config, model, rows, tokenizer, FLAGS.out.value, mesh=mesh, progress=FLAGS.progress.value)
    print(f"PPM written to {os.path.join(FLAGS.out.value, 'ppm')}")


if __name__ == "__main__":
    app.run(main)

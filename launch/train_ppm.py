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

from rstar_jax import cli  # noqa: E402

FLAGS = cli.define_training_flags("configs/train_ppm.py[:tiny]", "PPM pairs, JSONL",
                              "policy (or PPM) directory to start from")


def validate(config, *, data, init, out, tokenizer):
    """Every input checked before a model is loaded: (rows, init dir, tokenizer dir, out)."""
    from rstar_jax.train.data import check_pair_rows, read_jsonl
    from rstar_jax.train.trainer import check_config

    if config is None:
        raise cli.UsageError("--config is required (configs/train_ppm.py[:tiny])")
    init = cli.check_dir(init, "init", must_contain=("config.json",),
                         what="policy or PPM directory")
    tokenizer = cli.check_dir(tokenizer, "tokenizer") if tokenizer else init
    data = cli.check_file(data, "data", what="PPM pair file")
    out = cli.check_writable_parent(out, "out")
    with cli.validating():
        check_config(config, "--config")
        rows = read_jsonl(data)
        check_pair_rows(rows, data)
    return rows, init, tokenizer, out


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    config = FLAGS.config.value
    rows, init, tok_dir, out = validate(config, data=FLAGS.data.value, init=FLAGS.init.value,
                                        out=FLAGS.out.value, tokenizer=FLAGS.tokenizer.value)
    process = cli.setup_command()
    from rstar_jax.models import load_ppm, load_tokenizer, mesh_from_config
    from rstar_jax.train import train_ppm

    mesh = mesh_from_config(config.mesh)
    tokenizer = load_tokenizer(tok_dir)
    model = load_ppm(init, dtype="float32", mesh=mesh, remat=bool(config.remat),
                     init_value_head_seed=int(config.seed))
    train_ppm(config, model, rows, tokenizer, out, mesh=mesh, progress=FLAGS.progress.value)
    if process.is_main:
        print(f"PPM written to {os.path.join(out, 'ppm')}")


if __name__ == "__main__":
    cli.run(main)

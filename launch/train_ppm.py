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

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/train_ppm.py[:tiny]",
                                          lock_config=True)
_DATA = flags.DEFINE_string("data", None, "PPM pairs, JSONL", required=True)
_INIT = flags.DEFINE_string("init", None, "policy (or PPM) directory to start from",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: --init)")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every checkpoint step at INFO; the progress bar and metrics say enough
        logging.set_verbosity(logging.WARNING)
    from rstar_jax.models import load_ppm, load_tokenizer
    from rstar_jax.train import train_ppm
    from rstar_jax.train.data import read_jsonl
    from rstar_jax.train.trainer import mesh_of

    config = _CONFIG.value
    mesh = mesh_of(config)
    rows = read_jsonl(_DATA.value)
    tokenizer = load_tokenizer(_TOKENIZER.value or _INIT.value)
    model = load_ppm(_INIT.value, dtype="float32", mesh=mesh, remat=bool(config.remat),
                     init_value_head_seed=int(config.seed))
    train_ppm(config, model, rows, tokenizer, _OUT.value, mesh=mesh, progress=_PROGRESS.value)
    print(f"PPM written to {os.path.join(_OUT.value, 'ppm')}")


if __name__ == "__main__":
    app.run(main)

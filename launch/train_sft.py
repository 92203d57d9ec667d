"""Fine-tune a policy on SFT rows (rstar_reference §4.4).

Usage:
  python launch/train_sft.py --config configs/train_sft.py[:tiny] --data sft.jsonl \
      --init <hf policy dir> --out <dir> [--config.optim.learning_rate=1e-5 ...]

--data: JSONL (or JSON list) of `{"prompt", "response"}` rows (rstar_jax.data.sft_data)
or the reference's `{"query", "response"}`. Writes <out>/checkpoints (Orbax; a rerun
resumes from the latest, data order included), <out>/metrics_sft.jsonl and the trained
policy as a Hugging Face directory <out>/policy.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/train_sft.py[:tiny]",
                                          lock_config=True)
_DATA = flags.DEFINE_string("data", None, "SFT rows, JSONL", required=True)
_INIT = flags.DEFINE_string("init", None, "Hugging Face policy directory to start from",
                            required=True)
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: --init)")
_PROGRESS = flags.DEFINE_bool("progress", True, "show a progress bar")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        # orbax logs every checkpoint step at INFO; the progress bar and metrics say enough
        logging.set_verbosity(logging.WARNING)
    from rstar_jax.models import load_pretrained, load_tokenizer
    from rstar_jax.train import train_sft
    from rstar_jax.train.data import read_jsonl
    from rstar_jax.train.trainer import mesh_of

    config = _CONFIG.value
    mesh = mesh_of(config)
    rows = read_jsonl(_DATA.value)
    tokenizer = load_tokenizer(_TOKENIZER.value or _INIT.value)
    # fp32 master weights; the loss casts to config.compute_dtype.
    model = load_pretrained(_INIT.value, dtype="float32", mesh=mesh, remat=bool(config.remat))
    train_sft(config, model, rows, tokenizer, _OUT.value, mesh=mesh, progress=_PROGRESS.value)
    print(f"policy written to {os.path.join(_OUT.value, 'policy')}")


if __name__ == "__main__":
    app.run(main)

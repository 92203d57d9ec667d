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

from absl import app  # noqa: E402

from rstar_jax.train.cli import define_training_flags, quiet_logging  # noqa: E402

FLAGS = define_training_flags("configs/train_sft.py[:tiny]", "SFT rows, JSONL",
                              "Hugging Face policy directory to start from")


def main(argv):
    del argv
    quiet_logging()
    from rstar_jax.models import load_pretrained, load_tokenizer, mesh_from_config
    from rstar_jax.train import train_sft
    from rstar_jax.train.data import read_jsonl

    config = FLAGS.config.value
    mesh = mesh_from_config(config.mesh)
    rows = read_jsonl(FLAGS.data.value)
    tokenizer = load_tokenizer(FLAGS.tokenizer.value or FLAGS.init.value)
    # fp32 master weights; the loss casts to config.compute_dtype.
    model = load_pretrained(FLAGS.init.value, dtype="float32", mesh=mesh, remat=bool(config.remat))
    train_sft(config, model, rows, tokenizer, FLAGS.out.value, mesh=mesh, progress=FLAGS.progress.value)
    print(f"policy written to {os.path.join(FLAGS.out.value, 'policy')}")


if __name__ == "__main__":
    app.run(main)

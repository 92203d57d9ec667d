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

from rstar_jax import cli  # noqa: E402

FLAGS = cli.define_training_flags("configs/train_sft.py[:tiny]", "SFT rows, JSONL",
                              "Hugging Face policy directory to start from")


def validate(config, *, data, init, out, tokenizer):
    """Every input checked before a model is loaded: (rows, init dir, tokenizer dir, out)."""
    from rstar_jax.train.data import check_sft_rows, read_jsonl
    from rstar_jax.train.trainer import check_config

    if config is None:
        raise cli.UsageError("--config is required (configs/train_sft.py[:tiny])")
    init = cli.check_dir(init, "init", must_contain=("config.json",),
                         what="Hugging Face policy directory")
    tokenizer = cli.check_dir(tokenizer, "tokenizer") if tokenizer else init
    data = cli.check_file(data, "data", what="SFT data file")
    out = cli.check_writable_parent(out, "out")
    with cli.validating():
        check_config(config, "--config")
        rows = read_jsonl(data)
        check_sft_rows(rows, data)
    return rows, init, tokenizer, out


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    config = FLAGS.config.value
    rows, init, tok_dir, out = validate(config, data=FLAGS.data.value, init=FLAGS.init.value,
                                        out=FLAGS.out.value, tokenizer=FLAGS.tokenizer.value)
    process = cli.setup_command()
    from rstar_jax.models import load_pretrained, load_tokenizer, mesh_from_config
    from rstar_jax.train import train_sft

    mesh = mesh_from_config(config.mesh)
    tokenizer = load_tokenizer(tok_dir)
    # fp32 master weights; the loss casts to config.compute_dtype.
    model = load_pretrained(init, dtype="float32", mesh=mesh, remat=bool(config.remat))
    train_sft(config, model, rows, tokenizer, out, mesh=mesh, progress=FLAGS.progress.value)
    if process.is_main:
        print(f"policy written to {os.path.join(out, 'policy')}")


if __name__ == "__main__":
    cli.run(main)

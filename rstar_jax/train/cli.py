"""Command-line flags shared by launch/train_sft.py and launch/train_ppm.py."""

from __future__ import annotations

import types

from absl import flags, logging
from ml_collections import config_flags


def define_training_flags(config_hint: str, data_help: str, init_help: str) -> types.SimpleNamespace:
    """--config --data --init --out --tokenizer --progress; read `.value` of each after parsing."""
    return types.SimpleNamespace(
        config=config_flags.DEFINE_config_file("config", None, config_hint, lock_config=True),
        data=flags.DEFINE_string("data", None, data_help, required=True),
        init=flags.DEFINE_string("init", None, init_help, required=True),
        out=flags.DEFINE_string("out", None, "output directory", required=True),
        tokenizer=flags.DEFINE_string("tokenizer", None, "tokenizer directory (default: --init)"),
        progress=flags.DEFINE_bool("progress", True, "show a progress bar"),
    )


def quiet_logging() -> None:
    """WARNING unless --verbosity was given: orbax logs every checkpoint step at INFO, and
    the progress bar and metrics file already say what a user needs."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)

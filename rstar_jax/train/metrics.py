"""Training metrics: one JSON object per line, plus TensorBoard when a writer is installed."""

from __future__ import annotations

import json
import os
import time
from typing import Mapping


def _tensorboard_writer(logdir: str):
    """tensorboardX's SummaryWriter if installed (no TensorFlow dependency), else None."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir)


class MetricsLog:
    """Appends `{"step", "time", <metrics>}` lines to `path` (a resumed run keeps appending)."""

    def __init__(self, path: str | os.PathLike, *, tensorboard_dir: str | None = None):
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._f = open(self.path, "a")
        self._tb = _tensorboard_writer(tensorboard_dir) if tensorboard_dir else None

    def write(self, step: int, metrics: Mapping, **extra) -> None:
        record = {"step": int(step), "time": time.time(), **extra,
                  **{k: float(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, float(v), int(step))

    def close(self):
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]

"""SIGKILL during training, rerun: it resumes from the last checkpoint and ends with exactly
the parameters of an uninterrupted run (same seed, CPU), data order included."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from rstar_jax.train.metrics import read_metrics
from train_fixtures import write_tiny_sft_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60        # 20 rows, batch 8 -> 3 steps per epoch (the last one partial), 20 epochs
SAVE_EVERY = 5    # step 5 is mid-epoch, so the data order must resume mid-epoch too


def launch_cmd(init, data, out):
    return [sys.executable, os.path.join(ROOT, "launch", "train_sft.py"),
            f"--config={os.path.join(ROOT, 'configs', 'train_sft.py')}:tiny",
            "--config.epochs=20", f"--config.checkpoint.save_every={SAVE_EVERY}",
            "--config.log_every=1", f"--data={data}", f"--init={init}", f"--out={out}",
            "--progress=false"]


def env():
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    e["JAX_PLATFORMS"] = "cpu"
    return e


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_tiny_sft_run(root, 20)
    return root


def checkpoint_steps(out):
    d = out / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def test_sigkill_then_rerun_equals_uninterrupted_run(setup):
    init, data = setup / "init", setup / "sft.jsonl"
    killed = setup / "killed"
    proc = subprocess.Popen(launch_cmd(init, data, killed), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not checkpoint_steps(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate()[1].decode()
    saved = checkpoint_steps(killed)
    assert saved, f"no checkpoint before the kill; stderr:\n{err[-3000:]}"
    assert max(saved) < STEPS and not (killed / "policy").exists(), "run was not interrupted"

    rerun = subprocess.run(launch_cmd(init, data, killed), env=env(), capture_output=True)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    resumes = [m for m in read_metrics(killed / "metrics_sft.jsonl") if m.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] >= SAVE_EVERY

    clean = setup / "clean"
    run = subprocess.run(launch_cmd(init, data, clean), env=env(), capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]

    a = load_file(str(killed / "policy" / "model.safetensors"))
    b = load_file(str(clean / "policy" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    start = load_file(str(init / "model.safetensors"))
    assert not np.array_equal(a["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    # Same losses at every step the two runs both logged after the resume point.
    loss = lambda p: {m["step"]: m["loss"] for m in read_metrics(p) if "loss" in m}  # noqa: E731
    la, lb = loss(killed / "metrics_sft.jsonl"), loss(clean / "metrics_sft.jsonl")
    assert all(la[s] == lb[s] for s in range(resumes[0]["step"] + 1, STEPS + 1))

"""Training on a mesh spanning two processes (2 CPU devices each, JAX distributed runtime)
gives the parameters of one process with the same 4-device mesh, and a multi-host
checkpoint resumes."""

import numpy as np
import pytest
from safetensors.numpy import load_file

import multihost_fixtures as multihost
from rstar_jax.train.metrics import read_metrics
from train_fixtures import write_tiny_sft_run

STEPS = 4


def sft_cmd(setup, out, max_steps):
    # data=2 spans the processes, fsdp=2 shards every parameter within and across them.
    return multihost.script(
        "train_sft.py", f"--config={multihost.ROOT}/configs/train_sft.py:tiny",
        "--config.mesh.data=2", "--config.mesh.fsdp=2", f"--config.max_steps={max_steps}",
        "--config.checkpoint.save_every=2", "--config.log_every=1",
        f"--data={setup / 'sft.jsonl'}", f"--init={setup / 'init'}", f"--out={out}",
        "--progress=false")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost_train")
    write_tiny_sft_run(root, 24)
    single = root / "single"
    multihost.run(sft_cmd(root, single, STEPS), 1, 4, root / "logs_single")
    return root


def weights(out):
    return load_file(str(out / "policy" / "model.safetensors"))


def assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)


def test_multihost_training_equals_single_process(setup):
    out = setup / "two"
    multihost.run(sft_cmd(setup, out, STEPS), 2, 2, setup / "logs_two")
    assert "process 1 of 2: 2 local devices, 4 in all" in multihost.logs(setup / "logs_two")
    assert_same_params(weights(out), weights(setup / "single"))
    start = load_file(str(setup / "init" / "model.safetensors"))
    assert not np.allclose(weights(out)["model.embed_tokens.weight"],
                           start["model.embed_tokens.weight"])
    # One metrics file for the run (process 0's), with every step once.
    steps = [m["step"] for m in read_metrics(out / "metrics_sft.jsonl") if "loss" in m]
    assert steps == list(range(1, STEPS + 1))


def test_multihost_checkpoint_resumes(setup):
    out = setup / "resumed"
    multihost.run(sft_cmd(setup, out, STEPS // 2), 2, 2, setup / "logs_half")
    assert (out / "checkpoints" / str(STEPS // 2)).is_dir()
    multihost.run(sft_cmd(setup, out, STEPS), 2, 2, setup / "logs_rest")
    resumes = [m for m in read_metrics(out / "metrics_sft.jsonl") if m.get("event") == "resume"]
    assert [m["step"] for m in resumes] == [STEPS // 2]
    assert_same_params(weights(out), weights(setup / "single"))

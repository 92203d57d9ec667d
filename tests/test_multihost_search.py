"""launch/search.py as two processes on the JAX distributed runtime: each searches its
own shard of the problems, the merged trees equal a single-process run's, and a process
killed mid-search loses only its unfinished problems."""

import json
import os
import time

import pytest

import multihost_fixtures as multihost
from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, save_pretrained
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
from rstar_jax.search import shards

NUM_PROBLEMS = 8


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from configs import model as presets
    root = tmp_path_factory.mktemp("multihost_search")
    tok = build_tiny_tokenizer()
    policy = Qwen2ForCausalLM(Qwen2Config.from_config_dict(presets.get_config("tiny")))
    save_pretrained(policy, root / "policy", tokenizer=tok)
    save_pretrained(Qwen2PPM.from_policy(policy), root / "ppm", tokenizer=tok)
    (root / "problems.jsonl").write_text("".join(
        json.dumps({"index": f"p{a}", "question": f"What is {a} + {a % 3}?",
                    "answer": str(a + a % 3)}) + "\n" for a in range(NUM_PROBLEMS)))
    single = root / "single.jsonl"
    multihost.run(search_cmd(root, single), 1, 2, root / "logs_single")
    return root


def search_cmd(root, out, *extra):
    return multihost.script(
        "search.py", f"--policy={root / 'policy'}", f"--ppm={root / 'ppm'}",
        f"--problems={root / 'problems.jsonl'}", f"--out={out}",
        f"--search_config={multihost.ROOT}/configs/search.py:eval_mcts",
        f"--engine_config={multihost.ROOT}/configs/engine.py:tiny",
        "--search_config.num_rollouts=2", "--search_config.num_children=2",
        "--search_config.max_depth=3", "--executor_workers=1", "--executor_timeout_s=5",
        *extra)


def finished(path) -> int:
    """Complete lines (a killed process may leave a cut last line)."""
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def test_multihost_search_equals_single_process(setup):
    out = setup / "two.jsonl"
    multihost.run(search_cmd(setup, out), 2, 2, setup / "logs_two")
    logs = multihost.logs(setup / "logs_two")
    assert "process 1 of 2: 2 local devices, 4 in all" in logs
    got, want = lines(out), lines(setup / "single.jsonl")
    assert [r["index"] for r in got] == [f"p{a}" for a in range(NUM_PROBLEMS)]
    assert got == want
    assert not shards.existing_parts(str(out))      # the parts were merged and removed


def test_multihost_search_killed_process_then_rerun(setup):
    out = setup / "killed.jsonl"
    # One problem per batch, so problems finish (and are appended) one at a time.
    cmd = search_cmd(setup, out, "--search_config.batch_size=1",
                     "--search_config.chunks_in_flight=1")
    part1 = shards.part_path(str(out), 1, 2)
    procs = multihost.start(cmd, 2, 2, setup / "logs_kill")
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.exists(part1) and finished(part1) >= 1:
            break
        time.sleep(0.05)
    assert all(p.poll() is None for p in procs), multihost.logs(setup / "logs_kill")
    procs[1].kill()           # process 1 dies; the launcher then stops the job
    multihost.kill(procs)
    before = finished(part1)
    assert 1 <= before < NUM_PROBLEMS // 2, "process 1 was not killed mid-search"
    assert not out.exists()

    multihost.run(cmd, 2, 2, setup / "logs_rerun")
    got = lines(out)
    ids = [r["index"] for r in got]
    assert ids == [f"p{a}" for a in range(NUM_PROBLEMS)]     # each problem once, in order
    assert got == lines(setup / "single.jsonl")


def evaluate_cmd(root, out, *extra):
    return multihost.script(
        "evaluate.py", f"--policy={root / 'policy'}", f"--ppm={root / 'ppm'}",
        f"--problems={root / 'problems.jsonl'}", f"--out={out}", "--modes=greedy,best_of_n,mcts",
        "--n=2", "--seeds=1", f"--search_config={multihost.ROOT}/configs/search.py:eval_mcts",
        f"--engine_config={multihost.ROOT}/configs/engine.py:tiny",
        "--search_config.num_rollouts=2", "--search_config.num_children=2",
        "--search_config.max_depth=3", "--executor_workers=1", "--executor_timeout_s=5",
        *extra)


def test_multihost_evaluate_equals_single_process(setup):
    # Per-seed metrics of every mode, scored from the merged per-problem records.
    single = setup / "eval_single.json"
    multihost.run(evaluate_cmd(setup, single), 1, 2, setup / "logs_eval_single")
    two = setup / "eval_two.json"
    multihost.run(evaluate_cmd(setup, two), 2, 2, setup / "logs_eval_two")
    got, want = json.loads(two.read_text()), json.loads(single.read_text())
    assert got["results"] == want["results"]
    assert set(got["results"]) == {"greedy", "best_of_n", "mcts"}

"""The multi-process pieces that need no second process: flag checks, cluster detection,
shards and the merge of part files (tests/test_multihost_*.py start real processes)."""

import json
import re

import pytest

from rstar_jax import distributed
from rstar_jax.search import shards
from rstar_jax.search.host_tree import save_trees
from rstar_jax.search.mcts import new_trees


@pytest.mark.parametrize("args, message", [
    (("sometimes", None, None, None), "--distributed must be one of"),
    (("auto", "127.0.0.1:1234", None, None), "without --num_processes, --process_id"),
    (("off", "127.0.0.1:1234", 2, 0), "--distributed=off contradicts"),
    (("auto", "127.0.0.1:1234", 2, 2), "--process_id must be in [0, 2)"),
    (("auto", "127.0.0.1:1234", 0, 0), "--num_processes must be >= 1"),
    (("auto", "localhost", 2, 0), "must be host:port"),
])
def test_bad_distributed_flags_name_the_flag(args, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        distributed.check_flags(*args)


def test_good_flags_pass():
    distributed.check_flags("auto", None, None, None)
    distributed.check_flags("on", "10.0.0.1:8476", 4, 3)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1", "SLURM_STEP_NODELIST": "n1"}, None),
    ({"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]"}, "SLURM"),
    ({"SLURM_NTASKS": "4"}, None),           # the batch script's own shell, not an srun step
    ({"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1", "SLURM_STEP_NODELIST": "n1"}, None),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "t0,t1"}, "Cloud TPU pod"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, None),
])
def test_cluster_detection(env, expected):
    assert distributed.detected_cluster(env) == expected


def test_single_process_helpers_are_identities():
    assert distributed.current() == distributed.Process(0, 1)
    assert distributed.gather_objects({"a": [1, 2]}) == [{"a": [1, 2]}]
    assert distributed.sum_over_processes(3.5) == 3.5
    distributed.barrier("nothing to wait for")


@pytest.mark.parametrize("n, count", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shards_cover_every_problem_once(n, count):
    got = sorted(p for i in range(count) for p in shards.shard_positions(n, i, count))
    assert got == list(range(n))


def problems(n):
    return [{"index": i, "question": f"q{i}", "answer": str(i)} for i in range(n)]


def test_merge_puts_parts_in_problem_order_and_removes_them(tmp_path):
    probs = problems(5)
    trees = new_trees(probs)
    out = str(tmp_path / "trees.jsonl")
    for i in range(2):
        mine = [trees[j] for j in shards.shard_positions(5, i, 2)]
        save_trees(reversed(mine), shards.part_path(out, i, 2))   # finished in any order
    merged = shards.merge_parts(trees, out, 2)
    assert [t.question for t in merged] == [p["question"] for p in probs]
    with open(out) as f:
        assert [json.loads(x)["index"] for x in f] == list(range(5))
    assert not shards.existing_parts(out)


def test_merge_refuses_a_missing_problem_and_a_duplicate(tmp_path):
    trees = new_trees(problems(4))
    out = str(tmp_path / "trees.jsonl")
    save_trees([trees[0]], shards.part_path(out, 0, 2))
    save_trees([trees[1], trees[3]], shards.part_path(out, 1, 2))
    with pytest.raises(ValueError, match=r"1 problems of process 0 are not searched \(ids \[2\]\)"):
        shards.merge_parts(trees, out, 2)
    save_trees([trees[2], trees[2]], shards.part_path(out, 0, 2))
    with pytest.raises(ValueError, match="duplicates"):
        shards.merge_parts(trees, out, 2)


def test_parts_of_another_process_count_are_refused(tmp_path):
    out = str(tmp_path / "trees.jsonl")
    trees = new_trees(problems(3))
    save_trees([trees[0]], shards.part_path(out, 0, 3))
    with pytest.raises(ValueError, match="belongs to a search over 3 processes, this run has 2"):
        shards.search_sharded(trees, problems(3), lambda p, path: None, out, index=0, count=2,
                              barrier=lambda name: None, name="test")

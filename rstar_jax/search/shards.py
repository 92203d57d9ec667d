"""A search split between processes: disjoint shards of the problems, one trees file per
process, and the merge into the single file the data rules read.

Process i of n searches the problems at positions i, i + n, i + 2n, ... (strided, so
every process gets the same mix of easy and hard problems and none waits long for the
slowest), each with its own engine on its own devices, and appends finished trees to
`<out>.part<i>-of-<n>.jsonl`. A rerun of the same command resumes every part file per
problem, so a process that died loses only its unfinished problems. When every process
is done, process 0 merges the parts into `<out>` in problem order, checking that each
problem appears exactly once, and removes them. Host code only: the caller passes the
barrier (a JAX collective in `rstar_jax.distributed`).
"""

from __future__ import annotations

import glob
import os
import re
from typing import Any, Callable, Sequence

from rstar_jax.search.host_tree import SearchTree, resume_from_dump, save_trees

_PART = re.compile(r"\.part(\d+)-of-(\d+)\.jsonl$")


def shard_positions(num_problems: int, index: int, count: int) -> list[int]:
    """Positions of process `index`'s problems: index, index + count, ... (disjoint, and
    together every position exactly once)."""
    if not 0 <= index < count:
        raise ValueError(f"process index {index} outside [0, {count})")
    return list(range(index, num_problems, count))


def part_path(path: str, index: int, count: int) -> str:
    """The trees file of process `index` of `count` for the merged file `path`."""
    base = path[:-len(".jsonl")] if path.endswith(".jsonl") else path
    return f"{base}.part{index:05d}-of-{count:05d}.jsonl"


def existing_parts(path: str) -> dict[int, list[str]]:
    """{process count: part files} found next to `path`."""
    base = path[:-len(".jsonl")] if path.endswith(".jsonl") else path
    found: dict[int, list[str]] = {}
    for f in sorted(glob.glob(glob.escape(base) + ".part*-of-*.jsonl")):
        m = _PART.search(f)
        if m:
            found.setdefault(int(m.group(2)), []).append(f)
    return found


def check_parts(path: str, count: int) -> None:
    """ValueError when part files of a run with another number of processes are there
    (their shards differ, so they cannot be resumed by this run)."""
    other = {n: files for n, files in existing_parts(path).items() if n != count}
    if other:
        n, files = next(iter(other.items()))
        raise ValueError(f"{files[0]} belongs to a search over {n} processes, this run has "
                         f"{count}: rerun with {n} processes to finish it (or remove the "
                         "part files to search those problems again)")


def _problem_id(tree: SearchTree, position: int) -> Any:
    return tree.record.get("index", position)


def _count_lines(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def merge_parts(trees: Sequence[SearchTree], path: str, count: int) -> list[SearchTree]:
    """Merge the `count` part files of the problems whose fresh trees are `trees` (in
    problem order) into `path`, atomically, and remove the parts.

    Raises ValueError naming the part file and problem ids when a problem is missing
    (its process did not finish) or a part holds a line for no problem of its shard
    (a duplicate, or another run's tree).
    """
    n = len(trees)
    merged: list[SearchTree | None] = [None] * n
    for i in range(count):
        part = part_path(path, i, count)
        positions = shard_positions(n, i, count)
        done = resume_from_dump(part, [trees[j] for j in positions])
        missing = [_problem_id(trees[positions[k]], positions[k])
                   for k in range(len(positions)) if k not in done]
        if missing:
            raise ValueError(f"{part}: {len(missing)} problems of process {i} are not searched "
                             f"(ids {missing[:10]}); rerun the same command to finish them")
        extra = _count_lines(part) - len(done)
        if extra:
            raise ValueError(f"{part}: {extra} lines are duplicates or belong to no problem "
                             f"of process {i}'s shard")
        for k, tree in done.items():
            merged[positions[k]] = tree
    tmp = f"{path}.tmp"
    save_trees(merged, tmp, append=False)
    os.replace(tmp, path)
    for i in range(count):
        part = part_path(path, i, count)
        if os.path.exists(part):
            os.remove(part)
    return list(merged)


def search_sharded(trees: Sequence[SearchTree], problems: Sequence[Any],
                   search_fn: Callable[[list, str], Any], path: str, *, index: int, count: int,
                   barrier: Callable[[str], None], name: str) -> list[SearchTree]:
    """Search this process's shard of `problems` and return every problem's tree, in
    order, on every process.

    trees: fresh trees of `problems` (`mcts.new_trees`), used to match files to problems;
    search_fn(problems, output_path): searches and appends finished trees to the file
    (resuming from it); barrier(name): waits for every process. A merged `path` that
    already holds every problem (a finished search, rerun) is read back as it is.
    """
    done = resume_from_dump(path, trees) if os.path.exists(path) else {}
    if len(done) == len(trees):
        return [done[i] for i in range(len(trees))]
    check_parts(path, count)
    if done:
        raise ValueError(f"{path} holds {len(done)} of {len(trees)} problems from a "
                         f"single-process search; finish it with one process (or remove it)")
    positions = shard_positions(len(problems), index, count)
    search_fn([problems[j] for j in positions], part_path(path, index, count))
    barrier(f"{name}: searched")
    if index == 0:
        merge_parts(trees, path, count)
    barrier(f"{name}: merged")
    done = resume_from_dump(path, trees)
    if len(done) != len(trees):
        raise RuntimeError(f"{path}: the merge left {len(trees) - len(done)} problems out")
    return [done[i] for i in range(len(trees))]

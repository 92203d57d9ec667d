"""MCTS over a batch of problems, one tree level at a time (rstar_reference.md §2.2).

All B problems of a chunk advance in lock-step. Each level makes one proposer call for
every problem whose selected node still needs expanding, one executor batch for the new
code steps, one grading pass (data generation) or scorer call (PPM), and then one jitted
`level_update` that adds the children, backs up their values and selects the next node
in every tree. A rollout starts with one selection step from the root and runs
`max_depth` levels (§9.4).

Host code (texts, subprocesses, files) lives in this file; array code lives in `tree.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rstar_jax import step_format as sf
from rstar_jax.search import expand as ex
from rstar_jax.search import tree as T
from rstar_jax.search.answers import best_answer
from rstar_jax.search.host_tree import SearchTree, save_trees
from rstar_jax.step_format import INVALID_TERMINALS


# ----------------------------------------------------------------------------- inputs


def default_answer_fn(step_text: str) -> str:
    """Final answer of an answer step via the project grader (imported lazily)."""
    from rstar_jax.verify import grader
    return grader.extract_answer(step_text)


def default_grade_fn(pred: str, gold: str | Sequence[str]) -> bool:
    """Math equivalence via the project grader (imported lazily); any of several golds."""
    from rstar_jax.verify import grader
    golds = [gold] if isinstance(gold, str) else list(gold)
    return any(bool(grader.math_equal(pred, g)) for g in golds)


def as_problem(p: Any, i: int) -> tuple[str, str | list[str] | None, dict]:
    """(question, gold, record) from a dict or an object with `.question`.

    gold is None (inference), a string, or a list of strings when the problem accepts
    several answers (`answer` given as a list, or `alternatives` beside it, as
    `rstar_jax.data.benchmarks.Problem` has for a few MATH records).
    """
    if isinstance(p, Mapping):
        rec = dict(p)
    elif hasattr(p, "question"):
        rec = {k: v for k, v in vars(p).items() if not k.startswith("_")} if hasattr(p, "__dict__") \
            else {"question": p.question, "answer": getattr(p, "answer", None)}
    else:
        raise TypeError(f"problem {i}: expected a dict or an object with a .question, got {type(p)}")
    q = rec.get("question")
    if not isinstance(q, str):
        raise ValueError(f"problem {i}: 'question' must be a string, got {type(q).__name__}")
    gold = rec.get("answer")
    alternatives = list(rec.get("alternatives") or ())
    if gold is None:
        return q, None, rec
    golds = [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
    golds += [str(a) for a in alternatives if str(a) not in golds]
    return q, golds[0] if len(golds) == 1 else golds, rec


def check_config(cfg: Any) -> None:
    """Fail early, naming the option, on values the search cannot use."""
    for name in ("num_rollouts", "num_children", "max_depth", "errors_threshold",
                 "batch_size", "initial_num_slots"):
        if int(cfg[name]) < 1:
            raise ValueError(f"config.search.{name} must be >= 1, got {cfg[name]}")
    if cfg.unvisited_score not in ("zero", "inf"):
        raise ValueError(f"config.search.unvisited_score must be 'zero' or 'inf', got "
                         f"{cfg.unvisited_score!r}")


@dataclasses.dataclass
class Hooks:
    """Injected host functions (tests pass scripted ones; defaults use the grader)."""

    answer_fn: Callable[[str], str] = default_answer_fn
    grade_fn: Callable[[str, str], bool] = default_grade_fn


# ---------------------------------------------------------------------------- a chunk


def _bucket(n: int) -> int:
    """Rows of the device arrays for n problems: the next power of two, so a few shapes
    cover every chunk size and jit compiles once per shape."""
    return 1 << max(0, (n - 1).bit_length())


class _Chunk:
    """The trees of one chunk of problems: host records + device arrays."""

    def __init__(self, trees: list[SearchTree], cfg: Any):
        self.trees = trees
        self.cfg = cfg
        self.rows = _bucket(len(trees))
        self.k = int(cfg.num_children)
        self.dev = T.init_tree(self.rows, max(int(cfg.initial_num_slots), self.k + 1), self.k)
        self.num_nodes = np.ones(self.rows, np.int64)
        self.live = np.zeros(self.rows, bool)
        self.live[: len(trees)] = True
        self.kw = dict(c_puct=float(cfg.c_puct), unvisited_inf=cfg.unvisited_score == "inf")
        self.path_log: list[np.ndarray] = []   # selected node per level, for tests/diagnostics

    def prompt(self, row: int, node: int) -> str:
        t = self.trees[row]
        return sf.build_prompt(t.question, reference_newlines=bool(self.cfg.reference_prompt_newlines)) \
            + t.partial_solution(node)

    def ensure_capacity(self, num_new: np.ndarray) -> None:
        """Re-allocate every tree with doubled slots until the level's children fit."""
        need = int((self.num_nodes + num_new).max())
        n = self.dev.num_slots
        while n < need:
            n *= 2
        if n != self.dev.num_slots:
            self.dev = T.grow(self.dev, n)

    def select_from_root(self) -> np.ndarray:
        start = np.zeros(self.rows, np.int32)
        self.dev, cur = T.select_step(self.dev, start, self.live.copy(), **self.kw)
        return np.asarray(cur)

    def finish(self, rows: Sequence[int]) -> None:
        """Copy device numbers into the host records of `rows`."""
        visits, vsum, value, term = (np.asarray(a) for a in (
            self.dev.visits, self.dev.value_sum, self.dev.value, self.dev.terminal))
        for r in rows:
            self.trees[r].set_stats(visits[r], vsum[r], value[r], term[r])


def _level(ch: _Chunk, cur: np.ndarray, proposer, executor, scorer, hooks: Hooks,
           rollout: int, stats: dict) -> np.ndarray:
    """One tree level for every tree of the chunk; returns the next selected nodes."""
    cfg, k = ch.cfg, ch.k
    active = cur >= 0
    expand_rows = [b for b in np.flatnonzero(active) if not ch.trees[b].nodes[cur[b]].children]
    pending: list[ex.PendingChild] = []
    if expand_rows:
        prompts = [ch.prompt(b, int(cur[b])) for b in expand_rows]
        proposals = proposer.propose(prompts, k, float(cfg.temperature))
        if len(proposals) != len(prompts):
            raise ValueError(f"proposer.propose returned {len(proposals)} lists for {len(prompts)} "
                             "prompts; it must return one list of steps per prompt")
        for b, props in zip(expand_rows, proposals):
            if len(props) > k:
                raise ValueError(f"proposer returned {len(props)} proposals for num_samples={k}")
            pending += ex.pending_children(ch.trees[b], b, int(cur[b]), props, hooks.answer_fn)
        stats["steps"] += sum(len(p) for p in proposals)
    results = ex.run_programs(executor, pending)

    num_new = np.zeros(ch.rows, np.int32)
    child_term = np.zeros((ch.rows, k), bool)
    values = np.zeros((ch.rows, k), np.float32)
    modes = np.zeros((ch.rows, k), np.int32)
    make_term = np.zeros((ch.rows, k), bool)
    scored: list[tuple[int, int, Any]] = []        # (row, child position, node) to score
    for pc, res in zip(pending, results):
        t = ch.trees[pc.tree]
        node = ex.add_child(t, pc, res, errors_threshold=int(cfg.errors_threshold),
                            max_depth=int(cfg.max_depth), error_substring=bool(cfg.error_substring),
                            rollout=rollout)
        j = num_new[pc.tree]
        num_new[pc.tree] += 1
        child_term[pc.tree, j] = node.terminal
        if node.final_answer in INVALID_TERMINALS:
            # Invalid terminals get the negative reward on the node only, in every mode (§2.5).
            values[pc.tree, j], modes[pc.tree, j] = cfg.negative_reward, T.LOCAL
        elif node.terminal:
            if cfg.terminal_guided:
                ok = hooks.grade_fn(node.final_answer, t.answer)
                values[pc.tree, j] = cfg.positive_reward if ok else cfg.negative_reward
                modes[pc.tree, j] = T.RECURSIVE
            elif scorer is not None:
                scored.append((pc.tree, j, node))
        elif scorer is not None and cfg.ppm_init_children:
            scored.append((pc.tree, j, node))
    if scored:
        scores = scorer.score([ch.prompt(r, n.index) for r, _, n in scored])
        if len(scores) != len(scored):
            raise ValueError(f"scorer.score returned {len(scores)} values for {len(scored)} prompts")
        for (r, j, n), s in zip(scored, scores):
            # A missing score makes the node a terminal worth the negative reward (§2.7).
            v = cfg.negative_reward if s is None else float(s)
            values[r, j] = v
            modes[r, j] = T.RECURSIVE if n.terminal else T.LOCAL
            if s is None and not n.terminal:
                make_term[r, j] = True
                n.terminal = True

    ch.ensure_capacity(num_new)
    ch.dev, nxt, overflow = T.level_update(ch.dev, cur.astype(np.int32), active, num_new,
                                           child_term, values, modes, make_term,
                                           max_path=int(cfg.max_depth) + 2, **ch.kw)
    ch.num_nodes += num_new
    if np.asarray(overflow).any():
        # Cannot happen while children deeper than max_depth are terminal (§2.5); a
        # failure here means the tree arrays were edited outside the driver.
        raise RuntimeError("level_update: a backup path exceeded max_depth + 2 nodes")
    return np.asarray(nxt)


def _run_chunk(ch: _Chunk, proposer, executor, scorer, hooks: Hooks, on_finished,
               stats: dict) -> None:
    cfg = ch.cfg
    done = np.zeros(ch.rows, bool)
    done[len(ch.trees):] = True
    for rollout in range(int(cfg.num_rollouts)):
        cur = ch.select_from_root()
        ch.path_log.append(cur.copy())
        for _ in range(int(cfg.max_depth)):
            if not (cur >= 0).any():
                break
            cur = _level(ch, cur, proposer, executor, scorer, hooks, rollout, stats)
            ch.path_log.append(cur.copy())
        # A tree whose root became terminal can never change again: hand it out now.
        root_term = np.asarray(ch.dev.terminal[:, T.ROOT_INDEX])
        newly = [b for b in range(len(ch.trees)) if root_term[b] and not done[b]]
        if newly:
            ch.finish(newly)
            done[newly] = True
            ch.live[newly] = False
            on_finished([ch.trees[b] for b in newly])
    rest = [b for b in range(len(ch.trees)) if not done[b]]
    ch.finish(rest)
    on_finished([ch.trees[b] for b in rest])


# ------------------------------------------------------------------------- public API


def search(problems: Sequence[Any], proposer: Any, executor: Any, config: Any,
           scorer: Any = None, *, answer_fn: Callable[[str], str] | None = None,
           grade_fn: Callable[[str, str], bool] | None = None, output_path: str | None = None,
           progress: bool = True, return_chunks: bool = False, resume: bool = True):
    """Run MCTS on every problem and return one `SearchTree` per problem, in order.

    Args:
      problems: dicts (or objects) with `question` and, for terminal-guided data
        generation, `answer`.
      proposer: `propose(prompts, num_samples, temperature) -> list[list[str]]`.
      executor: `run(programs) -> list[ExecResult]` (`output`, `error`, `timed_out`).
      config: the search section (`configs/search.py`).
      scorer: optional PPM, `score(prompts) -> list[float]` in (-1, 1).
      answer_fn / grade_fn: answer extraction and equivalence; default to the grader.
      output_path: JSONL file; each tree is appended as soon as it is finished.
      progress: show a tqdm bar (problems finished, steps or tokens, solve rate).
      return_chunks: also return the internal chunks (device arrays, selection log).
      resume: when `output_path` already holds finished trees (an interrupted run), those
        problems are loaded instead of searched again; a line cut off by the interruption
        is dropped.
    """
    check_config(config)
    hooks = Hooks(answer_fn or default_answer_fn, grade_fn or default_grade_fn)
    parsed = [as_problem(p, i) for i, p in enumerate(problems)]
    if config.terminal_guided:
        missing = [i for i, (_, g, _) in enumerate(parsed) if g is None]
        if missing:
            raise ValueError(f"config.search.terminal_guided is True but problem {missing[0]} has no "
                             "'answer'; give gold answers or set terminal_guided=False (inference)")
    trees_all = [SearchTree.new(q, g, rec) for q, g, rec in parsed]
    bar = _progress(len(trees_all), progress)
    stats = {"steps": 0, "solved": 0, "graded": 0, "finished": 0}

    def on_finished(trees: list[SearchTree]) -> None:
        if output_path:
            save_trees(trees, output_path)
        for t in trees:
            if t.answer is not None:
                best = best_answer(t)
                stats["graded"] += 1
                stats["solved"] += int(best is not None and hooks.grade_fn(best[0], t.answer))
        stats["finished"] += len(trees)
        _update_bar(bar, len(trees), stats, proposer)

    todo = list(range(len(trees_all)))
    if output_path and resume:
        done = _finished_trees(output_path, trees_all)
        for i, tree in done.items():
            trees_all[i] = tree
        todo = [i for i in todo if i not in done]
        if done:
            stats["finished"] = len(done)
            if bar is not None:
                bar.update(len(done))
    chunks = []
    bs = int(config.batch_size)
    for s in range(0, len(todo), bs):
        ch = _Chunk([trees_all[i] for i in todo[s: s + bs]], config)
        _run_chunk(ch, proposer, executor, scorer, hooks, on_finished, stats)
        chunks.append(ch)
    if bar is not None:
        bar.close()
    return (trees_all, chunks) if return_chunks else trees_all


def _finished_trees(path: str, trees: Sequence[SearchTree]) -> dict[int, SearchTree]:
    """Trees already in `path`, matched to problems by question (then answer), in order.

    The file is appended one flushed line per finished tree, so an interruption can only
    cut the last line; that line is removed from the file. Any other bad line is an error.
    """
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    found: dict[tuple, list[SearchTree]] = {}
    keep = 0
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        end = keep + len(raw) + 1
        if not raw.strip():
            keep = min(end, len(data))
            continue
        try:
            rec = json.loads(raw)
            tree = SearchTree.from_record(rec, where=f"{path}:{lineno}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if end > len(data):          # the last, unterminated line: cut by the interruption
                with open(path, "r+b") as f:
                    f.truncate(keep)
                break
            raise ValueError(f"{path}:{lineno}: not a tree dump line ({e}); fix or remove the "
                             "file, or pass resume=False") from e
        found.setdefault((tree.question, json.dumps(tree.answer)), []).append(tree)
        keep = min(end, len(data))
    done = {}
    for i, t in enumerate(trees):
        same = found.get((t.question, json.dumps(t.answer)))
        if same:
            done[i] = same.pop(0)
    return done


def greedy(problems: Sequence[Any], proposer: Any, executor: Any, config: Any, **kw):
    """Greedy decoding as the reference's sft_eval_greedy.yaml: MCTS with one child per
    node, one rollout, temperature 0, `config.greedy` depth and error threshold (§2.8)."""
    g = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") \
        else dict(config)
    g.num_children, g.num_rollouts = 1, 1
    g.temperature = float(config.greedy.temperature)
    g.max_depth = int(config.greedy.max_depth)
    g.errors_threshold = int(config.greedy.errors_threshold)
    g.terminal_guided = False
    return search(problems, proposer, executor, g, scorer=None, **kw)


def search_runs(problems: Sequence[Any], make_proposer: Callable[[int], Any], executor: Any,
                config: Any, scorer: Any = None, *, num_runs: int | None = None,
                **kw) -> list[list[SearchTree]]:
    """Independent MCTS runs for voting (§2.9): run r uses a proposer made with seed
    `config.seed + r`. The reference seeds every run with 0, which correlates the runs
    (§2.4 quirk 8); here each run samples differently."""
    n = int(num_runs if num_runs is not None else config.vote.num_runs)
    return [search(problems, make_proposer(int(config.seed) + r), executor, config, scorer, **kw)
            for r in range(n)]


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="search", unit="problem")


def _update_bar(bar, n: int, stats: dict, proposer: Any) -> None:
    if bar is None:
        return
    tokens = getattr(proposer, "tokens_generated", None)
    post = {"tokens": tokens} if tokens is not None else {"steps": stats["steps"]}
    if stats["graded"]:
        post["solved"] = f"{stats['solved'] / stats['graded']:.1%}"
    bar.set_postfix(post)
    bar.update(n)

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
import functools
from typing import Any, Callable, Sequence

import numpy as np

from rstar_jax import step_format as sf
from rstar_jax.data.problems import normalize_problem
from rstar_jax.search import expand
from rstar_jax.search import tree as device_tree
from rstar_jax.search.answers import best_answer
from rstar_jax.search.host_tree import SearchTree, resume_from_dump, save_trees
from rstar_jax.search.settings import MCTSSettings
from rstar_jax.step_format import CONTEXT_FULL, INVALID_TERMINALS


# ----------------------------------------------------------------------------- inputs


def grader_answer(step_text: str, *, reference_cut: bool = False) -> str:
    """Final answer of an answer step: `rstar_jax.verify.grader.extract_answer`."""
    from rstar_jax.verify import grader   # lazily: the grader imports sympy and math-verify
    return grader.extract_answer(step_text, reference_cut=reference_cut)


def settings_answer_fn(cfg: MCTSSettings) -> Callable[[str], str]:
    """The grader's answer extraction under the search settings: with
    `reference_answer_cut` it cuts at the first ".\\n" as the reference does (§3.6,
    quirk 6). Every driver uses this when no `answer_fn` is given."""
    return functools.partial(grader_answer, reference_cut=cfg.reference_answer_cut)


def grader_equal(pred: str, gold: str | Sequence[str]) -> bool:
    """`rstar_jax.verify.grader.math_equal_any` over the problem's accepted golds."""
    from rstar_jax.verify import grader
    return grader.math_equal_any(pred, [gold] if isinstance(gold, str) else gold)


@dataclasses.dataclass
class Hooks:
    """Injected host functions (tests pass scripted ones; defaults use the grader)."""

    answer_fn: Callable[[str], str] = grader_answer
    grade_fn: Callable[[str, Any], bool] = grader_equal


def new_trees(problems: Sequence[Any], *, mode: str = "mcts") -> list[SearchTree]:
    """One fresh tree per problem (dicts, `benchmarks.Problem`s or objects with .question)."""
    out = []
    for i, p in enumerate(problems):
        prob = normalize_problem(p, i)
        out.append(SearchTree.new(prob.question, prob.gold, prob.record, mode=mode))
    return out


# ---------------------------------------------------------------------------- a chunk


def _bucket(n: int) -> int:
    """Rows of the device arrays for n problems: the next power of two, so a few shapes
    cover every chunk size and jit compiles once per shape."""
    return 1 << max(0, (n - 1).bit_length())


class _Chunk:
    """The trees of one chunk of problems: host records + device arrays."""

    def __init__(self, trees: list[SearchTree], cfg: MCTSSettings):
        self.trees = trees
        self.cfg = cfg
        self.rows = _bucket(len(trees))
        self.k = cfg.num_children
        self.dev = device_tree.init_tree(self.rows, max(cfg.initial_num_slots, self.k + 1),
                                         self.k)
        self.num_nodes = np.ones(self.rows, np.int64)
        self.live = np.zeros(self.rows, bool)
        self.live[: len(trees)] = True
        self.kw = dict(c_puct=cfg.c_puct, unvisited_inf=cfg.unvisited_score == "inf")
        self.path_log: list[np.ndarray] = []   # selected node per level, for tests/diagnostics

    def prompt(self, row: int, node: int) -> str:
        t = self.trees[row]
        return (sf.build_prompt(t.question, reference_newlines=self.cfg.reference_prompt_newlines)
                + t.partial_solution(node))

    def ensure_capacity(self, num_new: np.ndarray) -> None:
        """Re-allocate every tree with doubled slots until the level's children fit."""
        need = int((self.num_nodes + num_new).max())
        n = self.dev.num_slots
        while n < need:
            n *= 2
        if n != self.dev.num_slots:
            self.dev = device_tree.grow(self.dev, n)

    def select_from_root(self) -> np.ndarray:
        start = np.zeros(self.rows, np.int32)
        self.dev, cur = device_tree.select_step(self.dev, start, self.live.copy(), **self.kw)
        return np.asarray(cur)

    def finish(self, rows: Sequence[int]) -> None:
        """Copy device numbers into the host records of `rows`."""
        visits, vsum, value, term = (np.asarray(a) for a in (
            self.dev.visits, self.dev.value_sum, self.dev.value, self.dev.terminal))
        for r in rows:
            self.trees[r].set_stats(visits[r], vsum[r], value[r], term[r])


@dataclasses.dataclass
class _LevelValues:
    """What one level adds to the device trees: per row r and new child j, [rows, K] each
    (num_new [rows])."""

    num_new: np.ndarray        # children added under the row's current node
    terminal: np.ndarray       # the child is terminal
    values: np.ndarray         # value to back up
    modes: np.ndarray          # device_tree.NO_UPDATE / LOCAL / RECURSIVE
    make_terminal: np.ndarray  # mark the child terminal after its update (missing score)

    @classmethod
    def empty(cls, rows: int, k: int) -> "_LevelValues":
        return cls(np.zeros(rows, np.int32), np.zeros((rows, k), bool),
                   np.zeros((rows, k), np.float32), np.zeros((rows, k), np.int32),
                   np.zeros((rows, k), bool))

    def add(self, row: int, terminal: bool, value: float = 0.0,
            mode: int = device_tree.NO_UPDATE) -> int:
        j = int(self.num_new[row])
        self.num_new[row] += 1
        self.terminal[row, j], self.values[row, j], self.modes[row, j] = terminal, value, mode
        return j


def _propose(ch: _Chunk, rows: list[int], cur: np.ndarray, proposer,
             stats: dict) -> tuple[list[int], list[list[str]]]:
    """Proposals for the nodes of `rows`; rows whose prompt no longer fits are returned
    apart (first element: rows that fit), so one long problem never ends the search."""
    prompts = [ch.prompt(b, int(cur[b])) for b in rows]
    fits = getattr(proposer, "fits", None)
    ok = list(fits(prompts)) if fits is not None and prompts else [True] * len(prompts)
    if len(ok) != len(prompts):
        raise ValueError(f"proposer.fits returned {len(ok)} flags for {len(prompts)} prompts")
    fit_rows = [b for b, f in zip(rows, ok) if f]
    if not fit_rows:
        return [], []
    proposals = proposer.propose([p for p, f in zip(prompts, ok) if f], ch.k,
                                 ch.cfg.temperature)
    if len(proposals) != len(fit_rows):
        raise ValueError(f"proposer.propose returned {len(proposals)} lists for "
                         f"{len(fit_rows)} prompts; it must return one list of steps per prompt")
    for props in proposals:
        if len(props) > ch.k:
            raise ValueError(f"proposer returned {len(props)} proposals for num_samples={ch.k}")
    stats["steps"] += sum(len(p) for p in proposals)
    return fit_rows, proposals


def _add_children(ch: _Chunk, pending: list[expand.PendingChild], results: list,
                  hooks: Hooks, scorer, rollout: int, out: _LevelValues) -> list[tuple]:
    """Create the level's nodes and their values (§2.5, §2.7); returns the nodes still
    waiting for a PPM score as (row, child position, node)."""
    cfg = ch.cfg
    to_score = []
    for pc, res in zip(pending, results):
        t = ch.trees[pc.row]
        node = expand.add_child(t, pc, res, errors_threshold=cfg.errors_threshold,
                                max_depth=cfg.max_depth, error_substring=cfg.error_substring,
                                rollout=rollout)
        if node.final_answer in INVALID_TERMINALS:
            # Invalid terminals get the negative reward on the node only, in every mode (§2.5).
            out.add(pc.row, True, cfg.negative_reward, device_tree.LOCAL)
        elif node.terminal and cfg.terminal_guided:
            ok = hooks.grade_fn(node.final_answer, t.answer)
            out.add(pc.row, True, cfg.positive_reward if ok else cfg.negative_reward,
                    device_tree.RECURSIVE)
        elif scorer is not None and (node.terminal or cfg.ppm_init_children):
            to_score.append((pc.row, out.add(pc.row, node.terminal), node))
        else:
            out.add(pc.row, node.terminal)
    return to_score


def _score(ch: _Chunk, to_score: list[tuple], scorer, out: _LevelValues) -> None:
    """PPM values of the new nodes: answer steps back theirs up, others start with it (§2.7)."""
    if not to_score:
        return
    scores = scorer.score([ch.prompt(r, n.index) for r, _, n in to_score])
    if len(scores) != len(to_score):
        raise ValueError(f"scorer.score returned {len(scores)} values for {len(to_score)} prompts")
    for (r, j, n), s in zip(to_score, scores):
        # A missing score makes the node a terminal worth the negative reward (§2.7).
        out.values[r, j] = ch.cfg.negative_reward if s is None else float(s)
        out.modes[r, j] = device_tree.RECURSIVE if n.terminal else device_tree.LOCAL
        if s is None and not n.terminal:
            out.make_terminal[r, j] = True
            n.terminal = True


def _host_level(ch: _Chunk, cur: np.ndarray, expand_rows: list[int], fit_rows: list[int],
                proposals: list[list[str]], executor, scorer, hooks: Hooks, rollout: int,
                stats: dict) -> tuple[_LevelValues, list[tuple]]:
    """The host half of a level: new nodes, their code runs and grades (no device work)."""
    cfg = ch.cfg
    out = _LevelValues.empty(ch.rows, ch.k)
    for b in sorted(set(expand_rows) - set(fit_rows)):
        # The prompt leaves no room for a next step: a named invalid terminal child.
        ch.trees[b].add_child(int(cur[b]), final_answer=CONTEXT_FULL, terminal=True,
                              rollout=rollout)
        out.add(b, True, cfg.negative_reward, device_tree.LOCAL)
        stats["context_full"] += 1
    pending: list[expand.PendingChild] = []
    for b, props in zip(fit_rows, proposals):
        pending += expand.pending_children(ch.trees[b], b, int(cur[b]), props, hooks.answer_fn)
    results = expand.run_programs(executor, pending)
    return out, _add_children(ch, pending, results, hooks, scorer, rollout, out)


def _finish_level(ch: _Chunk, cur: np.ndarray, out: _LevelValues, to_score: list[tuple],
                  scorer) -> np.ndarray:
    """The device half: PPM scores, then one jitted update; returns the next nodes."""
    cfg = ch.cfg
    _score(ch, to_score, scorer, out)
    ch.ensure_capacity(out.num_new)
    ch.dev, nxt, overflow = device_tree.level_update(
        ch.dev, cur.astype(np.int32), cur >= 0, out.num_new, out.terminal, out.values, out.modes,
        out.make_terminal, max_path=cfg.max_depth + 2, **ch.kw)
    ch.num_nodes += out.num_new
    if np.asarray(overflow).any():
        # Cannot happen while children deeper than max_depth are terminal (§2.5); a
        # failure here means the tree arrays were edited outside the driver.
        raise RuntimeError("level_update: a backup path exceeded max_depth + 2 nodes")
    return np.asarray(nxt)


def _chunk_steps(ch: _Chunk, proposer, executor, scorer, hooks: Hooks, on_finished,
                 stats: dict):
    """A chunk's whole search as a generator: device work runs inline; each level's host
    work is yielded as a function, whose result is sent back (`_drive`)."""
    cfg = ch.cfg
    done = np.zeros(ch.rows, bool)
    done[len(ch.trees):] = True
    for rollout in range(cfg.num_rollouts):
        cur = ch.select_from_root()
        ch.path_log.append(cur.copy())
        for _ in range(cfg.max_depth):
            if not (cur >= 0).any():
                break
            expand_rows = [b for b in np.flatnonzero(cur >= 0)
                           if not ch.trees[b].nodes[cur[b]].children]
            fit_rows, proposals = _propose(ch, expand_rows, cur, proposer, stats)
            out, to_score = yield functools.partial(
                _host_level, ch, cur, expand_rows, fit_rows, proposals, executor, scorer, hooks,
                rollout, stats)
            cur = _finish_level(ch, cur, out, to_score, scorer)
            ch.path_log.append(cur.copy())
        # A tree whose root became terminal can never change again: hand it out now.
        root_term = np.asarray(ch.dev.terminal[:, device_tree.ROOT_INDEX])
        newly = [b for b in range(len(ch.trees)) if root_term[b] and not done[b]]
        if newly:
            ch.finish(newly)
            done[newly] = True
            ch.live[newly] = False
            on_finished([ch.trees[b] for b in newly])
    rest = [b for b in range(len(ch.trees)) if not done[b]]
    ch.finish(rest)
    on_finished([ch.trees[b] for b in rest])


def _drive(programs: list, in_flight: int) -> None:
    """Run chunk generators, up to `in_flight` at once.

    With one, every level is serial: device, then host, then device. With two, while one
    chunk's host work (code runs, grading) goes on in a helper thread, the other chunk's
    device work (generation, PPM scores, tree updates) runs here. Each chunk still makes
    the same calls in the same order, so its trees are the serial path's exactly.
    """
    import concurrent.futures
    queue = list(programs)
    if in_flight <= 1:
        for gen in queue:
            task = next(gen, None)
            while task is not None:
                try:
                    task = gen.send(task())
                except StopIteration:
                    break
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mcts-host") as pool:
        active: list[tuple] = []        # (generator, future of its host work)

        def start(gen):
            try:
                active.append((gen, pool.submit(next(gen))))
            except StopIteration:
                pass

        while queue and len(active) < in_flight:
            start(queue.pop(0))
        while active:
            gen, fut = active.pop(0)
            try:
                task = gen.send(fut.result())
                active.append((gen, pool.submit(task)))
            except StopIteration:
                if queue:
                    start(queue.pop(0))


# ------------------------------------------------------------------------- public API


def search(problems: Sequence[Any], proposer: Any, executor: Any, config: Any,
           scorer: Any = None, *, answer_fn: Callable[[str], str] | None = None,
           grade_fn: Callable[[str, Any], bool] | None = None, output_path: str | None = None,
           progress: bool = True, return_chunks: bool = False, resume: bool = True,
           summary: dict | None = None):
    """Run MCTS on every problem and return one `SearchTree` per problem, in order.

    Args:
      problems: dicts (or objects) with `question` and, for terminal-guided data
        generation, `answer` (`rstar_jax.data.problems.normalize_problem`).
      proposer: `propose(prompts, num_samples, temperature) -> list[list[str]]`, built
        with the mode's stop tags (`config.stop_tags`); optionally `fits(prompts) ->
        list[bool]`: a node whose prompt does not fit becomes a `CONTEXT_FULL` terminal.
      executor: `run(programs) -> list[ExecResult]` (`output`, `error`, `timed_out`).
      config: the search section (`configs/search.py`), a ConfigDict, a plain dict or
        `MCTSSettings`.
      scorer: optional PPM, `score(prompts) -> list[float]` in (-1, 1).
      answer_fn / grade_fn: answer extraction and equivalence; default to the grader
        (extraction under `config.reference_answer_cut`, `settings_answer_fn`).
      output_path: JSONL file; each tree is appended as soon as it is finished.
      progress: show a tqdm bar (problems finished, steps or tokens, solve rate).
      return_chunks: also return the internal chunks (device arrays, selection log).
      resume: when `output_path` already holds finished trees (an interrupted run), those
        problems are loaded instead of searched again (`host_tree.resume_from_dump`).
      summary: a dict to fill with counts (steps, finished, solved, graded, context_full).
    """
    cfg = MCTSSettings.from_config(config)
    hooks = Hooks(answer_fn or settings_answer_fn(cfg), grade_fn or grader_equal)
    trees_all = new_trees(problems)
    if cfg.terminal_guided:
        missing = [i for i, t in enumerate(trees_all) if t.answer is None]
        if missing:
            raise ValueError(f"config.search.terminal_guided is True but problem {missing[0]} has "
                             "no 'answer'; give gold answers or set terminal_guided=False "
                             "(inference)")
    bar = _progress(len(trees_all), progress)
    stats = summary if summary is not None else {}
    for key in ("steps", "solved", "graded", "finished", "context_full"):
        stats.setdefault(key, 0)

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
        done = resume_from_dump(output_path, trees_all)
        for i, tree in done.items():
            trees_all[i] = tree
        todo = [i for i in todo if i not in done]
        if done:
            stats["finished"] += len(done)
            if bar is not None:
                bar.update(len(done))
    chunks = [_Chunk([trees_all[i] for i in todo[s: s + cfg.batch_size]], cfg)
              for s in range(0, len(todo), cfg.batch_size)]
    _drive([_chunk_steps(ch, proposer, executor, scorer, hooks, on_finished, stats)
            for ch in chunks], cfg.chunks_in_flight)
    if bar is not None:
        bar.close()
    return (trees_all, chunks) if return_chunks else trees_all


def greedy(problems: Sequence[Any], proposer: Any, executor: Any, config: Any, **kw):
    """Greedy decoding as the reference's sft_eval_greedy.yaml: MCTS with one child per
    node, one rollout, temperature 0, `config.greedy` depth, error threshold and stop tags
    (§2.8); `proposer` must stop at `config.greedy.stop_tags`."""
    settings = MCTSSettings.from_config(config).for_greedy()
    return search(problems, proposer, executor, settings, scorer=None, **kw)


def search_runs(problems: Sequence[Any], make_proposer: Callable[[int], Any], executor: Any,
                config: Any, scorer: Any = None, *, num_runs: int | None = None,
                **kw) -> list[list[SearchTree]]:
    """Independent MCTS runs for voting (§2.9): run r uses a proposer made with seed
    `config.seed + r`. The reference seeds every run with 0, which correlates the runs
    (§2.4 quirk 8); here each run samples differently."""
    cfg = MCTSSettings.from_config(config)
    n = int(num_runs if num_runs is not None else cfg.vote.num_runs)
    return [search(problems, make_proposer(cfg.seed + r), executor, cfg, scorer, **kw)
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

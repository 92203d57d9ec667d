"""Two tree dumps of the same problems side by side: ours against the PyTorch reference's.

  python launch/compare.py --trees_a <reference main.py dump>.jsonl --name_a reference \
      --trees_b <launch/search.py --out>.jsonl --name_b ours \
      [--grader math|exact] [--plots DIR] [--out summary.json] \
      [--data_config configs/data.py] [--max_rows 50]

Both files are read with `rstar_jax.search.host_tree.load_trees`, which takes our dumps
and the reference's (input record + "rstar": {tag: state}). Problems are matched by
question text (stripped; the k-th tree of a question on one side with the k-th on the
other); problems on one side only are listed and left out of the side-by-side numbers,
which are computed over the matched problems. Per side it prints: solve rate of the
best-Q answer (the reference's eval_output.py choice) and of any answer leaf, answer
agreement per problem, nodes and depth per tree, code-error and timeout rates per code
step, the Q values of correct and wrong answer leaves, and the SFT rows and PPM pairs
the data rules of --data_config yield. --plots writes PNGs, --out a JSON summary.

Rules that keep the two sides comparable:
* answers are graded against each tree's own gold answer with --grader (`math`:
  `rstar_jax.verify.grader.math_equal`; `exact`: stripped string equality, fast);
* a code step is a node whose action is "python_interpreter"; it is a code error when its
  observation contains "error" in any case (the reference's rule, §3.5) and a timeout
  when it contains "TimeoutError" (both executors write that message), since neither
  dump carries the executor's own flags;
* nodes are counted with the root; depth is the deepest node's number of steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
from typing import Callable, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rstar_jax import cli  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_CONFIG = os.path.join(_ROOT, "configs", "data.py")


def define_flags():
    """The command's flags, defined only when it runs as a script, so that importing this
    file (the tests do) defines no absl flags."""
    with cli.config_flag_errors():
        data = config_flags.DEFINE_config_file("data_config", DEFAULT_DATA_CONFIG,
                                               "data rules (configs/data.py)")
    return dict(
        data=data,
        trees_a=flags.DEFINE_string("trees_a", None, "first trees JSONL (e.g. the reference's)"),
        trees_b=flags.DEFINE_string("trees_b", None,
                                    "second trees JSONL (e.g. launch/search.py's)"),
        name_a=flags.DEFINE_string("name_a", "A", "label of --trees_a in the table and plots"),
        name_b=flags.DEFINE_string("name_b", "B", "label of --trees_b in the table and plots"),
        grader=flags.DEFINE_enum("grader", "math", ["math", "exact"],
                                 "math: rstar_jax.verify.grader.math_equal; exact: string "
                                 "equality after stripping"),
        plots=flags.DEFINE_string("plots", None, "directory for the PNG plots (optional)"),
        out=flags.DEFINE_string("out", None, "JSON summary file (optional)"),
        max_rows=flags.DEFINE_integer("max_rows", 50, "per-problem rows printed (0: none; all "
                                      "rows go to --out)", lower_bound=0),
    )


_FLAGS: dict = {}

CODE_ACTION = "python_interpreter"
PLOT_FILES = ("solve_rate.png", "agreement.png", "nodes_depth.png", "code_errors.png",
              "q_values.png", "training_data.png")


# ------------------------------------------------------------------------ inputs

@dataclasses.dataclass(frozen=True)
class Inputs:
    """Validated command-line inputs."""

    path_a: str
    path_b: str
    name_a: str
    name_b: str
    trees_a: list
    trees_b: list
    data: object            # the data-rule config (configs/data.py)
    grader: str
    plots: str | None
    out: str | None


def _has_a_line(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        return any(line.strip() for line in f)


def validate(data_cfg, *, trees_a, trees_b, name_a, name_b, grader, plots, out) -> Inputs:
    """Every input checked, both dumps read and validated, before anything is computed.

    The checks that need no library code come first, so they answer in about a second.
    """
    path_a = cli.check_file(trees_a, "trees_a", what="trees file")
    path_b = cli.check_file(trees_b, "trees_b", what="trees file")
    for flag, path in (("trees_a", path_a), ("trees_b", path_b)):
        if not _has_a_line(path):
            raise cli.UsageError(f"--{flag} {path}: no trees in it; expected one JSON line "
                                 "per problem (launch/search.py --out or the reference's "
                                 "main.py output)")
    if not name_a.strip() or not name_b.strip() or name_a == name_b:
        raise cli.UsageError(f"--name_a {name_a!r} and --name_b {name_b!r} must be two "
                             "different, non-empty labels")
    if plots:
        plots = os.path.dirname(
            cli.check_writable_parent(os.path.join(plots, PLOT_FILES[0]), "plots"))
        if os.path.exists(plots) and not os.path.isdir(plots):
            raise cli.UsageError(f"--plots {plots}: exists and is not a directory")
    if out:
        out = cli.check_writable_parent(out, "out")
        if os.path.isdir(out):
            raise cli.UsageError(f"--out {out}: is a directory; give a file name")
    from rstar_jax.data.ppm_pairs import rules_from_config
    from rstar_jax.search.host_tree import load_trees
    with cli.validating():
        try:
            rules_from_config(data_cfg.ppm)
            if int(data_cfg.sft.top_k) < 1:
                raise ValueError(f"sft.top_k must be >= 1, got {data_cfg.sft.top_k}")
        except (ValueError, TypeError, AttributeError) as e:
            raise cli.UsageError(f"--data_config: {e}") from e
        trees_a, trees_b = load_trees(path_a), load_trees(path_b)
    return Inputs(path_a, path_b, name_a, name_b, trees_a, trees_b, data_cfg, grader,
                  plots, out)


# ------------------------------------------------------------------- matching

@dataclasses.dataclass
class Matching:
    """Trees of the same problem on both sides, and those on one side only."""

    pairs: list          # [(tree_a, tree_b)]
    only_a: list
    only_b: list


def _key(tree) -> str:
    return tree.question.strip()


def match_problems(trees_a: Sequence, trees_b: Sequence) -> Matching:
    """Pair trees by question text: the k-th tree of a question in A with the k-th in B."""
    waiting: dict[str, list] = {}
    for t in trees_b:
        waiting.setdefault(_key(t), []).append(t)
    pairs, only_a = [], []
    for t in trees_a:
        same = waiting.get(_key(t))
        if same:
            pairs.append((t, same.pop(0)))
        else:
            only_a.append(t)
    paired_b = {id(b) for _, b in pairs}
    return Matching(pairs, only_a, [t for t in trees_b if id(t) not in paired_b])


# ----------------------------------------------------------------- statistics

Grader = Callable[[str, str], bool]


def make_grader(name: str) -> Grader:
    if name == "exact":
        return lambda pred, gold: pred.strip() == gold.strip()
    from rstar_jax.verify.grader import math_equal
    return math_equal


def _correct(pred: str | None, gold, grader: Grader) -> bool | None:
    """Whether `pred` matches the gold (any of a list); None without a gold answer."""
    if gold is None:
        return None
    if pred is None:
        return False
    golds = gold if isinstance(gold, list) else [gold]
    return any(grader(pred, g) for g in golds)


@dataclasses.dataclass
class TreeStats:
    """What one tree contributes to its side's numbers."""

    nodes: int
    depth: int
    best_answer: str | None
    best_correct: bool | None
    any_correct: bool | None
    code_steps: int
    code_errors: int
    timeouts: int
    error_terminals: int
    correct_leaf_q: list
    wrong_leaf_q: list


def tree_stats(tree, grader: Grader) -> TreeStats:
    from rstar_jax.search.answers import best_answer
    from rstar_jax.step_format import TOO_MANY_CODE_ERRORS

    best = best_answer(tree)
    code = [n for n in tree.nodes if n.action == CODE_ACTION]
    observations = [n.observation or "" for n in code]
    correct_q, wrong_q = [], []
    for leaf in tree.valid_answer_nodes():
        ok = _correct(leaf.final_answer, tree.answer, grader)
        if ok is not None:
            (correct_q if ok else wrong_q).append(float(leaf.q_value))
    has_gold = tree.answer is not None
    return TreeStats(
        nodes=len(tree.nodes), depth=max(n.depth for n in tree.nodes),
        best_answer=best[0] if best else None,
        best_correct=_correct(best[0] if best else None, tree.answer, grader),
        any_correct=bool(correct_q) if has_gold else None,
        code_steps=len(code), code_errors=sum("error" in o.lower() for o in observations),
        timeouts=sum("TimeoutError" in o for o in observations),
        error_terminals=sum(1 for n in tree.nodes
                            if not n.children and n.final_answer == TOO_MANY_CODE_ERRORS),
        correct_leaf_q=correct_q, wrong_leaf_q=wrong_q)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(xs: Sequence[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def training_data(trees: Sequence, data_cfg, grader: Grader) -> dict:
    """SFT rows and PPM pairs the data rules yield from these trees."""
    from rstar_jax.data.ppm_pairs import build_ppm_pairs, rules_from_config
    from rstar_jax.data.rstar_trees import view_of
    from rstar_jax.data.sft_data import build_sft_rows

    views = [view_of(t) for t in trees]
    # SFT selection re-grades answers, so it needs the gold answer.
    graded = [v for v in views if v.answer is not None]
    sft = build_sft_rows(graded, top_k=int(data_cfg.sft.top_k),
                         banned_substring=str(data_cfg.sft.banned_substring),
                         shuffle_seed=None, grader=grader)
    pairs = build_ppm_pairs(views, rules_from_config(data_cfg.ppm))
    return {"sft_rows": len(sft), "sft_questions": len({r["question"] for r in sft}),
            "ppm_pairs": len(pairs), "ppm_questions": len({p.question for p in pairs}),
            "trees_without_gold": len(views) - len(graded)}


def side_summary(stats: Sequence[TreeStats], data: dict) -> dict:
    graded = [s for s in stats if s.best_correct is not None]
    code = sum(s.code_steps for s in stats)
    correct_q = [q for s in stats for q in s.correct_leaf_q]
    wrong_q = [q for s in stats for q in s.wrong_leaf_q]
    return {
        "trees": len(stats), "graded": len(graded),
        "solve_rate": _rate(sum(bool(s.best_correct) for s in graded), len(graded)),
        "any_correct_rate": _rate(sum(bool(s.any_correct) for s in graded), len(graded)),
        "nodes_mean": _mean([s.nodes for s in stats]), "nodes_max": max(s.nodes for s in stats),
        "depth_mean": _mean([s.depth for s in stats]), "depth_max": max(s.depth for s in stats),
        "code_steps": code,
        "code_error_rate": _rate(sum(s.code_errors for s in stats), code),
        "timeout_rate": _rate(sum(s.timeouts for s in stats), code),
        "code_error_terminals": sum(s.error_terminals for s in stats),
        "correct_leaves": len(correct_q), "wrong_leaves": len(wrong_q),
        "correct_leaf_q_mean": _mean(correct_q), "correct_leaf_q_median": _median(correct_q),
        "wrong_leaf_q_mean": _mean(wrong_q), "wrong_leaf_q_median": _median(wrong_q),
        **data,
    }


def per_problem(matching: Matching, stats_a, stats_b, grader: Grader) -> list[dict]:
    rows = []
    for (ta, _), sa, sb in zip(matching.pairs, stats_a, stats_b):
        both = sa.best_answer is not None and sb.best_answer is not None
        rows.append({"question": ta.question, "answer_a": sa.best_answer,
                     "answer_b": sb.best_answer,
                     "agree": bool(both and (grader(sa.best_answer, sb.best_answer)
                                             or grader(sb.best_answer, sa.best_answer))),
                     "correct_a": sa.best_correct, "correct_b": sb.best_correct,
                     "nodes_a": sa.nodes, "nodes_b": sb.nodes,
                     "depth_a": sa.depth, "depth_b": sb.depth})
    return rows


def agreement_summary(rows: Sequence[dict]) -> dict:
    graded = [r for r in rows if r["correct_a"] is not None and r["correct_b"] is not None]
    return {
        "problems": len(rows), "agree": sum(r["agree"] for r in rows),
        "agree_rate": _rate(sum(r["agree"] for r in rows), len(rows)),
        "both_correct": sum(bool(r["correct_a"] and r["correct_b"]) for r in graded),
        "only_a_correct": sum(bool(r["correct_a"] and not r["correct_b"]) for r in graded),
        "only_b_correct": sum(bool(r["correct_b"] and not r["correct_a"]) for r in graded),
        "neither_correct": sum(not r["correct_a"] and not r["correct_b"] for r in graded),
        "no_answer_a": sum(r["answer_a"] is None for r in rows),
        "no_answer_b": sum(r["answer_b"] is None for r in rows),
    }


@dataclasses.dataclass
class Comparison:
    inputs: Inputs
    matching: Matching
    stats_a: list
    stats_b: list
    side_a: dict
    side_b: dict
    rows: list
    agreement: dict


def compare(inp: Inputs) -> Comparison:
    grader = make_grader(inp.grader)
    matching = match_problems(inp.trees_a, inp.trees_b)
    trees_a = [a for a, _ in matching.pairs]
    trees_b = [b for _, b in matching.pairs]
    stats_a = [tree_stats(t, grader) for t in trees_a]
    stats_b = [tree_stats(t, grader) for t in trees_b]
    empty = {"sft_rows": 0, "sft_questions": 0, "ppm_pairs": 0, "ppm_questions": 0,
             "trees_without_gold": 0}
    side_a = side_summary(stats_a, training_data(trees_a, inp.data, grader)) if stats_a else {}
    side_b = side_summary(stats_b, training_data(trees_b, inp.data, grader)) if stats_b else {}
    side_a, side_b = side_a or dict(empty, trees=0), side_b or dict(empty, trees=0)
    rows = per_problem(matching, stats_a, stats_b, grader)
    return Comparison(inp, matching, stats_a, stats_b, side_a, side_b, rows,
                      agreement_summary(rows))


# ---------------------------------------------------------------------- output

def _fmt(x, kind: str = "") -> str:
    if x is None:
        return "-"
    if kind == "%":
        return f"{100 * x:.1f}%"
    if isinstance(x, float):
        return f"{x:.3f}" if kind == "q" else f"{x:.2f}"
    return str(x)


TABLE = [  # (label, key(s), format)
    ("problems with a gold answer", ("graded",), ""),
    ("solve rate (best-Q answer)", ("solve_rate",), "%"),
    ("any answer leaf correct", ("any_correct_rate",), "%"),
    ("nodes per tree, mean / max", ("nodes_mean", "nodes_max"), ""),
    ("depth per tree, mean / max", ("depth_mean", "depth_max"), ""),
    ("code steps", ("code_steps",), ""),
    ("code-error rate per code step", ("code_error_rate",), "%"),
    ("timeout rate per code step", ("timeout_rate",), "%"),
    ("code-error terminals", ("code_error_terminals",), ""),
    ("answer leaves correct / wrong", ("correct_leaves", "wrong_leaves"), ""),
    ("Q of correct leaves, mean / median", ("correct_leaf_q_mean", "correct_leaf_q_median"), "q"),
    ("Q of wrong leaves, mean / median", ("wrong_leaf_q_mean", "wrong_leaf_q_median"), "q"),
    ("SFT rows / questions", ("sft_rows", "sft_questions"), ""),
    ("PPM pairs / questions", ("ppm_pairs", "ppm_questions"), ""),
]


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 3] + "..."


def render(c: Comparison, max_rows: int) -> str:
    inp, m = c.inputs, c.matching
    lines = [f"{inp.name_a}: {inp.path_a} ({len(inp.trees_a)} trees)",
             f"{inp.name_b}: {inp.path_b} ({len(inp.trees_b)} trees)",
             f"{len(m.pairs)} problems on both sides (grader: {inp.grader}); the numbers "
             "below are over those", ""]
    cells = [(label, [" / ".join(_fmt(side.get(k), kind) for k in keys)
                      for side in (c.side_a, c.side_b)]) for label, keys, kind in TABLE]
    w0 = max(len(label) for label, _ in cells) + 2
    w1 = max(len(x) for _, pair in cells for x in pair + [inp.name_a, inp.name_b]) + 2
    lines.append(f"{'':<{w0}}{inp.name_a:>{w1}}  {inp.name_b:>{w1}}")
    for label, (left, right) in cells:
        lines.append(f"{label:<{w0}}{left:>{w1}}  {right:>{w1}}")
    a = c.agreement
    lines += ["", f"answer agreement: {a['agree']} of {a['problems']} problems "
              f"({_fmt(a['agree_rate'], '%')}); both correct {a['both_correct']}, only "
              f"{inp.name_a} {a['only_a_correct']}, only {inp.name_b} {a['only_b_correct']}, "
              f"neither {a['neither_correct']}; no answer: {inp.name_a} {a['no_answer_a']}, "
              f"{inp.name_b} {a['no_answer_b']}"]
    for name, only in ((inp.name_a, m.only_a), (inp.name_b, m.only_b)):
        lines.append(f"only in {name} ({len(only)}):" + ("" if only else " none"))
        lines += [f"  {_short(t.question, 100)}" for t in only]
    if max_rows and c.rows:
        lines += ["", "per problem (best-Q answer; ok = correct):"]
        head = (f"  {'question':<40} {inp.name_a[:12]:>12} {inp.name_b[:12]:>12} agree "
                f"{'ok':>5} {'nodes':>9} {'depth':>7}")
        lines.append(head)
        for r in c.rows[:max_rows]:
            ok = "".join("-" if x is None else ("y" if x else "n")
                         for x in (r["correct_a"], r["correct_b"]))
            lines.append(
                f"  {_short(r['question'], 40):<40} {_short(_fmt(r['answer_a']), 12):>12} "
                f"{_short(_fmt(r['answer_b']), 12):>12} {'yes' if r['agree'] else 'no':>5} "
                f"{ok:>5} {r['nodes_a']:>4}/{r['nodes_b']:<4} {r['depth_a']:>3}/{r['depth_b']:<3}")
        if len(c.rows) > max_rows:
            lines.append(f"  ... {len(c.rows) - max_rows} more (all rows are in --out)")
    return "\n".join(line.rstrip() for line in lines)


def summary_json(c: Comparison, plots: list[str]) -> dict:
    inp = c.inputs
    return {"grader": inp.grader,
            "a": {"name": inp.name_a, "path": inp.path_a, "trees": len(inp.trees_a)},
            "b": {"name": inp.name_b, "path": inp.path_b, "trees": len(inp.trees_b)},
            "matched": len(c.matching.pairs),
            "only_a": [t.question for t in c.matching.only_a],
            "only_b": [t.question for t in c.matching.only_b],
            "side_a": c.side_a, "side_b": c.side_b, "agreement": c.agreement,
            "per_problem": c.rows, "plots": plots}


def write_plots(c: Comparison, out_dir: str) -> list[str]:
    """The PNGs of PLOT_FILES into out_dir; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    names = (c.inputs.name_a, c.inputs.name_b)
    sides = (c.side_a, c.side_b)
    stats = (c.stats_a, c.stats_b)
    colors = ("tab:blue", "tab:orange")
    paths = []

    def save(fig, name):
        path = os.path.join(out_dir, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)

    def bars(ax, labels, keys, scale=1.0):
        width = 0.38
        for i, (name, side) in enumerate(zip(names, sides)):
            values = [scale * (side.get(k) or 0) for k in keys]
            ax.bar([j + (i - 0.5) * width for j in range(len(keys))], values, width,
                   label=name, color=colors[i])
        ax.set_xticks(range(len(keys)), labels)
        top = max([scale * (side.get(k) or 0) for side in sides for k in keys] + [1e-9])
        ax.set_ylim(0, 1.35 * top)       # room for the legend above the bars
        ax.legend(loc="upper right")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars(ax, ["best-Q answer", "any answer leaf"], ["solve_rate", "any_correct_rate"], 100)
    ax.set_ylabel("% of matched problems")
    ax.set_title("solve rate")
    save(fig, "solve_rate.png")

    a = c.agreement
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = ["both correct", f"only {names[0]}", f"only {names[1]}", "neither", "answers agree"]
    values = [a["both_correct"], a["only_a_correct"], a["only_b_correct"],
              a["neither_correct"], a["agree"]]
    ax.bar(labels, values, color=["tab:green", colors[0], colors[1], "tab:gray", "tab:purple"])
    ax.set_ylabel("problems")
    ax.set_title(f"per-problem outcome ({a['problems']} matched)")
    ax.tick_params(axis="x", labelsize=8)
    save(fig, "agreement.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, field in zip(axes, ("nodes", "depth")):
        for i, name in enumerate(names):
            ax.hist([getattr(s, field) for s in stats[i]], bins=20, alpha=0.6, label=name,
                    color=colors[i])
        ax.set_xlabel(f"{field} per tree")
        ax.set_ylabel("trees")
        ax.legend()
    save(fig, "nodes_depth.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars(ax, ["code error", "timeout"], ["code_error_rate", "timeout_rate"], 100)
    ax.set_ylabel("% of code steps")
    ax.set_title("code steps that failed")
    save(fig, "code_errors.png")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, name, side_stats in zip(axes, names, stats):
        correct = [q for s in side_stats for q in s.correct_leaf_q]
        wrong = [q for s in side_stats for q in s.wrong_leaf_q]
        ax.hist([correct, wrong], bins=20, range=(-1, 1), label=["correct", "wrong"],
                color=["tab:green", "tab:red"])
        ax.set_title(f"{name}: Q of answer leaves")
        ax.set_xlabel("Q")
        ax.legend()
    axes[0].set_ylabel("leaves")
    save(fig, "q_values.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bars(ax, ["SFT rows", "PPM pairs"], ["sft_rows", "ppm_pairs"])
    ax.set_title("training data under the same data rules")
    save(fig, "training_data.png")
    return paths


def _write_json(obj, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    f = {k: v.value for k, v in _FLAGS.items()}
    inp = validate(f["data"], trees_a=f["trees_a"], trees_b=f["trees_b"], name_a=f["name_a"],
                   name_b=f["name_b"], grader=f["grader"], plots=f["plots"], out=f["out"])
    cli.quiet_logging()
    result = compare(inp)
    print(render(result, f["max_rows"]))
    plots = write_plots(result, inp.plots) if inp.plots else []
    if plots:
        print(f"\nplots: {', '.join(plots)}")
    if inp.out:
        _write_json(summary_json(result, plots), inp.out)
        print(f"summary: {inp.out}")


if __name__ == "__main__":
    _FLAGS.update(define_flags())
    cli.run(main)

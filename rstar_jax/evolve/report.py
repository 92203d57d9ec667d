"""The run's report: DIR/report.json, DIR/report.md and PNG plots.

Read only from what the stages wrote (their DONE markers, summaries and eval files), so
a report can be rebuilt from any workdir at any time, also of a run in progress.
"""

from __future__ import annotations

import os

from rstar_jax.evolve.stages import STAGES
from rstar_jax.evolve.workdir import Workdir, read_json, write_json_atomic, write_text_atomic


def _eval(wd: Workdir, unit: str, mode: str, split: str) -> dict | None:
    path = os.path.join(wd.stage_dir(unit, "eval"), f"{mode}.{split}.json")
    return read_json(path)["metrics"] if os.path.isfile(path) else None


def _done(wd: Workdir, unit: str, stage: str) -> dict | None:
    return wd.done_info(unit, stage) if wd.is_done(unit, stage) else None


def build(wd: Workdir, settings, train_problems, eval_problems) -> dict:
    e = settings.eval
    rounds = []
    for r in settings.rounds:
        unit = f"round{r.k}"
        search = _done(wd, unit, "search") or {}
        data = _done(wd, unit, "data") or {}
        ppm = _done(wd, unit, "ppm") or {}
        greedy = {s: m["pass1"] for s in e.greedy_splits
                  if (m := _eval(wd, unit, "greedy", s)) is not None}
        mcts = {s: m["pass1"] for s in e.mcts_splits
                if (m := _eval(wd, unit, "mcts", s)) is not None}
        rounds.append({
            "round": r.k,
            "mcts_solve_rate": search.get("solve_rate"),
            "mcts_solve_rate_by_part": search.get("solve_rate_by_part"),
            "mcts_solve_rate_by_difficulty": search.get("solve_rate_by_difficulty"),
            "greedy_pass1": greedy,
            "ppm_mcts_pass1": mcts or None,
            "ppm_pair_accuracy": ppm.get("pair_accuracy"),
            "sft_rows": data.get("sft_rows"), "ppm_pairs": data.get("ppm_pairs"),
            "sft_steps": (_done(wd, unit, "policy") or {}).get("steps"),
            "seconds": {stage: info["seconds"] for stage in STAGES
                        if (info := _done(wd, unit, stage)) is not None},
        })
    control = None
    if settings.control_enabled:
        pol = _done(wd, "control", "policy") or {}
        control = {"greedy_pass1": {s: m["pass1"] for s in e.greedy_splits
                                    if (m := _eval(wd, "control", "greedy", s)) is not None},
                   "sft_steps": pol.get("steps"),
                   "seconds": {stage: info["seconds"] for stage in ("policy", "eval")
                               if (info := _done(wd, "control", stage)) is not None}}
    last = f"round{settings.last_round}"
    scaling = {}
    for split in e.scaling_splits:
        sample = _eval(wd, last, "sample", split)
        deep = _eval(wd, last, "mcts_scaling", split)
        greedy = _eval(wd, last, "greedy", split)
        if sample is None and deep is None:
            continue
        scaling[split] = {
            "n": list(e.scaling_n),
            "greedy": greedy["pass1"] if greedy else None,
            "majority": [sample.get(f"majority@{n}") for n in e.scaling_n] if sample else None,
            "best_of_n": [sample.get(f"best_of_n@{n}") for n in e.scaling_n] if sample else None,
            "mcts": [deep.get(f"mcts@{n}") for n in e.scaling_n] if deep else None,
        }
    return {"name": settings.name, "rounds": rounds, "control": control, "scaling": scaling,
            "splits": {s: settings.problems["eval"][s] for s in settings.problems["eval"]},
            "split_sizes": {s: len(v) for s, v in eval_problems.items()},
            "train_problems": len(train_problems)}


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(rep: dict) -> str:
    splits = sorted({s for r in rep["rounds"] for s in r["greedy_pass1"]})
    out = [f"# Self-evolution report: {rep['name']}", "",
           f"{rep['train_problems']} training problems; evaluation splits: "
           + ", ".join(f"{s} ({rep['split_sizes'].get(s, '?')})" for s in rep["split_sizes"]), "",
           "## Rounds (accuracies in %)", "",
           "| round | MCTS solve rate (train) | " + " | ".join(f"greedy {s}" for s in splits)
           + " | PPM-MCTS | PPM pair acc. | SFT rows | PPM pairs |",
           "|---|---|" + "---|" * len(splits) + "---|---|---|---|"]
    for r in rep["rounds"]:
        mcts = ", ".join(f"{s} {_pct(v)}" for s, v in (r["ppm_mcts_pass1"] or {}).items()) or "–"
        out.append(f"| {r['round']} | {_pct(r['mcts_solve_rate'])} | "
                   + " | ".join(_pct(r["greedy_pass1"].get(s)) for s in splits)
                   + f" | {mcts} | {_pct(r['ppm_pair_accuracy'])} | {r['sft_rows']} | "
                   f"{r['ppm_pairs']} |")
    if rep["control"]:
        c = rep["control"]
        out.append(f"| control (r1 + {c['sft_steps']} steps on round 1 data) | – | "
                   + " | ".join(_pct(c["greedy_pass1"].get(s)) for s in splits) + " | – | – | – | – |")
    out += ["", "## Training-problem coverage by MCTS, per part and difficulty (paper Table 2)", ""]
    for r in rep["rounds"]:
        parts = r.get("mcts_solve_rate_by_part") or {}
        diff = r.get("mcts_solve_rate_by_difficulty") or {}
        out.append(f"- round {r['round']}: " + ", ".join(f"{p} {_pct(v)}" for p, v in parts.items())
                   + ("; by number of terms: " + ", ".join(f"{d}: {_pct(v)}" for d, v in diff.items())
                      if diff else ""))
    if rep["scaling"]:
        out += ["", "## Test-time scaling, last round (paper Fig. 3)", ""]
        for split, sc in rep["scaling"].items():
            out += [f"### {split} (greedy {_pct(sc['greedy'])})", "",
                    "| N | " + " | ".join(str(n) for n in sc["n"]) + " |",
                    "|---|" + "---|" * len(sc["n"])]
            for name in ("majority", "best_of_n", "mcts"):
                if sc[name] is not None:
                    out.append(f"| {name} | " + " | ".join(_pct(v) for v in sc[name]) + " |")
            out.append("")
    out += ["", "## Wall time per stage (s)", "",
            "| round | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
    for r in rep["rounds"]:
        out.append(f"| {r['round']} | " + " | ".join(
            f"{r['seconds'][s]:.0f}" if s in r["seconds"] else "–" for s in STAGES) + " |")
    if rep["control"]:
        out.append("| control | – | – | " + f"{rep['control']['seconds'].get('policy', 0):.0f} | – | – | "
                   f"{rep['control']['seconds'].get('eval', 0):.0f} |")
    return "\n".join(out) + "\n"


def draw_plots(wd: Workdir, rep: dict) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    rounds = [r["round"] for r in rep["rounds"]]
    splits = sorted({s for r in rep["rounds"] for s in r["greedy_pass1"]})
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in splits:
        ax.plot(rounds, [r["greedy_pass1"].get(s) for r in rep["rounds"]], marker="o",
                label=f"greedy {s}")
        if rep["control"] and s in rep["control"]["greedy_pass1"]:
            ax.axhline(rep["control"]["greedy_pass1"][s], linestyle="--", linewidth=1,
                       color=ax.lines[-1].get_color(), label=f"control {s}")
    ax.plot(rounds, [r["mcts_solve_rate"] for r in rep["rounds"]], marker="s", color="black",
            label="MCTS solve rate (train)")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_xticks(rounds)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("self-evolution")
    fig.tight_layout()
    path = os.path.join(wd.root, "rounds.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    for split, sc in rep["scaling"].items():
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, label in (("majority", "majority vote"), ("best_of_n", "best-of-N (PPM)"),
                            ("mcts", "PPM-guided MCTS")):
            if sc[name] is not None:
                ax.plot(sc["n"], sc[name], marker="o", label=label)
        if sc["greedy"] is not None:
            ax.axhline(sc["greedy"], linestyle="--", color="gray", label="greedy")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sc["n"])
        ax.set_xticklabels([str(n) for n in sc["n"]])
        ax.set_xlabel("trajectories N")
        ax.set_ylabel("accuracy")
        ax.set_title(f"test-time scaling on {split}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(wd.root, f"scaling_{split}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write(wd: Workdir, rep: dict, *, plots: bool = True) -> None:
    write_json_atomic(rep, os.path.join(wd.root, "report.json"))
    write_text_atomic(markdown(rep), os.path.join(wd.root, "report.md"))
    if plots:
        draw_plots(wd, rep)

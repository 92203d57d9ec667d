"""Measure our answer grader against plain math-verify on the peer equivalence cases.

Usage: python launch/eval_grader.py [--cases PATH] [--show-failures N]

Prints one JSON object: for each grader its accuracy, TP/FN/TN/FP counts (FP = a false
"equal" verdict, the error that poisons MCTS Q-values and PPM pairs), and seconds taken.
The cases (tests/data/grader_peer_cases.jsonl, a copy of shared/data/grader/peer_cases.jsonl)
come from the test suites of Math-Verify, MARIO_EVAL, Qwen2.5-Math and Hendrycks MATH:
`{"gold", "pred", "equal", "kind", ...}` where kind "solution" means pred is a full
solution text and "answer" means it is an already extracted answer.

The plain math-verify baseline follows the adapter in shared/reference/graders.md §3:
gold wrapped as `$gold$`, pred parsed with LaTeX (boxed first) + expression extraction,
short (answer-kind) preds wrapped in `$...$` too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rstar_jax.verify.grader import extract_answer, math_equal  # noqa: E402

DEFAULT_CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "tests", "data", "grader_peer_cases.jsonl")


def load_cases(path: str) -> list[dict]:
    """The peer cases, one dict per line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plain_math_verify(pred: str, gold: str, kind: str) -> bool:
    """math-verify with no convention layer (the baseline of graders.md §3)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        gold_parsed = parse(f"${gold}$", config)
        pred_parsed = parse(f"${pred}$" if kind == "answer" else pred, config)
        return bool(verify(gold_parsed, pred_parsed))
    except Exception:  # an error is a "not equal" verdict, as in graders.md
        return False


def ours(pred: str, gold: str, kind: str) -> bool:
    """Our pipeline: extract the final answer from full solutions, then math_equal."""
    return math_equal(extract_answer(pred) if kind == "solution" else pred, gold)


def score(grader, cases: list[dict]) -> tuple[dict, list[dict]]:
    """Confusion counts, accuracy and wall time of `grader(pred, gold, kind)` on `cases`."""
    counts = {"tp": 0, "fn": 0, "tn": 0, "fp": 0}
    failures = []
    start = time.perf_counter()
    for case in cases:
        verdict = grader(case["pred"], case["gold"], case["kind"])
        key = ("tp" if verdict else "fn") if case["equal"] else ("fp" if verdict else "tn")
        counts[key] += 1
        if key in ("fn", "fp"):
            failures.append({"verdict": key, **case})
    seconds = time.perf_counter() - start
    n = len(cases)
    summary = {"accuracy": round((counts["tp"] + counts["tn"]) / n, 4), "n": n,
               "false_equal": counts["fp"], **counts, "seconds": round(seconds, 2)}
    return summary, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="peer cases JSONL file")
    parser.add_argument("--show-failures", type=int, default=0,
                        help="also print up to N misjudged cases of our grader (to stderr)")
    args = parser.parse_args()
    cases = load_cases(args.cases)
    baseline, _ = score(plain_math_verify, cases)
    ours_summary, failures = score(ours, cases)
    print(json.dumps({"cases": args.cases, "plain_math_verify": baseline,
                      "rstar_jax_math_equal": ours_summary}, indent=2))
    for failure in failures[: args.show_failures]:
        print(json.dumps(failure, ensure_ascii=False), file=sys.stderr)


if __name__ == "__main__":
    main()

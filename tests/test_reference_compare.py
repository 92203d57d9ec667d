"""launch/compare.py on a reference-shaped dump and one of ours: table, plots, JSON, errors.

The two files come from the committed fixture script: the same problems searched "by
the reference" (main.py's dump shape) and "by us" (host_tree.save_trees), with one
problem missing on each side, different answers on two problems, a code error in every
tree and one timeout on the reference side.
"""

import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from rstar_jax.data import build_ppm_pairs, build_sft_rows, load_tree_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "make_reference_fixtures", os.path.join(ROOT, "tests", "fixtures",
                                            "make_reference_fixtures.py"))
F = importlib.util.module_from_spec(spec)
spec.loader.exec_module(F)


def run_compare(args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "RSTAR_"))}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", "compare.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("dumps")
    ref, ours = str(root / "reference_trees.jsonl"), str(root / "our_trees.jsonl")
    F.write_reference_trees(ref)
    F.write_our_trees(ours)
    return root, ref, ours


def exact(pred, gold):
    return pred.strip() == gold.strip()


def test_compare_prints_the_table_and_writes_plots_and_summary(dumps, tmp_path):
    root, ref, ours = dumps
    # The reference's lines carry main.py's input record and full node states.
    first = json.loads(open(ref).readline())
    assert set(first) == {"index", "question", "answer", "rstar"}
    assert set(first["rstar"]["0.1"]) >= {"text", "extra_info", "action", "action_input",
                                          "final_answer", "observation", "value", "q_value",
                                          "visit_count"}
    plots, out = tmp_path / "plots", tmp_path / "summary.json"
    proc = run_compare([f"--trees_a={ref}", "--name_a=reference", f"--trees_b={ours}",
                        "--name_b=ours", "--grader=exact", f"--plots={plots}",
                        f"--out={out}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    print(text)
    for needle in ("3 problems on both sides", "solve rate (best-Q answer)",
                   "timeout rate per code step", "Q of wrong leaves", "SFT rows / questions",
                   "PPM pairs / questions", "answer agreement: 1 of 3 problems",
                   "only in reference (1):\n  What is 3 times 11?",
                   "only in ours (1):\n  What is 2 times 13?"):
        assert needle in text, needle
    summary = json.loads(out.read_text())
    assert summary["matched"] == 3
    assert summary["only_a"] == ["What is 3 times 11?"]
    assert summary["only_b"] == ["What is 2 times 13?"]
    a, b = summary["side_a"], summary["side_b"]
    assert a["solve_rate"] == pytest.approx(2 / 3) and b["solve_rate"] == pytest.approx(2 / 3)
    assert a["timeout_rate"] > 0 and b["timeout_rate"] == 0      # only the reference timed out
    assert a["code_error_rate"] > b["code_error_rate"] > 0
    assert a["correct_leaf_q_mean"] == 1.0 and a["wrong_leaf_q_mean"] == -1.0
    per = {r["question"]: r for r in summary["per_problem"]}
    assert per["What is 6 times 7?"]["agree"] and not per["What is 8 times 9?"]["agree"]
    assert (per["What is 8 times 9?"]["correct_a"], per["What is 8 times 9?"]["correct_b"]) \
        == (True, False)
    assert summary["agreement"]["only_a_correct"] == summary["agreement"]["only_b_correct"] == 1
    # The SFT rows and PPM pairs are the data rules' own counts on the matched trees.
    for side, path in ((a, ref), (b, ours)):
        matched = [r for r in load_tree_records(path)
                   if r.question not in ("What is 3 times 11?", "What is 2 times 13?")]
        assert side["sft_rows"] == len(build_sft_rows(matched, grader=exact)) > 0
        assert side["ppm_pairs"] == len(build_ppm_pairs(matched)) > 0
    assert sorted(os.listdir(plots)) == sorted(
        ["solve_rate.png", "agreement.png", "nodes_depth.png", "code_errors.png",
         "q_values.png", "training_data.png"])
    for name in os.listdir(plots):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.path.basename(p) for p in summary["plots"]) == sorted(os.listdir(plots))


def _load_compare():
    spec = importlib.util.spec_from_file_location(
        "launch_compare", os.path.join(ROOT, "launch", "compare.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up there
    spec.loader.exec_module(module)      # defines no flags: they are defined in __main__
    return module


@pytest.mark.parametrize("case", ["bad_line", "bad_grader"])
def test_compare_rejects_bad_input_with_one_line(dumps, tmp_path, case):
    """As a command: one line `error: ...`, exit status 2, nothing written."""
    root, ref, ours = dumps
    bad = tmp_path / "bad.jsonl"
    bad.write_text(open(ours).readline() + json.dumps({"question": "q", "rstar": {"0": {}}})
                   + "\n")
    args, needles = {
        "bad_line": ([f"--trees_a={ref}", f"--trees_b={bad}"],
                     ["bad.jsonl:2", "missing field 'text'"]),
        "bad_grader": ([f"--trees_a={ref}", f"--trees_b={ours}", "--grader=fuzzy"],
                       ["--grader", "math|exact"]),
    }[case]
    out = tmp_path / "summary.json"
    proc = run_compare(args + [f"--out={out}", f"--plots={tmp_path / 'plots'}"], tmp_path)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert proc.stdout == "" and not out.exists() and not (tmp_path / "plots").exists()


def test_compare_validation_names_the_bad_input(dumps, tmp_path):
    """The other checks of `validate`, in-process: each raises a UsageError, which the
    command answers with the same one-line error as above (`cli.run`)."""
    from ml_collections import config_dict

    from rstar_jax import cli

    compare = _load_compare()
    root, ref, ours = dumps
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    data = importlib.import_module("configs.data").get_config()
    good = dict(trees_a=ref, trees_b=ours, name_a="reference", name_b="ours", grader="exact",
                plots=None, out=None)
    assert len(compare.validate(data, **good).trees_a) == 4
    # The default grader gives the same verdicts on these integer answers.
    with_math = compare.compare(compare.validate(data, **{**good, "grader": "math"}))
    exact_run = compare.compare(compare.validate(data, **good))
    assert with_math.rows == exact_run.rows and with_math.side_a == exact_run.side_a
    bad_rules = config_dict.ConfigDict(data.to_dict())
    bad_rules.ppm.mode = "bogus"
    for change, config, needle in [
        (dict(trees_b=str(tmp_path / "nowhere.jsonl")), data, "--trees_b .*nowhere.jsonl"),
        (dict(name_b="reference"), data, "two different"),
        (dict(out=str(tmp_path)), data, "--out"),
        (dict(trees_a=str(empty)), data, "no trees in it"),
        (dict(), bad_rules, "--data_config: config.ppm.mode must be one of"),
    ]:
        with pytest.raises(cli.UsageError, match=needle):
            compare.validate(config, **{**good, **change})

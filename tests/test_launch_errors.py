"""Every launch script answers bad input with one line, `error: ...`, and exit status 2.

Each case runs the script as a user would, in a fresh process, with one bad input (a
missing path, a malformed problem or data file, an out-of-range config override) and
otherwise valid flags; the checks run before any model is loaded.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, args, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_", "RSTAR_"))}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc, *needles):
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def inputs(tmp_path):
    """A stub model directory (config.json only: nothing gets as far as loading it) and
    one good and one malformed file of each kind."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    files = {
        "problems": tmp_path / "problems.jsonl",
        "bad_problems": tmp_path / "bad_problems.jsonl",
        "sft": tmp_path / "sft.jsonl",
        "bad_sft": tmp_path / "bad_sft.jsonl",
        "pairs": tmp_path / "pairs.jsonl",
        "bad_pairs": tmp_path / "bad_pairs.jsonl",
    }
    files["problems"].write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    files["bad_problems"].write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n"
                                     + '{"question": "2+2?", "answer":\n')
    files["sft"].write_text(json.dumps({"query": "1+1?", "response": "2"}) + "\n")
    files["bad_sft"].write_text(json.dumps({"query": "1+1?", "answer": "2"}) + "\n")
    pair = {"prompt": "p", "pos": "a", "neg": "b", "pos_count": 1, "neg_count": 1}
    files["pairs"].write_text(json.dumps(pair) + "\n")
    files["bad_pairs"].write_text(json.dumps({**pair, "neg_count": "one"}) + "\n")
    return tmp_path, model, files


SEARCH = [f"--search_config={ROOT}/configs/search.py:round1",
          f"--engine_config={ROOT}/configs/engine.py:tiny"]


def search_args(model, problems, out, *extra):
    return [*SEARCH, f"--policy={model}", f"--problems={problems}", f"--out={out}", *extra]


def test_search_missing_policy(inputs):
    tmp, model, f = inputs
    proc = run_script("search.py", search_args(tmp / "nowhere", f["problems"], tmp / "t.jsonl"),
                      tmp)
    assert_one_line_error(proc, "--policy", "nowhere")


def test_search_malformed_problem_file(inputs):
    tmp, model, f = inputs
    proc = run_script("search.py", search_args(model, f["bad_problems"], tmp / "t.jsonl"), tmp)
    assert_one_line_error(proc, "bad_problems.jsonl", "line 2")
    assert not (tmp / "t.jsonl").exists()


def test_search_out_of_range_override(inputs):
    tmp, model, f = inputs
    proc = run_script("search.py", search_args(model, f["problems"], tmp / "t.jsonl",
                                               "--search_config.num_children=0"), tmp)
    assert_one_line_error(proc, "num_children", ">= 1")


def test_search_unknown_override(inputs):
    tmp, model, f = inputs
    proc = run_script("search.py", search_args(model, f["problems"], tmp / "t.jsonl",
                                               "--search_config.num_childern=4"), tmp)
    assert_one_line_error(proc, "num_childern")


def train_args(script, model, data, out, *extra):
    name = "train_sft" if script == "train_sft.py" else "train_ppm"
    return [f"--config={ROOT}/configs/{name}.py:tiny", f"--init={model}", f"--data={data}",
            f"--out={out}", *extra]


@pytest.mark.parametrize("script, good, bad, needle", [
    ("train_sft.py", "sft", "bad_sft", "response"),
    ("train_ppm.py", "pairs", "bad_pairs", "neg_count"),
])
def test_training_scripts_reject_bad_input(inputs, script, good, bad, needle):
    tmp, model, f = inputs
    out = tmp / "out"
    assert_one_line_error(run_script(script, train_args(script, tmp / "nowhere", f[good], out),
                                     tmp), "--init", "nowhere")
    assert_one_line_error(run_script(script, train_args(script, model, f[bad], out), tmp),
                          "row 0", needle)
    assert_one_line_error(run_script(script, train_args(script, model, f[good], out,
                                                        "--config.batch_size=0"), tmp),
                          "batch_size", ">= 1")
    assert not out.exists()

"""launch/evolve.py end to end on configs/smoke.py: the whole loop (rounds 1-3, round 3
PPM-augmented, the control, the report), the notebook on its workdir, resuming after
SIGKILL at three stages, and bad input that stops the run before any work.

Every run here is the command a user types, in a fresh process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rstar_jax.evolve.workdir import checksums

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "configs", "smoke.py")


def env():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    e["JAX_PLATFORMS"] = "cpu"
    e["MPLBACKEND"] = "Agg"
    return e


def command(workdir, *extra, config=SMOKE):
    return [sys.executable, os.path.join(ROOT, "launch", "evolve.py"), f"--config={config}",
            f"--workdir={workdir}", *extra]


def run(workdir, *extra, config=SMOKE, timeout=600):
    return subprocess.run(command(workdir, *extra, config=config), capture_output=True,
                          text=True, timeout=timeout, env=env(), cwd=ROOT)


def without_times(obj):
    """The report minus wall times, which differ between any two runs."""
    if isinstance(obj, dict):
        return {k: without_times(v) for k, v in obj.items() if k not in ("seconds",)}
    if isinstance(obj, list):
        return [without_times(v) for v in obj]
    return obj


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke") / "run"
    t0 = time.perf_counter()
    proc = run(workdir)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return workdir, seconds, proc.stdout


def test_smoke_run_writes_every_stage_and_the_report(smoke_run):
    workdir, seconds, stdout = smoke_run
    print(f"smoke run: {seconds:.0f} s")
    rep = json.loads((workdir / "report.json").read_text())
    assert [r["round"] for r in rep["rounds"]] == [1, 2, 3]
    for r in rep["rounds"]:
        for stage in ("search", "data", "policy", "ppm", "export", "eval"):
            assert (workdir / f"round{r['round']}" / stage / "DONE").is_file()
        assert 0 <= r["mcts_solve_rate"] <= 1
        assert set(r["greedy_pass1"]) == {"eval_easy", "eval_hard"}
        assert all(0 <= v <= 1 for v in r["greedy_pass1"].values())
        assert r["ppm_mcts_pass1"] is not None and set(r["seconds"]) >= {"search", "policy"}
    assert rep["rounds"][0]["mcts_solve_rate"] > 0     # the scripted bootstrap solves some
    assert rep["control"]["sft_steps"] == sum(r["sft_steps"] for r in rep["rounds"][1:])
    assert set(rep["scaling"]["eval_hard"]) >= {"n", "majority", "best_of_n", "mcts", "greedy"}
    assert set(rep["splits"]) == {"eval_easy", "eval_hard"}
    for name in ("report.md", "rounds.png", "scaling_eval_hard.png", "config.json"):
        assert (workdir / name).is_file(), name
    # Exported models are Hugging Face directories that transformers opens (torch weights).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    policy = workdir / "round3" / "export" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(policy)
    ids = tok("<|user|>:\n1+1?", return_tensors="pt").input_ids
    assert model(ids).logits.shape[-1] == model.config.vocab_size
    assert (workdir / "round3" / "export" / "ppm" / "value_head.safetensors").is_file()
    # The reference's own data files are written beside ours.
    sft_ref = json.loads((workdir / "round1" / "data" / "sft.json").read_text())
    assert sft_ref and set(sft_ref[0]) == {"query", "response"}


def test_a_second_run_does_nothing_and_changes_nothing(smoke_run):
    workdir, _, _ = smoke_run
    before = checksums(str(workdir), skip=("report.md", "report.json", "rounds.png",
                                           "scaling_eval_hard.png"))
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done in" not in proc.stdout          # every stage was already DONE
    after = checksums(str(workdir), skip=("report.md", "report.json", "rounds.png",
                                          "scaling_eval_hard.png"))
    assert before == after


def test_multihost_evolve_as_two_processes_writes_the_single_process_report(smoke_run,
                                                                             tmp_path):
    """The same command as two local processes on JAX's distributed runtime (one CPU
    device each, to keep the suite short; tests/test_multihost_*.py run 2 devices per
    process): search and eval split by problems, training on the mesh over both."""
    import multihost_fixtures as multihost
    reference, _, _ = smoke_run
    workdir = tmp_path / "two"
    multihost.run(command(workdir), 2, 1, tmp_path / "logs", timeout_s=900)
    logs = multihost.logs(tmp_path / "logs")
    assert "process 1 of 2: 1 local devices, 2 in all" in logs
    got = without_times(json.loads((workdir / "report.json").read_text()))
    want = without_times(json.loads((reference / "report.json").read_text()))
    assert got == want
    for k in (1, 2):     # terminal-guided rounds: the merged trees are byte-identical
        trees = f"round{k}/search/trees.jsonl"
        assert (workdir / trees).read_bytes() == (reference / trees).read_bytes(), trees
    leftovers = [str(p) for p in workdir.rglob("*.part*-of-*")]
    assert not leftovers, leftovers


def test_notebook_opens_the_smoke_workdir(smoke_run, tmp_path):
    workdir, _, _ = smoke_run
    nb = json.loads(open(os.path.join(ROOT, "notebooks", "evolve_report.ipynb")).read())
    script = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    path = tmp_path / "nb.py"
    path.write_text(script)
    e = env()
    e["RSTAR_WORKDIR"] = str(workdir)
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=e, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "round" in proc.stdout and "control" in proc.stdout


def _kill_when(proc, ready, what, timeout=600):
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _done_checksums(workdir):
    out = {}
    for unit in sorted(os.listdir(workdir)):
        d = os.path.join(workdir, unit)
        if not os.path.isdir(d):
            continue
        for stage in sorted(os.listdir(d)):
            if os.path.isfile(os.path.join(d, stage, "DONE")):
                out[f"{unit}/{stage}"] = checksums(os.path.join(d, stage))
    return out


def test_sigkill_at_three_stages_then_resume_gives_the_same_report(smoke_run, tmp_path):
    reference, _, _ = smoke_run
    workdir = tmp_path / "killed"
    r1 = workdir / "round1"
    r2 = workdir / "round2"
    stops = [
        ("mid-search", lambda: (r1 / "search" / "trees.jsonl").is_file()
         and (r1 / "search" / "trees.jsonl").stat().st_size > 0
         and not (r1 / "search" / "DONE").exists(), r1 / "search"),
        ("mid-training", lambda: (r1 / "policy" / "checkpoints").is_dir()
         and any(p.isdigit() for p in os.listdir(r1 / "policy" / "checkpoints"))
         and not (r1 / "policy" / "DONE").exists(), r1 / "policy"),
        ("mid-evaluation", lambda: (r2 / "eval").is_dir()
         and any(p.endswith(".json") for p in os.listdir(r2 / "eval"))
         and not (r2 / "eval" / "DONE").exists(), r2 / "eval"),
    ]
    for what, ready, stage_dir in stops:
        before = _done_checksums(workdir) if workdir.exists() else {}
        proc = subprocess.Popen(command(workdir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT)
        _kill_when(proc, ready, what)
        assert not (stage_dir / "DONE").exists(), f"killed {what}"
        after = _done_checksums(workdir)
        for stage, sums in before.items():
            assert after[stage] == sums, f"{stage} changed after the kill {what}"
    proc = run(workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    final = _done_checksums(workdir)
    for stage, sums in after.items():
        assert final[stage] == sums, f"{stage}, finished before the last kill, changed"
    got = without_times(json.loads((workdir / "report.json").read_text()))
    want = without_times(json.loads((reference / "report.json").read_text()))
    assert got == want


def _tree_of(path):
    return checksums(str(path)) if path.exists() else None


@pytest.mark.parametrize("case", ["bad_value", "missing_checkpoint", "malformed_problems",
                                  "changed_config"])
def test_bad_input_stops_before_any_work(case, smoke_run, tmp_path):
    reference, _, _ = smoke_run
    workdir = tmp_path / "w"
    config, extra = SMOKE, []
    if case == "bad_value":
        extra = ["--config.rounds.round2.search.num_children=0"]
        needle = "config.rounds.round2.search.num_children"
    elif case == "missing_checkpoint":
        config = os.path.join(ROOT, "configs", "qwen2.5-math-1.5b", "run.py")
        extra = [f"--config.model.base={tmp_path / 'no_such_model'}"]
        needle = "config.model.base"
    elif case == "malformed_problems":
        stub = tmp_path / "stub"
        stub.mkdir()
        (stub / "config.json").write_text("{}")
        bad = tmp_path / "problems.jsonl"
        bad.write_text('{"question": "1+1?", "answer": "2"}\n{"question": \n')
        config = os.path.join(ROOT, "configs", "qwen2.5-math-1.5b", "run.py")
        extra = [f"--config.model.base={stub}", f"--config.bootstrap.path={stub}",
                 f"--config.problems.train.train.path={bad}"]
        needle = "problems.jsonl"
    else:
        workdir = reference
        extra = ["--config.seed=7"]
        needle = "seed"
    before = _tree_of(workdir)
    proc = run(workdir, *extra, config=config, timeout=120)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert _tree_of(workdir) == before, "the workdir changed"

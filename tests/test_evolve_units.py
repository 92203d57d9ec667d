"""Self-evolution parts that need no model: configs, problem sets, the scripted bootstrap,
the workdir's config check, the dry run of every shipped config, evaluation metrics."""

import glob
import json
import os
import subprocess
import sys

import pytest

from rstar_jax import step_format as sf
from rstar_jax.data.problems import check_spec, load_problems
from rstar_jax.evolve import evaluate
from rstar_jax.evolve.bootstrap import BootstrapProposer, BootstrapSettings, plan_for, question_of
from rstar_jax.evolve.settings import RunSettings
from rstar_jax.evolve.workdir import config_differences
from rstar_jax.search.host_tree import SearchTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "configs", "qwen2.5-math-*", "*.py"))) + [
    os.path.join(ROOT, "configs", "tiny.py"), os.path.join(ROOT, "configs", "smoke.py")]


def tiny_config():
    from configs import tiny
    return tiny.get_config()


def load_config_file(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_cfg_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_every_shipped_config_dry_runs(tmp_path):
    from rstar_jax.evolve import driver
    assert len(SHIPPED) == 12
    for path in SHIPPED:
        plan = driver.describe_plan(driver.prepare(load_config_file(path), str(tmp_path / "w"),
                                                   check_paths=False))
        assert "round " in plan and "search" in plan and "mesh" in plan, (path, plan)
        assert "parameters" in plan and "problems" in plan
    assert not (tmp_path / "w").exists(), "a dry run writes nothing"


def test_dry_run_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "evolve.py"),
                           f"--config={ROOT}/configs/qwen2.5-math-7b/run.py",
                           f"--workdir={tmp_path / 'w'}", "--dry_run"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "round 4: MCTS 16 rollouts x 12 children, PPM-augmented, then 64/128" in proc.stdout
    assert "28 layers x 3584 hidden" in proc.stdout
    assert not (tmp_path / "w").exists()


def test_paper_configs_follow_the_paper():
    from configs import rounds
    run = RunSettings.from_config(rounds.run_config("qwen2.5-math-7b"))
    r1, r2, r3, r4 = run.rounds
    assert r1.search["num_rollouts"] == 8 and r1.search["terminal_guided"] and not r1.use_ppm
    assert r1.search["temperature"] == 0.7 and r1.search["errors_threshold"] == 2
    assert "<end_of_output>" in r1.search["stop_tags"]
    assert r2.search["num_rollouts"] == 16 and not r2.use_ppm
    assert r3.use_ppm and r4.use_ppm and r4.extra_rollouts == (64, 128) and not r3.extra_rollouts
    assert all(r.search["num_children"] == 12 for r in run.rounds)
    assert all(r.policy_init == "base" for r in run.rounds)
    assert r1.sft.optim.learning_rate == 7e-6 and r1.sft.batch_size == 128
    assert r1.ppm.batch_size == 512 and r1.ppm.epochs == 2
    one = RunSettings.from_config(rounds.round_config(3, "qwen2.5-math-1.5b"))
    assert one.kind == "round" and [r.k for r in one.rounds] == [3]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.rounds.round2.search.update(num_children=0),
     "config.rounds.round2.search.num_children must be a number >= 1"),
    (lambda c: c.eval.update(greedy_splits=("nope",)), "'nope' is not a split"),
    (lambda c: c.rounds.round1.update(use_ppm=True), "round 1 has no earlier PPM"),
    (lambda c: c.rounds.round3.update(policy_init="last"), "policy_init must be one of"),
    (lambda c: c.problems.train.chain_sum.update(size=0), "size >= 1"),
    (lambda c: c.bootstrap.update(mistake_rate=2.0), "mistake_rate must be in [0, 1]"),
    (lambda c: c.rounds.round1.sft.update(batch_size=0), "config.rounds.round1.sft.batch_size"),
    (lambda c: c.executor.update(preload=("math", "")), "config.executor.preload must be None"),
])
def test_run_settings_name_the_bad_field(edit, message):
    c = tiny_config()
    edit(c)
    with pytest.raises(ValueError) as err:
        RunSettings.from_config(c)
    assert message in str(err.value)


def test_problem_specs_draw_reproducible_and_distinct_sets():
    spec = {"kind": "reasoning_gym", "dataset": "chain_sum", "params": {"min_terms": 2},
            "seed": 5, "size": 6}
    a, b = load_problems({"x": spec}), load_problems({"x": spec})
    assert a == b and len(a) == 6 and a[0]["index"] == "x/0" and a[0]["source"] == "x"
    other = load_problems({"x": {**spec, "seed": 6}})
    assert [p["question"] for p in other] != [p["question"] for p in a]
    with pytest.raises(ValueError, match=r"problems.kind must be one of"):
        check_spec({"kind": "web"}, "problems")
    with pytest.raises(ValueError, match=r"reasoning-gym cannot make dataset 'nope'"):
        load_problems({"kind": "reasoning_gym", "dataset": "nope", "params": {}, "seed": 0,
                       "size": 2})


def test_tiny_splits_are_disjoint_from_training():
    c = tiny_config()
    train = {p["question"] for p in load_problems(c.problems.train)}
    for split in c.problems.eval:
        probs = load_problems(c.problems.eval[split], dedupe=False)
        overlap = [p for p in probs if p["question"] in train]
        assert len(overlap) <= len(probs) // 10, (split, len(overlap))   # tiny questions repeat


def test_bootstrap_solutions_run_to_the_gold_answer():
    """The scripted policy's mistake-free solutions, run in the real sandbox, print the
    answer reasoning-gym gives (an independent check of the planner)."""
    from rstar_jax.verify.executor import PythonExecutor
    from rstar_jax.verify.grader import math_equal
    c = tiny_config()
    probs = load_problems(c.problems.train)[::9]
    boot = BootstrapProposer(BootstrapSettings(0.0, (1, 0, 0, 0), 0))
    assert all(plan_for(p["question"]) is not None for p in probs)
    programs = [sf.extract_program(boot.solution(p["question"])) for p in probs]
    with PythonExecutor(num_workers=2, timeout_s=10) as ex:
        results = ex.run(programs)
    wrong = [(p["question"], r.output) for p, r in zip(probs, results)
             if not math_equal(r.output, p["answer"])]
    assert not wrong, wrong[:3]


def test_bootstrap_steps_follow_the_reference_format_and_make_mistakes():
    q = "State the final answer to the following arithmetic problem: 12 - 5 + 30 ="
    prompt = sf.build_prompt(q)
    assert question_of(prompt) == (q, "")
    greedy = BootstrapProposer(BootstrapSettings(0.9, (1, 1, 1, 1), 0))
    (first,) = greedy.propose([prompt], 1, 0.0)[0]          # T = 0: never a mistake
    assert first == "<code>\n# Step 1: start from the first number\ntotal = 12\n<end_of_step>"
    step2 = greedy.propose([prompt + first], 1, 0.0)[0][0]
    assert step2 == "\n# Step 2: subtract 5\ntotal = total - 5\n<end_of_step>"
    last = greedy.propose([prompt + first + step2], 1, 0.0)[0][0]
    assert last.endswith("print(total)\n" + sf.END_OF_CODE) and "# Now print the final answer" in last
    answer = greedy.propose([prompt + first + step2 + last + "\n<output>37<end_of_output>"], 1, 0.0)
    assert answer == [["\n<answer>The answer is \\boxed{37}.<end_of_answer>"]]
    noisy = BootstrapProposer(BootstrapSettings(0.9, (1, 1, 1, 1), 0))
    samples = noisy.propose([prompt + first], 16, 1.0)[0]
    assert len(set(samples)) >= 3          # operator, off-by-one, dropped-term, typo variants
    assert samples == noisy.propose([prompt + first], 16, 1.0)[0]   # a function of the prompt


def test_config_differences_name_the_fields():
    a = {"seed": 0, "rounds": {"round1": {"search": {"num_children": 4}}}, "x": [1, 2]}
    b = {"seed": 1, "rounds": {"round1": {"search": {"num_children": 4}}}, "x": (1, 2), "y": 3}
    assert config_differences(a, b) == ["seed", "y"]


def test_sampled_metrics_majority_and_best_of_n():
    tree = SearchTree.new("Q", "4")
    for ans, score in (("5", 0.9), ("4", 0.1), ("4", 0.2), ("7", 0.8)):
        tree.add_child(0, text=f"\\boxed{{{ans}}}", final_answer=ans, terminal=True)

    class Scorer:
        def __init__(self):
            self.scores = iter([0.9, 0.1, 0.2, 0.8])

        def score(self, prompts):
            return [next(self.scores) for _ in prompts]

    import rstar_jax.search.sampling as sampling
    orig = sampling.sample_solutions
    sampling.sample_solutions = lambda *a, **k: [tree]
    try:
        out = evaluate.sampled([{"question": "Q", "answer": "4"}], None, None,
                               _search_cfg(), evaluate.Grading(grade_fn=lambda p, g: p == g,
                                                               equal_fn=lambda a, b: a == b),
                               n_values=(1, 2, 4), temperature=1.0, scorer=Scorer())
    finally:
        sampling.sample_solutions = orig
    m = out["metrics"]
    assert m["majority@1"] == 0.0 and m["majority@4"] == 1.0      # 4 appears twice in four
    assert m["pass@2"] == 1.0 and m["pass@1"] == 0.0
    assert m["best_of_n@1"] == 0.0 and m["best_of_n@4"] == 0.0     # the PPM prefers 5
    assert evaluate.mean_and_stderr([0.5, 0.7]) == pytest.approx((0.6, 0.1))


def _search_cfg():
    from configs import search
    return search.get_config("eval_mcts")

"""launch/search.py end to end on a tiny random policy and PPM: trees written, resumable."""

import json
import os
import subprocess
import sys

from rstar_jax.data.rstar_trees import load_tree_records
from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM, Qwen2PPM, save_pretrained
from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoints(tmp_path):
    from configs import model as presets
    tok = build_tiny_tokenizer()
    cfg = Qwen2Config.from_config_dict(presets.get_config("tiny"))
    policy = Qwen2ForCausalLM(cfg)
    save_pretrained(policy, tmp_path / "policy", tokenizer=tok)
    save_pretrained(Qwen2PPM.from_policy(policy), tmp_path / "ppm", tokenizer=tok)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"question": f"What is {a} + 1?", "answer": str(a + 1)})
                                + "\n" for a in range(3)))
    return problems


def _run(tmp_path, problems, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, os.path.join(ROOT, "launch/search.py"),
           f"--policy={tmp_path / 'policy'}", f"--ppm={tmp_path / 'ppm'}",
           f"--problems={problems}", f"--out={out}",
           f"--search_config={ROOT}/configs/search.py:eval_mcts",
           f"--engine_config={ROOT}/configs/engine.py:tiny",
           "--search_config.num_rollouts=1", "--search_config.num_children=2",
           "--search_config.max_depth=2", "--executor_workers=1", "--executor_timeout_s=5"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_search_cli_writes_reference_trees_and_resumes(tmp_path):
    problems = _checkpoints(tmp_path)
    out = tmp_path / "trees.jsonl"
    summary = _run(tmp_path, problems, out)
    assert summary["problems"] == 3 and summary["graded"] == 3 and summary["ppm"]
    assert summary["tokens_generated"] > 0
    records = load_tree_records(str(out))
    assert [r.question for r in records] == [f"What is {a} + 1?" for a in range(3)]
    for rec in records:
        assert rec.root.tag == "0" and len(rec.root.children) >= 1
    first = out.read_text()
    again = _run(tmp_path, problems, out)       # everything finished: nothing is searched
    assert again["tokens_generated"] == 0 and out.read_text() == first

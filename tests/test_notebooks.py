"""The notebooks run top to bottom in a fresh process and are committed with outputs cleared."""

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))


def needs_workdir(path):
    """Notebooks that open a self-evolution workdir run in tests/test_evolve_smoke.py."""
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("metadata", {}).get("rstar", {}).get("needs_workdir", False)


NOTEBOOKS = [p for p in ALL_NOTEBOOKS if not needs_workdir(p)]


def code_of(path):
    """All code cells as one script (IPython magics and shell lines are not used)."""
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    sources = []
    for c in cells:
        src = "".join(c["source"])
        assert not any(line.lstrip().startswith(("%", "!")) for line in src.splitlines()), \
            f"{path}: magics/shell lines cannot run as a script"
        sources.append(src)
    return nb, cells, "\n\n".join(sources) + "\n"


def test_quickstart_exists():
    assert os.path.join(ROOT, "notebooks", "quickstart.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_a_fresh_process(path, tmp_path):
    nb, cells, script = code_of(path)
    assert nb["nbformat"] == 4 and cells
    for c in cells:
        assert c.get("outputs") == [] and c.get("execution_count") is None, \
            f"{path}: commit the notebook with outputs cleared"
    script_path = tmp_path / "notebook.py"
    script_path.write_text(script, encoding="utf-8")
    # A fresh interpreter: not the test session's 8 fake devices or jax config.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run([sys.executable, str(script_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (f"{os.path.basename(path)} failed:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")

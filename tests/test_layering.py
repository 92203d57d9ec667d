"""The package's layering (DESIGN.md, "Layering"), read from the source with ast.

Every import statement counts, top-level or inside a function (a lazy import is still a
dependency). Nothing is imported or executed here.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rstar_jax"

# (rule name, importing layer, layers it must not import). A layer is the first part
# below rstar_jax ("models", "step_format", ...).
RULES = [
    ("step_format is the bottom layer and imports nothing of the project", "step_format",
     {"models", "engine", "search", "verify", "data", "train", "evolve"}),
    ("models is a leaf: it must not import engine, search, train, data, verify or evolve",
     "models", {"engine", "search", "train", "data", "verify", "evolve"}),
    ("verify is a leaf: it must not import models, engine, search, data, train or evolve",
     "verify", {"models", "engine", "search", "data", "train", "evolve"}),
    ("engine serves the search through protocols: it must not import search, data, train "
     "or evolve", "engine", {"search", "data", "train", "evolve"}),
    ("search talks to models only through the proposer/scorer protocols: it must not "
     "import engine, train or evolve", "search", {"engine", "train", "evolve"}),
    ("data reads trees and writes training files: it must not import train, engine or "
     "evolve", "data", {"train", "engine", "evolve"}),
    ("train reads data files: it must not import search, engine or evolve", "train",
     {"search", "engine", "evolve"}),
    ("distributed (the multi-process runtime) is a leaf: it imports nothing of the project",
     "distributed", {"step_format", "models", "engine", "search", "verify", "data", "train",
                     "evolve", "cli"}),
]
LAUNCH_RULE = "the library never imports launch/ (entry points sit on top of it)"


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from rstar_jax import engine` imports the submodule engine.
            out += [(node.lineno, f"{base}.{alias.name}" if base == "rstar_jax" else base)
                    for alias in node.names]
    return out


def layer_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "launch":
        return "launch"
    if parts[0] != "rstar_jax" or len(parts) < 2:
        return None
    return parts[1]


def layer_of_file(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return rel[0]


def violations(files=None) -> list[str]:
    files = files if files is not None else sorted(PACKAGE.rglob("*.py"))
    rules = {layer: (name, banned) for name, layer, banned in RULES}
    found = []
    for path in files:
        layer = layer_of_file(path)
        for line, module in imported_modules(path):
            target = layer_of_module(module)
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if target == "launch":
                found.append(f"{where}: breaks the rule '{LAUNCH_RULE}'")
            elif layer in rules and target in rules[layer][1]:
                found.append(f"{where}: breaks the rule '{rules[layer][0]}'")
    return found


def test_package_layering_holds():
    found = violations()
    assert not found, "layering broken:\n" + "\n".join(found)


@pytest.mark.parametrize("layer, source, rule_word", [
    ("models", "from rstar_jax.search import mcts\n", "models is a leaf"),
    ("verify", "def f():\n    from rstar_jax.engine import scheduler\n", "verify is a leaf"),
    ("search", "import rstar_jax.engine.protocols\n", "search talks to models"),
    ("data", "from rstar_jax import train\n", "data reads trees"),
    ("train", "from ..search import host_tree\n", "train reads data files"),
    ("step_format", "from rstar_jax.models import tokenizer\n", "bottom layer"),
])
def test_checker_catches_a_forbidden_import(tmp_path, monkeypatch, layer, source, rule_word):
    # A scratch module inside a copy of the layer's folder path: the checker must flag it.
    fake_package = tmp_path / "rstar_jax"
    target = fake_package / (f"{layer}.py" if layer == "step_format" else f"{layer}/scratch.py")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_package)
    found = violations([target])
    assert len(found) == 1 and rule_word in found[0], found


def test_checker_catches_library_importing_launch(tmp_path, monkeypatch):
    fake_package = tmp_path / "rstar_jax"
    target = fake_package / "engine" / "scratch.py"
    target.parent.mkdir(parents=True)
    target.write_text("from launch import search\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_package)
    assert [LAUNCH_RULE in v for v in violations([target])] == [True]

"""The config files are the one source of settings, and every field in them is read.

* Training configs: a recording wrapper around each preset is passed to the real
  training loop (one step on a tiny model); every leaf must have been read.
* Search, engine and self-evolution configs are read by strict readers (unknown fields
  are an error, every field is consumed into a settings dataclass); each preset must
  pass its reader, and every settings field must be used somewhere in the code.
* Data-rule and model-preset leaves must each be read by the code that consumes them.
"""

import ast
import importlib
import pathlib
import sys

import pytest
from ml_collections import ConfigDict

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("rstar_jax", "launch") for p in (ROOT / d).rglob("*.py")]


def leaves(cd: ConfigDict, prefix="config") -> set[str]:
    out = set()
    for k, v in cd.items():
        if isinstance(v, ConfigDict):
            out |= leaves(v, f"{prefix}.{k}")
        else:
            out.add(f"{prefix}.{k}")
    return out


class Recorder:
    """A ConfigDict view that records the dotted name of every leaf read through it."""

    def __init__(self, cd: ConfigDict, path: str = "config", log: set | None = None):
        object.__setattr__(self, "_cd", cd)
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_log", set() if log is None else log)

    def _wrap(self, key, value):
        full = f"{self._path}.{key}"
        if isinstance(value, ConfigDict):
            return Recorder(value, full, self._log)
        self._log.add(full)
        return value

    def __getattr__(self, key):
        if key.startswith("_"):
            raise AttributeError(key)
        return self._wrap(key, getattr(self._cd, key))

    def __getitem__(self, key):
        return self._wrap(key, self._cd[key])

    def get(self, key, default=None):
        return self._wrap(key, self._cd[key]) if key in self._cd else default

    def __contains__(self, key):
        return key in self._cd

    def __iter__(self):
        return iter(self._cd)

    def keys(self):
        return self._cd.keys()

    def items(self):
        return [(k, self[k]) for k in self._cd.keys()]

    def values(self):
        return [self[k] for k in self._cd.keys()]

    def __len__(self):
        return len(self._cd)

    def to_dict(self):
        self._log.update(leaves(self._cd, self._path))
        return self._cd.to_dict()


def config(name, *args):
    return importlib.import_module(f"configs.{name}").get_config(*args)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    from flax import nnx

    from rstar_jax.models import Qwen2Config, Qwen2ForCausalLM
    from rstar_jax.models.tiny_tokenizer import build_tiny_tokenizer
    tok = build_tiny_tokenizer()
    cfg = Qwen2Config.from_config_dict(config("model", "tiny"))
    return tok, cfg, tmp_path_factory.mktemp("leaves")


def test_training_variants_have_the_default_fields():
    for name in ("train_sft", "train_ppm"):
        assert leaves(config(name, "tiny")) == leaves(config(name, "")), name


@pytest.mark.parametrize("variant", [""])
def test_every_training_config_leaf_is_read(variant, tiny_setup):
    from flax import nnx

    from rstar_jax.models import Qwen2ForCausalLM, Qwen2PPM
    from rstar_jax.step_format import build_prompt
    from rstar_jax.train import train_ppm, train_sft
    tok, cfg, tmp = tiny_setup
    rows = [{"prompt": build_prompt(f"{a}+1?"), "response": f"<code>\nprint({a}+1)\n<end_of_code>"}
            for a in range(4)]
    pairs = [{"prompt": build_prompt(f"{a}+1?"), "pos": f"print({a}+1)", "neg": f"print({a}-1)",
              "pos_count": 1, "neg_count": 1} for a in range(6)]
    for name, rows_, make in (("train_sft", rows, lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))),
                              ("train_ppm", pairs, lambda: Qwen2PPM(cfg, rngs=nnx.Rngs(0)))):
        cd = config(name, variant)
        # A CPU-sized run of the same code path: shapes shrink, no field is added.
        with cd.unlocked():
            cd.max_steps, cd.batch_size, cd.micro_batch_size = 1, 8, 8
            cd.mesh.data, cd.mesh.fsdp, cd.mesh.tensor = -1, 1, 1   # the test's CPU devices
            cd.max_length, cd.bucket_lengths = 64, (64,)
            cd.checkpoint.async_save = False
            cd.compute_dtype = "float32"
            cd.remat = False
            if "eval_batch_size" in cd:
                cd.eval_batch_size, cd.eval_every = 8, 1
        rec = Recorder(cd)
        fn = train_sft if name == "train_sft" else train_ppm
        fn(rec, make(), rows_, tok, tmp / f"{name}_{variant or 'default'}", progress=False)
        unread = leaves(cd) - rec._log
        assert not unread, f"configs/{name}.py:{variant or 'default'} fields never read: {sorted(unread)}"


def _used_names() -> set[str]:
    """Attribute and subscript names used anywhere in the library and launch scripts."""
    names = set()
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str):
                names.add(node.slice.value)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
    return names


def test_search_and_engine_presets_pass_their_readers_and_every_setting_is_used():
    import dataclasses

    from rstar_jax.engine.settings import EngineSettings, MeshSettings
    from rstar_jax.search import settings as search_settings
    search = importlib.import_module("configs.search")
    for preset in search.PRESETS:
        search_settings.MCTSSettings.from_config(search.get_config(preset))
    engine = importlib.import_module("configs.engine")
    for preset in engine.PRESETS:
        EngineSettings.from_config(engine.get_config(preset))
    used = _used_names()
    for cls in (search_settings.MCTSSettings, search_settings.BeamSettings,
                search_settings.GreedySettings, search_settings.VoteSettings, EngineSettings,
                MeshSettings):
        unused = [f.name for f in dataclasses.fields(cls) if f.name not in used]
        assert not unused, f"{cls.__name__} fields nobody reads: {unused}"


def test_evolve_configs_pass_the_strict_reader():
    from rstar_jax.evolve.settings import RunSettings
    for module, args in (("tiny", ()), ("smoke", ()), ("rounds", ("qwen2.5-math-7b",))):
        mod = importlib.import_module(f"configs.{module}")
        cfg = mod.run_config(*args) if module == "rounds" else mod.get_config()
        RunSettings.from_config(cfg)


def test_data_and_model_preset_leaves_are_read():
    used = _used_names()
    data = config("data")
    unused = sorted(k for k in leaves(data) if k.rsplit(".", 1)[-1] not in used)
    assert not unused, f"configs/data.py fields nobody reads: {unused}"
    model = importlib.import_module("configs.model")
    from rstar_jax.models.config import Qwen2Config
    for preset in model.PRESETS:
        c = model.get_config(preset)
        cfg = Qwen2Config.from_config_dict(c)
        for key in c.keys():
            assert key == "name" or hasattr(cfg, key) or key in ("head_dim",), (preset, key)

"""A self-evolution config (configs/rounds.py, configs/tiny.py), read and checked once.

`RunSettings.from_config(config)` reads every section through the reader of the part
that owns it (search, engine, training, data rules, problem specs, the bootstrap) and
refuses unknown fields, so a misspelt override or an out-of-range value stops the run
before anything is loaded or written, with the field's full name in the message.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

ROUND_KEY = re.compile(r"^round([1-9]\d*)$")
POLICY_INIT = ("base", "previous")
SFT_TREES = ("this", "all")
MODEL_INIT = ("checkpoint", "random")
BOOTSTRAP_KINDS = ("checkpoint", "scripted")


def as_dict(config: Any) -> dict:
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(config, Mapping):
        return {k: as_dict(v) if isinstance(v, Mapping) or hasattr(v, "to_dict") else v
                for k, v in config.items()}
    raise TypeError(f"expected a config mapping, got {type(config).__name__}")


def _fields(section: Mapping, where: str, required: tuple[str, ...],
            optional: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(section) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}")
    missing = [k for k in required if k not in section]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)}")


def _choice(value: Any, choices: tuple, where: str) -> str:
    if value not in choices:
        raise ValueError(f"{where} must be one of {choices}, got {value!r}")
    return value


def _int(value: Any, where: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _names(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where} must be a list of split names, got {value!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class RoundSettings:
    k: int
    search: dict          # configs/search.py section (checked by MCTSSettings)
    use_ppm: bool
    extra_rollouts: tuple[int, ...]
    sft: Any              # configs/train_sft.py section (ConfigDict, read by train_sft)
    ppm: Any              # configs/train_ppm.py section
    policy_init: str
    sft_trees: str


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    greedy_splits: tuple[str, ...]
    mcts_splits: tuple[str, ...]
    search: dict
    scaling_splits: tuple[str, ...]
    scaling_n: tuple[int, ...]
    sample_temperature: float
    small_set: int
    small_set_seeds: int


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The checked config; `config` keeps the ConfigDict the training loops read."""

    kind: str
    name: str
    seed: int
    model: dict
    bootstrap: dict
    problems: dict
    engine: Any
    executor: dict
    data: Any
    eval: EvalSettings
    control_enabled: bool
    plots: bool
    rounds: tuple[RoundSettings, ...]
    config: Any

    @classmethod
    def from_config(cls, config: Any, where: str = "config") -> "RunSettings":
        from rstar_jax.data.problems import check_spec
        from rstar_jax.engine.settings import EngineSettings
        from rstar_jax.evolve.bootstrap import BootstrapSettings
        from rstar_jax.search.settings import MCTSSettings
        from rstar_jax.train.trainer import check_config as check_train_config

        c = as_dict(config)
        _fields(c, where, ("kind", "name", "seed", "model", "bootstrap", "problems", "engine",
                           "executor", "data", "eval", "control", "report", "rounds"))
        kind = _choice(c["kind"], ("run", "round"), f"{where}.kind")
        seed = _int(c["seed"], f"{where}.seed", 0)

        model = c["model"]
        _fields(model, f"{where}.model", ("base", "arch", "tokenizer", "init"))
        _choice(model["init"], MODEL_INIT, f"{where}.model.init")
        from rstar_jax.models.config import Qwen2Config
        try:
            Qwen2Config.from_config_dict(model["arch"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}.model.arch is not a Qwen2 architecture "
                             f"(configs/model.py): {e}") from e
        if model["init"] == "checkpoint" and not model["base"]:
            raise ValueError(f"{where}.model.base: a local checkpoint directory is needed "
                             "when model.init is 'checkpoint'")

        boot = c["bootstrap"]
        kind_b = _choice(boot.get("kind"), BOOTSTRAP_KINDS, f"{where}.bootstrap.kind")
        if kind_b == "checkpoint":
            _fields(boot, f"{where}.bootstrap", ("kind", "path"))
        else:
            _fields(boot, f"{where}.bootstrap", ("kind", "mistake_rate", "mistake_kinds", "seed",
                                                 "terms_per_step"))
            BootstrapSettings.from_config(boot, f"{where}.bootstrap")

        problems = c["problems"]
        _fields(problems, f"{where}.problems", ("train", "eval"))
        for part, spec in problems["train"].items():
            check_spec(spec, f"{where}.problems.train.{part}")
        for split, parts in problems["eval"].items():
            for part, spec in parts.items():
                check_spec(spec, f"{where}.problems.eval.{split}.{part}")

        EngineSettings.from_config(c["engine"], f"{where}.engine")
        ex = c["executor"]
        _fields(ex, f"{where}.executor", ("workers", "timeout_s", "memory_limit_mb"),
                ("preload",))
        _int(ex["workers"], f"{where}.executor.workers", 1)
        preload = ex.get("preload")
        if preload is not None and (not isinstance(preload, (list, tuple)) or not all(
                isinstance(m, str) and m for m in preload)):
            raise ValueError(f"{where}.executor.preload must be None (the executor's default) "
                             f"or a list of module names, got {preload!r}")
        _int(ex["memory_limit_mb"], f"{where}.executor.memory_limit_mb", 16)
        if not isinstance(ex["timeout_s"], (int, float)) or ex["timeout_s"] <= 0:
            raise ValueError(f"{where}.executor.timeout_s must be > 0, got {ex['timeout_s']!r}")

        _check_data(c["data"], f"{where}.data")
        ev = c["eval"]
        _fields(ev, f"{where}.eval", tuple(f.name for f in dataclasses.fields(EvalSettings)))
        MCTSSettings.from_config(ev["search"], f"{where}.eval.search")
        splits = set(problems["eval"])
        for name in ("greedy_splits", "mcts_splits", "scaling_splits"):
            for s in _names(ev[name], f"{where}.eval.{name}"):
                if s not in splits:
                    raise ValueError(f"{where}.eval.{name}: {s!r} is not a split of "
                                     f"{where}.problems.eval ({sorted(splits)})")
        scaling_n = tuple(_int(n, f"{where}.eval.scaling_n", 1) for n in ev["scaling_n"])
        if not scaling_n:
            raise ValueError(f"{where}.eval.scaling_n must list at least one N")
        evs = EvalSettings(
            greedy_splits=tuple(ev["greedy_splits"]), mcts_splits=tuple(ev["mcts_splits"]),
            search=ev["search"], scaling_splits=tuple(ev["scaling_splits"]),
            scaling_n=scaling_n, sample_temperature=float(ev["sample_temperature"]),
            small_set=_int(ev["small_set"], f"{where}.eval.small_set", 0),
            small_set_seeds=_int(ev["small_set_seeds"], f"{where}.eval.small_set_seeds", 1))

        _fields(c["control"], f"{where}.control", ("enabled",))
        _fields(c["report"], f"{where}.report", ("plots",))

        rounds_in = c["rounds"]
        if not rounds_in:
            raise ValueError(f"{where}.rounds is empty")
        rounds = []
        for key in rounds_in:
            m = ROUND_KEY.match(key)
            if not m:
                raise ValueError(f"{where}.rounds.{key}: round sections are named round1, "
                                 "round2, ...")
            rounds.append(_round(int(m.group(1)), rounds_in[key], config_section(config, key),
                                 f"{where}.rounds.{key}", MCTSSettings, check_train_config))
        rounds.sort(key=lambda r: r.k)
        ks = [r.k for r in rounds]
        if kind == "run" and ks != list(range(1, len(ks) + 1)):
            raise ValueError(f"{where}.rounds must be round1..roundN without gaps, got {ks}")
        if kind == "round" and len(ks) != 1:
            raise ValueError(f"{where}: a round config holds exactly one round, got {ks}")
        if c["control"]["enabled"] and (kind != "run" or len(ks) < 2):
            raise ValueError(f"{where}.control.enabled needs a run config with rounds 1..N, N >= 2")
        return cls(kind=kind, name=str(c["name"]), seed=seed, model=model, bootstrap=boot,
                   problems=problems, engine=getattr(config, "engine", c["engine"]),
                   executor=ex, data=getattr(config, "data", c["data"]), eval=evs,
                   control_enabled=bool(c["control"]["enabled"]),
                   plots=bool(c["report"]["plots"]), rounds=tuple(rounds), config=config)

    @property
    def last_round(self) -> int:
        return self.rounds[-1].k


def config_section(config: Any, round_key: str) -> Any:
    rounds = config["rounds"] if isinstance(config, Mapping) else config.rounds
    return rounds[round_key]


def _round(k: int, r: Mapping, original: Any, where: str, mcts_settings, check_train) -> RoundSettings:
    _fields(r, where, ("search", "use_ppm", "extra_rollouts", "sft", "ppm", "policy_init",
                       "sft_trees"))
    mcts_settings.from_config(r["search"], f"{where}.search")
    check_train(_get(original, "sft"), f"{where}.sft")
    check_train(_get(original, "ppm"), f"{where}.ppm")
    extra = tuple(_int(n, f"{where}.extra_rollouts", 1) for n in r["extra_rollouts"])
    if not isinstance(r["use_ppm"], bool):
        raise ValueError(f"{where}.use_ppm must be True or False")
    if r["use_ppm"] and k == 1:
        raise ValueError(f"{where}.use_ppm: round 1 has no earlier PPM to search with")
    return RoundSettings(k=k, search=r["search"], use_ppm=r["use_ppm"], extra_rollouts=extra,
                         sft=_get(original, "sft"), ppm=_get(original, "ppm"),
                         policy_init=_choice(r["policy_init"], POLICY_INIT, f"{where}.policy_init"),
                         sft_trees=_choice(r["sft_trees"], SFT_TREES, f"{where}.sft_trees"))


def _get(section: Any, name: str) -> Any:
    if isinstance(section, Mapping) and not hasattr(section, "to_dict"):
        from ml_collections import ConfigDict
        return ConfigDict(section[name])
    return section[name]


def _check_data(d: Mapping, where: str) -> None:
    _fields(d, where, ("sft", "ppm"))
    _fields(d["sft"], f"{where}.sft", ("top_k", "banned_substring", "shuffle_seed",
                                        "reference_newlines"))
    _int(d["sft"]["top_k"], f"{where}.sft.top_k", 1)
    _fields(d["ppm"], f"{where}.ppm", ("pairs_per_side", "fallback_per_side", "min_step_margin",
                                        "min_edit_distance", "mode", "final_step_pairs",
                                        "reference_newlines"))
    _int(d["ppm"]["pairs_per_side"], f"{where}.ppm.pairs_per_side", 1)
    _int(d["ppm"]["fallback_per_side"], f"{where}.ppm.fallback_per_side", 1)
    _int(d["ppm"]["min_edit_distance"], f"{where}.ppm.min_edit_distance", 0)
    _choice(d["ppm"]["mode"], ("all", "vis_count"), f"{where}.ppm.mode")

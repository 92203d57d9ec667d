"""The search section of a config (configs/search.py), read once into typed settings.

The drivers never read a config dict themselves: `MCTSSettings.from_config(section)`
reads every field of the section (a ConfigDict or a plain dict), checks each value and
names the field in its error, so `configs/search.py` is the one place that holds search
defaults, a misspelt or unknown field fails at once, and every field in the file is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from rstar_jax import step_format as sf

UNVISITED_SCORES = ("zero", "inf")


def _section(config: Any, where: str) -> Mapping:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)   # ml_collections ConfigDict
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"{where} must be a mapping (ConfigDict or dict), got {type(config).__name__}")


def _read(section: Mapping, fields: Sequence[dataclasses.Field], where: str) -> dict:
    """Every dataclass field from `section`, no more and no less."""
    names = [f.name for f in fields]
    unknown = sorted(set(section) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)} "
                         "(see configs/search.py)")
    missing = [n for n in names if n not in section]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)} (see configs/search.py)")
    return {n: section[n] for n in names}


def _check_stop_tags(tags: Any, where: str) -> tuple[str, ...]:
    if isinstance(tags, str) or not tags:
        raise ValueError(f"{where}.stop_tags must be a non-empty list of step tags, got {tags!r}")
    tags = tuple(tags)
    allowed = set(sf.STOP_TAGS) | {sf.END_OF_OUTPUT}
    bad = [t for t in tags if t not in allowed]
    if bad:
        raise ValueError(f"{where}.stop_tags: {bad} are not step tags; use some of "
                         f"{sorted(allowed)}")
    return tags


def _at_least(where: str, name: str, value: Any, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ValueError(f"{where}.{name} must be a number >= {low:g}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class BeamSettings:
    """Step-level beam search (rstar_reference.md §2.10)."""

    width: int
    num_samples: int
    max_depth: int
    temperature: float
    stop_tags: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any, where: str = "config.search.beam") -> "BeamSettings":
        c = _read(_section(config, where), dataclasses.fields(cls), where)
        for name in ("width", "num_samples", "max_depth"):
            _at_least(where, name, c[name], 1)
        _at_least(where, "temperature", c["temperature"], 0)
        c["stop_tags"] = _check_stop_tags(c["stop_tags"], where)
        return cls(**c)


@dataclasses.dataclass(frozen=True)
class GreedySettings:
    """Greedy decoding as the reference's sft_eval_greedy.yaml (§2.8, §3.5)."""

    max_depth: int
    errors_threshold: int
    temperature: float
    stop_tags: tuple[str, ...]

    @classmethod
    def from_config(cls, config: Any, where: str = "config.search.greedy") -> "GreedySettings":
        c = _read(_section(config, where), dataclasses.fields(cls), where)
        for name in ("max_depth", "errors_threshold"):
            _at_least(where, name, c[name], 1)
        _at_least(where, "temperature", c["temperature"], 0)
        c["stop_tags"] = _check_stop_tags(c["stop_tags"], where)
        return cls(**c)


@dataclasses.dataclass(frozen=True)
class VoteSettings:
    """Answer selection across independent runs (eval_maj.py, §2.9)."""

    num_runs: int
    top_n: int
    max_node_per_tree: int

    @classmethod
    def from_config(cls, config: Any, where: str = "config.search.vote") -> "VoteSettings":
        c = _read(_section(config, where), dataclasses.fields(cls), where)
        for name in ("num_runs", "top_n", "max_node_per_tree"):
            _at_least(where, name, c[name], 1)
        return cls(**c)


@dataclasses.dataclass(frozen=True)
class MCTSSettings:
    """Everything the MCTS driver reads; field meanings and sources in configs/search.py."""

    num_rollouts: int
    num_children: int
    temperature: float
    max_depth: int
    c_puct: float
    unvisited_score: str
    errors_threshold: int
    positive_reward: float
    negative_reward: float
    terminal_guided: bool
    ppm_init_children: bool
    error_substring: bool
    batch_size: int
    chunks_in_flight: int
    initial_num_slots: int
    seed: int
    reference_prompt_newlines: bool
    reference_answer_cut: bool
    stop_tags: tuple[str, ...]
    beam: BeamSettings
    greedy: GreedySettings
    vote: VoteSettings

    @classmethod
    def from_config(cls, config: Any, where: str = "config.search") -> "MCTSSettings":
        """Read and check a search section; `where` names it in errors."""
        if isinstance(config, cls):
            return config
        c = _read(_section(config, where), dataclasses.fields(cls), where)
        for name in ("num_rollouts", "num_children", "max_depth", "errors_threshold",
                     "batch_size", "initial_num_slots", "chunks_in_flight"):
            _at_least(where, name, c[name], 1)
        if c["unvisited_score"] not in UNVISITED_SCORES:
            raise ValueError(f"{where}.unvisited_score must be one of {UNVISITED_SCORES}, "
                             f"got {c['unvisited_score']!r}")
        _at_least(where, "temperature", c["temperature"], 0)
        _at_least(where, "c_puct", c["c_puct"], 0)
        for name in ("terminal_guided", "ppm_init_children", "error_substring",
                     "reference_prompt_newlines", "reference_answer_cut"):
            if not isinstance(c[name], bool):
                raise ValueError(f"{where}.{name} must be True or False, got {c[name]!r}")
        c["stop_tags"] = _check_stop_tags(c["stop_tags"], where)
        c["beam"] = BeamSettings.from_config(c["beam"], f"{where}.beam")
        c["greedy"] = GreedySettings.from_config(c["greedy"], f"{where}.greedy")
        c["vote"] = VoteSettings.from_config(c["vote"], f"{where}.vote")
        for name in ("num_rollouts", "num_children", "max_depth", "errors_threshold",
                     "batch_size", "initial_num_slots", "chunks_in_flight", "seed"):
            c[name] = int(c[name])
        for name in ("temperature", "c_puct", "positive_reward", "negative_reward"):
            c[name] = float(c[name])
        return cls(**c)

    def for_greedy(self) -> "MCTSSettings":
        """MCTS with one child per node, one rollout, no grading: the greedy mode (§2.8)."""
        g = self.greedy
        return dataclasses.replace(self, num_children=1, num_rollouts=1,
                                   temperature=float(g.temperature), max_depth=int(g.max_depth),
                                   errors_threshold=int(g.errors_threshold),
                                   terminal_guided=False, stop_tags=g.stop_tags)

"""The engine section of a config (configs/engine.py), read and checked once.

`EngineSettings.from_config(section)` reads every field (a ConfigDict or a plain dict),
names the field in its error, and refuses unknown fields, so configs/engine.py is the
one place that holds engine defaults and every field in it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

DECODE_ATTENTION = ("auto", "xla", "pallas")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class MeshSettings:
    data: int
    fsdp: int
    tensor: int


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """Field meanings and sources: configs/engine.py."""

    slots: int
    max_seq_len: int
    max_new_tokens: int
    steps_per_call: int
    kv_bucket: int
    decode_attention: str
    prefill_len_bucket: int
    prefill_batch: int
    top_p: float
    top_k: int
    seed: int
    dtype: str
    stop_tags: tuple[str, ...]
    stop_on_eos: bool
    score_min_len: int
    score_batch: int
    score_group_size: int
    mesh: MeshSettings

    @classmethod
    def from_config(cls, config: Any, where: str = "config.engine") -> "EngineSettings":
        if isinstance(config, cls):
            return config
        section = _as_mapping(config, where)
        c = _read(section, cls, where)
        for name in ("slots", "max_seq_len", "max_new_tokens", "steps_per_call", "kv_bucket",
                     "prefill_len_bucket", "prefill_batch", "score_min_len", "score_batch"):
            _int_at_least(where, name, c[name], 1)
        _int_at_least(where, "score_group_size", c["score_group_size"], 0)
        if c["max_new_tokens"] >= c["max_seq_len"]:
            raise ValueError(f"{where}.max_new_tokens ({c['max_new_tokens']}) must be below "
                             f"{where}.max_seq_len ({c['max_seq_len']}): prompts need room")
        if c["decode_attention"] not in DECODE_ATTENTION:
            raise ValueError(f"{where}.decode_attention must be one of {DECODE_ATTENTION}, "
                             f"got {c['decode_attention']!r}")
        if c["dtype"] not in DTYPES:
            raise ValueError(f"{where}.dtype must be one of {DTYPES}, got {c['dtype']!r}")
        if not (isinstance(c["top_p"], (int, float)) and 0 < c["top_p"] <= 1):
            raise ValueError(f"{where}.top_p must be in (0, 1], got {c['top_p']!r}")
        if not (isinstance(c["top_k"], int) and (c["top_k"] == -1 or c["top_k"] >= 1)):
            raise ValueError(f"{where}.top_k must be -1 (off) or >= 1, got {c['top_k']!r}")
        if not isinstance(c["stop_on_eos"], bool):
            raise ValueError(f"{where}.stop_on_eos must be True or False, got {c['stop_on_eos']!r}")
        mesh = _read(_as_mapping(c["mesh"], f"{where}.mesh"), MeshSettings, f"{where}.mesh")
        for name, value in mesh.items():
            if not isinstance(value, int) or not (value == -1 or value >= 1):
                raise ValueError(f"{where}.mesh.{name} must be -1 (the rest) or >= 1, got {value!r}")
        c["mesh"] = MeshSettings(**mesh)
        if isinstance(c["stop_tags"], str) or not c["stop_tags"]:
            raise ValueError(f"{where}.stop_tags must be a non-empty list of step tags")
        c["stop_tags"] = tuple(c["stop_tags"])
        c["top_p"] = float(c["top_p"])
        return cls(**c)


def _as_mapping(config: Any, where: str) -> Mapping:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise TypeError(f"{where} must be a mapping (ConfigDict or dict), got {type(config).__name__}")


def _read(section: Mapping, cls, where: str) -> dict:
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(section) - set(names))
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)} "
                         "(see configs/engine.py)")
    missing = [n for n in names if n not in section]
    if missing:
        raise ValueError(f"{where} is missing {', '.join(missing)} (see configs/engine.py)")
    return {n: section[n] for n in names}


def _int_at_least(where: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{where}.{name} must be an integer >= {low}, got {value!r}")


def check_engine_config(config: Any, where: str = "config.engine") -> EngineSettings:
    """`EngineSettings.from_config`, for callers that only validate."""
    return EngineSettings.from_config(config, where)

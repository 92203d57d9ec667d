"""A self-evolution workdir: stage folders, DONE markers, the resolved config.

    DIR/config.json                  the resolved run config (a resume with another stops)
    DIR/round<k>/config.json         the resolved config of round k
    DIR/round<k>/<stage>/            what the stage wrote
    DIR/round<k>/<stage>/DONE        written last, atomically: a stage with DONE is never
                                     redone; a stage without it is resumed or redone
    DIR/control/<stage>/             the same-compute control (configs/tiny.py)

Files are written to a temporary name and renamed, so a kill leaves either the old
content or the new, never half of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Iterable, Mapping

DONE = "DONE"


def write_json_atomic(obj: Any, path: str, *, indent: int | None = 2) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, sort_keys=True, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(text: str, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts (lists and tuples are leaves)."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k in sorted(obj):
            out.update(flatten(obj[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(obj) if isinstance(obj, tuple) else obj}


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Dotted names of the fields whose values differ (or exist on one side only)."""
    a, b = flatten(json.loads(json.dumps(saved))), flatten(json.loads(json.dumps(current)))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))


class Workdir:
    """Paths and markers of one workdir (module docstring)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))

    def round_dir(self, k: int) -> str:
        return os.path.join(self.root, f"round{k}")

    def stage_dir(self, unit: str, stage: str) -> str:
        """`unit` is "round<k>" or "control"."""
        return os.path.join(self.root, unit, stage)

    def is_done(self, unit: str, stage: str) -> bool:
        return os.path.isfile(os.path.join(self.stage_dir(unit, stage), DONE))

    def mark_done(self, unit: str, stage: str, info: Mapping | None = None) -> None:
        """Write the stage's DONE marker last: checksums of its files and its info."""
        d = self.stage_dir(unit, stage)
        write_json_atomic({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                           "files": checksums(d), **(info or {})},
                          os.path.join(d, DONE))

    def done_info(self, unit: str, stage: str) -> dict:
        return read_json(os.path.join(self.stage_dir(unit, stage), DONE))

    def check_config(self, path: str, resolved: Mapping, *, what: str) -> None:
        """Write `resolved` to `path`, or compare it with what is there (a resume)."""
        if os.path.isfile(path):
            diff = config_differences(read_json(path), resolved)
            if diff:
                shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
                raise ValueError(
                    f"{path} was written by a run with another {what}; these fields differ: "
                    f"{shown}. Resume with the same config and overrides, or use a new --workdir")
            return
        write_json_atomic(dict(resolved), path)


def checksums(directory: str, skip: Iterable[str] = (DONE,)) -> dict[str, str]:
    """sha256 of every file under `directory` (relative paths), for DONE markers and tests."""
    out = {}
    skip = set(skip)
    for base, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            if name in skip or ".tmp" in name:
                continue
            path = os.path.join(base, name)
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            out[os.path.relpath(path, directory)] = h.hexdigest()
    return out

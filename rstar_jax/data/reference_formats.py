"""The reference's two training-data files, field for field (rstar_reference.md §4.2-4.3).

* SFT (train/sample_sft_data.py -> train_SFT.py): a JSON list, indent 4, of
  `{"query", "response"}`: the bare question and the concatenated step texts (assistant
  preamble removed, stripped), shuffled once after `random.seed(0)`.
* PPM pairs (train/sample_rm_data.py -> train_RM.py): a JSON list, indent 4, of
  `{"prompt", "neg", "pos", "neg_count", "pos_count"}`, in that key order.

Our data rules write both (`sft_data.write_reference_sft_json`,
`ppm_pairs.write_reference_ppm_json`), and our trainers read both as they are
(`rstar_jax.train.data.read_jsonl` takes a JSON list; an SFT `query` gets our prompt,
which is the reference's training template). The checks here are stricter than the
trainers' (exact fields, no extras), for files meant to go to the reference.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

REFERENCE_SFT_FIELDS = ("query", "response")
REFERENCE_PPM_FIELDS = ("prompt", "neg", "pos", "neg_count", "pos_count")
_TYPES = {"query": str, "response": str, "prompt": str, "neg": str, "pos": str,
          "neg_count": int, "pos_count": int}


class ReferenceFormatError(ValueError):
    """A record that is not in the reference's format; the message names file, record, field."""


def _check(records: Any, fields: Sequence[str], source: str, what: str) -> None:
    if not isinstance(records, list):
        raise ReferenceFormatError(f"{source}: the reference's {what} file is a JSON list, "
                                   f"got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"{source} record {i}"
        if not isinstance(rec, dict):
            raise ReferenceFormatError(f"{where}: expected a JSON object, "
                                       f"got {type(rec).__name__}")
        missing = [f for f in fields if f not in rec]
        extra = sorted(set(rec) - set(fields))
        if missing or extra:
            raise ReferenceFormatError(
                f"{where}: the reference's {what} records have exactly {list(fields)}; "
                f"missing {missing}, unexpected {extra}")
        for name in fields:
            value, kind = rec[name], _TYPES[name]
            # bool is an int subclass, never a count.
            if isinstance(value, bool) or not isinstance(value, kind):
                raise ReferenceFormatError(f"{where}: field {name!r} must be {kind.__name__}, "
                                           f"got {value!r:.60}")
            if kind is int and value < 0:
                raise ReferenceFormatError(f"{where}: field {name!r} must be >= 0, got {value}")


def check_reference_sft(records: Any, source: str = "SFT records") -> None:
    """Raise ReferenceFormatError unless `records` is a list of `{"query", "response"}`."""
    _check(records, REFERENCE_SFT_FIELDS, source, "SFT")


def check_reference_ppm(records: Any, source: str = "PPM records") -> None:
    """Raise ReferenceFormatError unless `records` is a list of the reference's pairs."""
    _check(records, REFERENCE_PPM_FIELDS, source, "PPM pair")
    for i, rec in enumerate(records):
        if rec["pos_count"] + rec["neg_count"] == 0:
            raise ReferenceFormatError(f"{source} record {i}: pos_count and neg_count are both 0 "
                                       "(train/rm.py divides by their sum)")


def _read_list(path: str | os.PathLike) -> Any:
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ReferenceFormatError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e


def read_reference_sft(path: str | os.PathLike) -> list[dict]:
    """The records of a reference SFT file, checked field for field."""
    records = _read_list(path)
    check_reference_sft(records, os.fspath(path))
    return records


def read_reference_ppm(path: str | os.PathLike) -> list[dict]:
    """The records of a reference PPM pair file, checked field for field."""
    records = _read_list(path)
    check_reference_ppm(records, os.fspath(path))
    return records

"""The nine evaluation benchmarks of rStar-Math, and local problem files.

The reference (`eval_data/`, rstar_reference.md §5) ships each benchmark as a JSON list
of `{"index", "question", "answer"}` records; the same files live in
`rstar_jax/data/benchmarks/` and are read through `importlib.resources`, so they work
from a wheel as well as from a checkout. Nothing is downloaded at run time.

`load_benchmark` also reads a user's own `.json` (a list of records, or the reference's
`{"example": [...]}` wrapper) or `.jsonl` file of `{question, answer}` records.

Quirks of the shipped data that callers should know about (kept as-is so that counts and
indices match the reference):
  * 4 MATH records accept any of several answers (the JSON holds a list, e.g. either
    focus of a hyperbola). `Problem.answer` is the first; `Problem.answers` holds all.
  * 2 gaokao2023en and 9 Omni-MATH records (proof problems) have an empty answer;
    `Problem.has_answer` is False for them and no prediction can be graded correct.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Any

# Friendly name -> file shipped in rstar_jax/data/benchmarks/, and the record count the
# reference reports for it (rstar_reference.md §5).
_BENCHMARK_FILES = {
    "gsm8k": "GSM8K_test.json",
    "math": "MATH_test.json",
    "math500": "math500_test.json",
    "aime2024": "aime2024_test.json",
    "amc23": "amc23_test.json",
    "olympiadbench": "olympiadbench_test.json",
    "collegemath": "collegemath_test.json",
    "omni_math": "omni_test.json",
    "gaokao2023en": "gaokao2023en_test.json",
}
BENCHMARK_NAMES: tuple[str, ...] = tuple(_BENCHMARK_FILES)
BENCHMARK_SIZES: dict[str, int] = {
    "gsm8k": 1319, "math": 5000, "math500": 500, "aime2024": 30, "amc23": 40,
    "olympiadbench": 675, "collegemath": 2818, "omni_math": 4428, "gaokao2023en": 385,
}

# Other spellings people use for the same sets: the reference's file stems, the paper's
# table names, and a few obvious variants. Matched after lower-casing and mapping "-"
# and " " to "_".
_ALIASES = {
    **{stem.removesuffix(".json").lower(): name for name, stem in _BENCHMARK_FILES.items()},
    **{stem.removesuffix("_test.json").lower(): name for name, stem in _BENCHMARK_FILES.items()},
    "omni": "omni_math", "omnimath": "omni_math", "math_500": "math500",
    "aime24": "aime2024", "aime_2024": "aime2024", "amc2023": "amc23", "amc_2023": "amc23",
    "college_math": "collegemath", "olympiad_bench": "olympiadbench",
    "gaokao2023": "gaokao2023en", "gaokao_2023_en": "gaokao2023en",
}


class BenchmarkFormatError(ValueError):
    """A problem file (or its name) cannot be read as a list of {question, answer} records."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One math problem with its ground-truth answer(s).

    Attributes:
      index: the record's `index` field, or its 0-based position when the file has none.
      question: the problem statement.
      answer: the ground-truth answer as a string ("" for proof problems without one).
      alternatives: further accepted answers (a few MATH records accept any of several).
    """

    index: int | str
    question: str
    answer: str
    alternatives: tuple[str, ...] = ()

    @property
    def answers(self) -> tuple[str, ...]:
        """Every accepted ground-truth answer: `answer` first, then `alternatives`."""
        return (self.answer, *self.alternatives)

    @property
    def has_answer(self) -> bool:
        """False for records whose answer is empty (proof problems): they cannot be graded."""
        return any(a.strip() for a in self.answers)


def canonical_benchmark_name(name: str) -> str | None:
    """The BENCHMARK_NAMES entry `name` refers to (file stems accepted), or None."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in _BENCHMARK_FILES:
        return key
    return _ALIASES.get(key)


def load_benchmark(name_or_path: str | os.PathLike, limit: int | None = None) -> list[Problem]:
    """Load a shipped benchmark by name, or a local `.json` / `.jsonl` problem file.

    Args:
      name_or_path: one of BENCHMARK_NAMES (or a reference file stem such as
        "MATH_test" / "omni"), or the path of a `.json` file (a list of records, or
        `{"example": [...]}` as the reference accepts) or a `.jsonl` file (one record a line).
        Each record needs `question` and `answer`; `answer` may be a string, a number
        (converted with str) or a non-empty list of those (all accepted); `index` is optional.
      limit: keep only the first `limit` problems (None keeps all).

    Raises:
      BenchmarkFormatError: unknown name, missing file, or a malformed record (the
        message names the file, the record number and the field).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BenchmarkFormatError(f"limit must be a non-negative int or None, got {limit!r}")
    records, source = _read_records(name_or_path)
    problems = [_to_problem(rec, i, source) for i, rec in enumerate(records)]
    return problems if limit is None else problems[:limit]


def _read_records(name_or_path: str | os.PathLike) -> tuple[list[Any], str]:
    """Raw records and a display name for error messages."""
    text_name = os.fspath(name_or_path)
    canonical = canonical_benchmark_name(text_name) if isinstance(text_name, str) else None
    if canonical is not None and not os.path.isfile(text_name):
        filename = _BENCHMARK_FILES[canonical]
        resource = importlib.resources.files("rstar_jax.data").joinpath("benchmarks", filename)
        source = f"rstar_jax/data/benchmarks/{filename}"
        return _parse_json_text(resource.read_text(encoding="utf-8"), source), source

    path = text_name
    is_file_like = path.endswith((".json", ".jsonl")) or os.sep in path or "/" in path
    if not os.path.isfile(path):
        if is_file_like:
            raise BenchmarkFormatError(f"problem file {path!r} does not exist")
        raise BenchmarkFormatError(
            f"unknown benchmark {path!r}: use one of {', '.join(BENCHMARK_NAMES)} "
            "or the path of a local .json/.jsonl file of {question, answer} records")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        return _parse_jsonl_text(text, path), path
    if path.endswith(".json"):
        return _parse_json_text(text, path), path
    raise BenchmarkFormatError(
        f"problem file {path!r} must end in .json (a list of records) or .jsonl (one record a line)")


def _parse_json_text(text: str, source: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(f"{source}: not valid JSON ({e})") from None
    if isinstance(data, dict) and "example" in data:  # the reference's wrapped form
        data = data["example"]
    if not isinstance(data, list):
        raise BenchmarkFormatError(
            f"{source}: expected a JSON list of {{question, answer}} records "
            f"(or {{\"example\": [...]}}), got {type(data).__name__}")
    return data


def _parse_jsonl_text(text: str, source: str) -> list[Any]:
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BenchmarkFormatError(f"{source}: line {line_no} is not valid JSON ({e})") from None
    return records


def _answer_text(value: Any) -> str | None:
    """A ground-truth answer as text; None when its type cannot be an answer."""
    if isinstance(value, str):
        return value
    # Numbers are common in hand-made files ({"answer": 18}); bool is not a number here.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _to_problem(record: Any, position: int, source: str) -> Problem:
    where = f"{source}: record {position}"
    if not isinstance(record, dict):
        raise BenchmarkFormatError(f"{where} must be a JSON object, got {type(record).__name__}")
    for field in ("question", "answer"):
        if field not in record:
            raise BenchmarkFormatError(f"{where} has no {field!r} field (fields: {sorted(record)})")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise BenchmarkFormatError(
            f"{where}: field 'question' must be a non-empty string, got {question!r:.80}")

    raw = record["answer"]
    raw_list = raw if isinstance(raw, list) else [raw]
    answers = [_answer_text(a) for a in raw_list]
    if not raw_list or any(a is None for a in answers):
        raise BenchmarkFormatError(
            f"{where}: field 'answer' must be a string, a number or a non-empty list of "
            f"those, got {raw!r:.80}")

    index = record.get("index", position)
    if isinstance(index, bool) or not isinstance(index, (int, str)):
        raise BenchmarkFormatError(f"{where}: field 'index' must be an int or a string, got {index!r}")
    return Problem(index=index, question=question, answer=answers[0],
                   alternatives=tuple(answers[1:]))

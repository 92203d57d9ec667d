"""Problems as the search and evaluation read them: question, accepted golds, record.

A problem comes as a dict (a line of a JSONL file, a benchmark record), as a
`benchmarks.Problem`, or as any object with a `.question`. `normalize_problem` turns
each into the one shape the drivers use, so MCTS, beam search and greedy decoding agree
on what a gold answer is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class SearchProblem:
    """One problem ready for search.

    gold: None (inference), a string, or a list of strings when the problem accepts
      several answers (`answer` given as a list, or `alternatives` beside it, as
      `benchmarks.Problem` has for a few MATH records).
    record: the input record, written back into the tree dump line.
    """

    question: str
    gold: str | list[str] | None
    record: dict


def normalize_problem(problem: Any, position: int) -> SearchProblem:
    """The `SearchProblem` of a dict or an object with `.question`; errors name `position`."""
    if isinstance(problem, Mapping):
        rec = dict(problem)
    elif hasattr(problem, "question"):
        if hasattr(problem, "__dict__"):
            rec = {k: v for k, v in vars(problem).items() if not k.startswith("_")}
        elif dataclasses.is_dataclass(problem):
            rec = dataclasses.asdict(problem)
        else:
            rec = {"question": problem.question, "answer": getattr(problem, "answer", None)}
    else:
        raise TypeError(f"problem {position}: expected a dict or an object with a .question, "
                        f"got {type(problem).__name__}")
    question = rec.get("question")
    if not isinstance(question, str):
        raise ValueError(f"problem {position}: 'question' must be a string, "
                         f"got {type(question).__name__}")
    gold = rec.get("answer")
    if gold is None:
        return SearchProblem(question, None, rec)
    golds = [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
    golds += [str(a) for a in (rec.get("alternatives") or ()) if str(a) not in golds]
    return SearchProblem(question, golds[0] if len(golds) == 1 else golds, rec)


# --------------------------------------------------------------------- problem sets

SPEC_KINDS = ("reasoning_gym", "benchmark", "file")


def _spec_dict(spec: Any, where: str) -> dict:
    to_dict = getattr(spec, "to_dict", None)
    spec = to_dict() if callable(to_dict) else spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where} must be a problem spec (a dict with 'kind'), got {spec!r}")
    return dict(spec)


def check_spec(spec: Any, where: str) -> dict:
    """Validate one problem-set spec; returns it as a plain dict.

    kinds:
      reasoning_gym: {kind, dataset, params: {...}, seed, size} — reasoning-gym draws
        problem i with seed + i, so another seed gives a fresh set;
      benchmark: {kind, name, limit (0 = all)} — one of the shipped benchmarks;
      file: {kind, path, limit (0 = all)} — a local .json/.jsonl of {question, answer}.
    """
    s = _spec_dict(spec, where)
    kind = s.get("kind")
    if kind not in SPEC_KINDS:
        raise ValueError(f"{where}.kind must be one of {SPEC_KINDS}, got {kind!r}")
    required = {"reasoning_gym": ("dataset", "params", "seed", "size"),
                "benchmark": ("name", "limit"), "file": ("path", "limit")}[kind]
    missing = [k for k in required if k not in s]
    if missing:
        raise ValueError(f"{where} ({kind}) is missing {', '.join(missing)}")
    unknown = sorted(set(s) - set(required) - {"kind"})
    if unknown:
        raise ValueError(f"{where} ({kind}) has unknown field(s) {', '.join(unknown)}")
    if kind == "reasoning_gym":
        for name in ("seed", "size"):
            if isinstance(s[name], bool) or not isinstance(s[name], int) or s[name] < (
                    1 if name == "size" else 0):
                raise ValueError(f"{where}.{name} must be a non-negative integer "
                                 f"(size >= 1), got {s[name]!r}")
        if not isinstance(s["params"], Mapping):
            raise ValueError(f"{where}.params must be a dict of the dataset's config fields")
    else:
        if isinstance(s["limit"], bool) or not isinstance(s["limit"], int) or s["limit"] < 0:
            raise ValueError(f"{where}.limit must be an integer >= 0 (0 = all), got {s['limit']!r}")
    return s


def load_problem_set(spec: Any, where: str = "problems", *, name: str = "") -> list[dict]:
    """The problems of one spec as records {index, question, answer, source, ...}.

    `index` is "<name>/<i>" so problems of a mixed set stay distinct and traceable;
    reasoning-gym records also keep the generator's difficulty metadata.
    """
    s = check_spec(spec, where)
    name = name or where
    if s["kind"] == "reasoning_gym":
        return _reasoning_gym(s, where, name)
    from rstar_jax.data.benchmarks import load_benchmark
    source = s["name"] if s["kind"] == "benchmark" else s["path"]
    probs = load_benchmark(source, limit=s["limit"] or None)
    return [{"index": f"{name}/{p.index}", "question": p.question,
             "answer": list(p.answers) if p.alternatives else p.answer, "source": name}
            for p in probs]


def _reasoning_gym(s: dict, where: str, name: str) -> list[dict]:
    try:
        import reasoning_gym
    except ImportError as e:   # a declared dependency; say how to get it
        raise ValueError(f"{where}: reasoning-gym is not installed (pip install "
                         "reasoning-gym)") from e
    params = dict(s["params"])
    try:
        data = reasoning_gym.create_dataset(s["dataset"], seed=int(s["seed"]),
                                            size=int(s["size"]), **params)
    except (KeyError, TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"{where}: reasoning-gym cannot make dataset {s['dataset']!r} with "
                         f"params {params}: {e}") from e
    out = []
    for i, item in enumerate(data):
        meta = item.get("metadata") or {}
        rec = {"index": f"{name}/{i}", "question": str(item["question"]).strip(),
               "answer": str(item["answer"]), "source": name}
        for key in ("num_terms", "num_digits", "difficulty"):
            if key in meta:
                rec[key] = meta[key] if key != "difficulty" else dict(meta[key])
        out.append(rec)
    return out


def load_problems(specs: Any, where: str = "problems", *, dedupe: bool = True) -> list[dict]:
    """A problem set from one spec or a {part name: spec} mapping (parts concatenated in
    the mapping's order). With `dedupe`, duplicate questions keep their first occurrence
    (training sets: a search resumes by question); evaluation sets keep every record."""
    d = _spec_dict(specs, where)
    parts = {"": d} if "kind" in d else d
    out, seen = [], set()
    for part, spec in parts.items():
        for rec in load_problem_set(spec, f"{where}.{part}" if part else where,
                                    name=part or where.rsplit(".", 1)[-1]):
            if not dedupe or rec["question"] not in seen:
                seen.add(rec["question"])
                out.append(rec)
    return out

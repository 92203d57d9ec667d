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

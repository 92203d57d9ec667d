"""Reading search-tree dumps in the reference's tag format (rstar_reference.md §4.1).

A tree dump is JSONL, one tree per line. Two line shapes are accepted:

* ours (written from `tree.to_rstar_json()`):
  `{"question": str, "answer": gold, "tree": {tag: node}}`
* the reference's (`main.py` dumps): the input problem record plus
  `"rstar": {tag: node}`; the question may sit under `"query"` (the reference's
  PPM extractor falls back to that key).

Tags are `"0"` for the root and `f"{parent}.{k}"` for children. Every node must carry
`text`, `value`, `q_value`, `visit_count` and `final_answer` (the reference dump always
writes all five, §4.1); `extra_info` is optional. Anything else is kept untouched in
`TreeNode.extra`, so the reader works with dumps that carry more fields.

The data rules downstream (SFT selection, PPM pairs) only need the tree shape, the
step texts, Q values and terminal answers, so the reader turns each line into a small
immutable `TreeNode` tree and a `TreeRecord`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Iterator

# Terminal markers written into `final_answer` (the reference's constants.py, byte for
# byte), from the step format the search writes them with.
from rstar_jax.step_format import (INVALID_TERMINALS, NO_VALID_CHILD,  # noqa: F401
                                   TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS)

ROOT_TAG = "0"

# Step beam search dumps carry a non-node "solutions" entry beside the tags (§4.1).
NON_NODE_KEYS = frozenset({"solutions"})

# The reference rebuilds a tree by probing child tags `parent.k` for k < 64 * 16
# (extra_sft_file.py / extra_rm_file.py, b1 * b2); children beyond that are never seen
# (rstar_reference.md §9.6). We keep the same horizon so results match exactly.
MAX_CHILD_INDEX = 1024

# Fields every node must carry, with the JSON types allowed for each.
_NUMBER = (int, float)
REQUIRED_NODE_FIELDS = {
    "text": (str,),
    "value": _NUMBER,
    "q_value": _NUMBER,
    "visit_count": (int,),
    "final_answer": (str,),
}
_KNOWN_NODE_FIELDS = frozenset(REQUIRED_NODE_FIELDS) | {"extra_info"}


class TreeFormatError(ValueError):
    """A tree dump that does not have the expected shape; the message names where."""


@dataclasses.dataclass(frozen=True)
class TreeNode:
    """One search node: one reasoning step (the root holds no step).

    `children` are ordered by their tag index k (tags `parent.k`), as the reference's
    rebuild probes them in increasing k.
    """

    tag: str
    text: str
    value: float
    q_value: float
    visit_count: int
    final_answer: str
    extra_info: str = ""
    children: tuple["TreeNode", ...] = ()
    extra: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def depth(self) -> int:
        """Number of steps from the root (root = 0)."""
        return self.tag.count(".")


@dataclasses.dataclass(frozen=True)
class TreeRecord:
    """One problem's tree with its question and gold answer.

    `answer` is a string, a tuple of strings when the dump lists several accepted
    answers (the reference grader accepts a list of ground truths, §5), or None when
    the dump has no gold answer (inference runs). `source` is
    `"file:line"` for error messages and provenance.
    """

    question: str
    answer: str | tuple[str, ...] | None
    root: TreeNode
    source: str = "<memory>"


def is_valid_answer_leaf(node: TreeNode) -> bool:
    """A leaf holding a real final answer (reference `is_valid_final_answer_node`).

    Failure terminals (code errors, too deep, unparsable) also carry a `final_answer`
    string, so they are excluded by name.
    """
    return (not node.children and bool(node.final_answer)
            and node.final_answer not in INVALID_TERMINALS)


def is_code_error_leaf(node: TreeNode) -> bool:
    """A branch killed by code errors (reference TOO_MANY_CODE_ERRORS terminal)."""
    return not node.children and node.final_answer == TOO_MANY_CODE_ERRORS


def iter_nodes(root: TreeNode) -> Iterator[TreeNode]:
    """All nodes, depth first, parents before children."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def root_to_leaf_paths(root: TreeNode) -> list[tuple[TreeNode, ...]]:
    """Every root-to-leaf path, in depth-first child order (reference `search_all_traces`)."""
    paths = []

    def visit(node: TreeNode, prefix: tuple[TreeNode, ...]) -> None:
        path = prefix + (node,)
        if not node.children:
            paths.append(path)
        for child in node.children:
            visit(child, path)

    visit(root, ())
    return paths


def _check_node(tag: str, fields: Any, where: str) -> None:
    """Raise TreeFormatError unless `fields` is a node dict with every required field."""
    if not isinstance(fields, dict):
        raise TreeFormatError(f"{where}: node {tag!r} must be a JSON object, "
                              f"got {type(fields).__name__}")
    for name, types in REQUIRED_NODE_FIELDS.items():
        if name not in fields:
            raise TreeFormatError(f"{where}: node {tag!r} is missing field {name!r}")
        value = fields[name]
        # bool is an int subclass in Python but never a valid count or Q value.
        if isinstance(value, bool) or not isinstance(value, types):
            raise TreeFormatError(
                f"{where}: node {tag!r} field {name!r} must be "
                f"{' or '.join(t.__name__ for t in types)}, got {value!r}")
        if types is _NUMBER and not math.isfinite(value):
            raise TreeFormatError(f"{where}: node {tag!r} field {name!r} is not finite: {value!r}")
    if "extra_info" in fields and not isinstance(fields["extra_info"], str):
        raise TreeFormatError(f"{where}: node {tag!r} field 'extra_info' must be str")


def _parse_tag(tag: str, where: str) -> tuple[int, ...]:
    """Tag "0.3.1" -> (0, 3, 1); only canonical decimal parts (the reference builds tags
    with f"{parent}.{k}", so "0.01" or "0.a" can never be found by its rebuild)."""
    parts = tag.split(".")
    if parts[0] != ROOT_TAG or not all(p.isdigit() and str(int(p)) == p for p in parts):
        raise TreeFormatError(f"{where}: malformed node tag {tag!r} "
                              f"(expected '0', '0.1', '0.1.2', ...)")
    return tuple(int(p) for p in parts)


def build_tree(nodes: Any, where: str = "<memory>") -> TreeNode:
    """Turn a `{tag: node fields}` dict (reference dump format) into a `TreeNode` tree.

    Raises TreeFormatError naming `where` and the tag for a missing root, a node whose
    parent tag is absent, a malformed tag, or a missing/mistyped field. Children with
    index >= MAX_CHILD_INDEX are dropped, as the reference never probes them.
    """
    if not isinstance(nodes, dict) or not nodes:
        raise TreeFormatError(f"{where}: tree must be a non-empty JSON object of tag -> node")
    if ROOT_TAG not in nodes:
        raise TreeFormatError(f"{where}: tree has no root node tagged '0'")
    children_of: dict[str, list[tuple[int, str]]] = {}
    for tag, fields in nodes.items():
        if tag in NON_NODE_KEYS:
            continue
        parts = _parse_tag(tag, where)
        _check_node(tag, fields, where)
        if tag == ROOT_TAG:
            continue
        parent = tag.rsplit(".", 1)[0]
        if parent not in nodes:
            raise TreeFormatError(f"{where}: node {tag!r} has no parent node {parent!r}")
        children_of.setdefault(parent, []).append((parts[-1], tag))

    def make(tag: str) -> TreeNode:
        fields = nodes[tag]
        kids = sorted(k for k in children_of.get(tag, []) if k[0] < MAX_CHILD_INDEX)
        return TreeNode(
            tag=tag,
            text=fields["text"],
            value=float(fields["value"]),
            q_value=float(fields["q_value"]),
            visit_count=fields["visit_count"],
            final_answer=fields["final_answer"],
            extra_info=fields.get("extra_info", ""),
            children=tuple(make(t) for _, t in kids),
            extra={k: v for k, v in fields.items() if k not in _KNOWN_NODE_FIELDS},
        )

    return make(ROOT_TAG)


def _normalize_answer(answer: Any, where: str) -> str | tuple[str, ...] | None:
    """Gold answer as the reference grades it: `str(d["answer"])` (main.py), or a list."""
    if answer is None:
        return None
    if isinstance(answer, list):
        return tuple(_normalize_answer(a, where) for a in answer)
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool):
        return str(answer)
    raise TreeFormatError(f"{where}: field 'answer' must be a string, number or list, "
                          f"got {answer!r}")


def parse_tree_record(obj: Any, where: str = "<memory>") -> TreeRecord:
    """Validate one decoded JSONL line (either accepted shape) into a TreeRecord."""
    if not isinstance(obj, dict):
        raise TreeFormatError(f"{where}: line must be a JSON object, got {type(obj).__name__}")
    if "tree" in obj:
        nodes = obj["tree"]
    elif "rstar" in obj:
        nodes = obj["rstar"]
    else:
        raise TreeFormatError(f"{where}: missing field 'tree' (or the reference's 'rstar')")
    question = obj.get("question", obj.get("query"))
    if question is None:
        raise TreeFormatError(f"{where}: missing field 'question' (or 'query')")
    if not isinstance(question, str):
        raise TreeFormatError(f"{where}: field 'question' must be a string, got {question!r}")
    # Inference dumps may have no gold answer; SFT selection refuses those (it grades).
    answer = _normalize_answer(obj.get("answer"), where)
    return TreeRecord(question=question, answer=answer, root=build_tree(nodes, where),
                      source=where)


def load_tree_records(path: str | os.PathLike) -> list[TreeRecord]:
    """Read a JSONL tree dump (ours or the reference's) into TreeRecords.

    Blank lines are skipped. Unlike the reference, which silently drops lines it cannot
    parse, any bad line raises TreeFormatError naming the file, line and field.
    """
    path = os.fspath(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TreeFormatError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            records.append(parse_tree_record(obj, where))
    return records


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    """Write one JSON document (indent 4, as the reference's data files) atomically.

    The file appears complete or not at all, so a crash never leaves a half-written
    stage output behind (DESIGN.md, non-negotiables).
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4)
    os.replace(tmp, path)


def write_jsonl_atomic(rows: Iterable[Any], path: str | os.PathLike) -> None:
    """Write one JSON value per line, atomically."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)

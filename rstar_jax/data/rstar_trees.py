"""A read-only view of saved search trees for the data rules (rstar_reference.md §4.1-4.3).

Trees are read and validated by the one model of a saved tree,
`rstar_jax.search.host_tree` (`load_trees`, `SearchTree.from_record`), which takes our
dumps and the reference's alike: the input record plus `"rstar": {tag: state}`. The SFT
and PPM-pair rules walk trees recursively, compare subtrees and need no slot indices,
so they read this immutable mirror of a `SearchTree`: `TreeNode`s holding their children
(ordered by tag index, as the reference's rebuild probes them) and a `TreeRecord` per
problem. It is built once per tree and never written back.

Also here: the atomic writers for the data rules' output files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator

from rstar_jax.search.host_tree import (MAX_CHILD_INDEX, REQUIRED_NODE_FIELDS,  # noqa: F401
                                        Node, SearchTree, TreeFormatError, iter_trees)
from rstar_jax.step_format import (INVALID_TERMINALS, NO_VALID_CHILD,  # noqa: F401
                                   TOO_MANY_CODE_ERRORS, TOO_MANY_STEPS, is_valid_final_answer)


@dataclasses.dataclass(frozen=True)
class TreeNode:
    """One search node: one reasoning step (the root holds no step).

    `children` are ordered by their tag index k (tags `parent.k`). `extra` holds the
    node's other state fields (action, action_input, observation and anything unknown).
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
    the dump has no gold answer (inference runs). `source` is `"file:line"` for error
    messages and provenance.
    """

    question: str
    answer: str | tuple[str, ...] | None
    root: TreeNode
    source: str = "<memory>"


def is_valid_answer_leaf(node: TreeNode) -> bool:
    """A leaf holding a real final answer (reference `is_valid_final_answer_node`)."""
    return not node.children and is_valid_final_answer(node.final_answer)


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


def _view_node(tree: SearchTree, node: Node) -> TreeNode:
    extra = {"action": node.action, "action_input": node.action_input}
    if node.observation is not None:
        extra["observation"] = node.observation
    extra.update(node.extra)
    return TreeNode(tag=node.tag, text=node.text, value=node.value, q_value=node.q_value,
                    visit_count=node.visit_count, final_answer=node.final_answer,
                    extra_info=node.extra_info,
                    children=tuple(_view_node(tree, tree.nodes[c]) for c in node.children),
                    extra=extra)


def view_of(tree: SearchTree, source: str = "<memory>") -> TreeRecord:
    """The data rules' read-only view of one host tree."""
    answer = tuple(tree.answer) if isinstance(tree.answer, list) else tree.answer
    return TreeRecord(question=tree.question, answer=answer, root=_view_node(tree, tree.root),
                      source=source)


def parse_tree_record(obj: Any, where: str = "<memory>") -> TreeRecord:
    """Validate one decoded dump line (ours or the reference's) into a TreeRecord."""
    return view_of(SearchTree.from_record(obj, where=where), source=where)


def load_tree_records(path: str | os.PathLike) -> list[TreeRecord]:
    """Read a JSONL tree dump (ours or the reference's) into TreeRecords.

    Any bad line raises TreeFormatError naming the file, line and field (host_tree).
    """
    return [view_of(tree, source=where) for where, tree in iter_trees(path)]


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

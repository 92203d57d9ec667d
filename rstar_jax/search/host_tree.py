"""The one model of a search tree on the host, and its dump format (rstar_reference.md §4.1).

The numbers (visits, values, terminal flags) live in `rstar_jax.search.tree.Tree` on the
device during search and are copied into these records when a tree finishes. This file
owns the dump format, written and read here only: one JSON line per problem, the input
record plus `"rstar": {tag: state}` with tags `0`, `0.1`, `0.1.2` in BFS order, which is
what the reference's `main.py` writes too. The reader takes both (and `"tree"` as an
alias for the tree key, `"query"` for the question) and validates every line; the data
rules (`rstar_jax.data.rstar_trees`) read trees through it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from rstar_jax.step_format import is_valid_final_answer

ROOT_TAG = "0"
TREE_KEY = "rstar"                 # the tree's key in a dump line (ours and the reference's)
TREE_KEY_ALIASES = (TREE_KEY, "tree")
# Step beam search dumps carry a non-node "solutions" entry beside the tags (§4.1).
NON_NODE_KEYS = frozenset({"solutions"})
# The reference rebuilds a tree by probing child tags `parent.k` for k < 64 * 16
# (extra_sft_file.py / extra_rm_file.py, b1 * b2); children beyond that are never seen
# (rstar_reference.md §9.6). The reader keeps the same horizon so the data rules match.
MAX_CHILD_INDEX = 1024

# Fields every node of a dump must carry (the reference always writes all five, §4.1),
# with the JSON types allowed for each.
_NUMBER = (int, float)
REQUIRED_NODE_FIELDS = {
    "text": (str,),
    "value": _NUMBER,
    "q_value": _NUMBER,
    "visit_count": (int,),
    "final_answer": (str,),
}
_OPTIONAL_STR_FIELDS = ("extra_info", "action", "action_input")
_MODELLED_FIELDS = frozenset(REQUIRED_NODE_FIELDS) | set(_OPTIONAL_STR_FIELDS) | {"observation"}


class TreeFormatError(ValueError):
    """A tree dump line that does not have the expected shape; the message names where."""


@dataclasses.dataclass
class Node:
    """One node of one tree on the host. `index` is its slot in the device arrays."""

    index: int
    parent: int            # slot of the parent, -1 for the root
    tag: str
    depth: int
    text: str = ""
    extra_info: str = ""
    action: str = ""
    action_input: str = ""
    final_answer: str = ""
    observation: str | None = None   # only code steps have one (as in the reference)
    consecutive_errors: int = 0
    timed_out: bool = False          # code run timed out (skipped when replaying, §3.4)
    terminal: bool = False
    rollout: int = -1                # rollout that created the node (-1: root)
    children: list[int] = dataclasses.field(default_factory=list)
    # Filled from the device arrays when the tree is finished (or from a dump).
    value: float = 0.0
    q_value: float = 0.0
    visit_count: int = 0
    # State fields of a read dump that this model does not know, written back unchanged.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_valid_answer(self) -> bool:
        """A terminal answer step, not a failure marker (`step_format.is_valid_final_answer`)."""
        return is_valid_final_answer(self.final_answer)

    def state(self) -> dict[str, Any]:
        """The reference's per-node state dict (§4.1 field names)."""
        out: dict[str, Any] = {
            "text": self.text,
            "extra_info": self.extra_info,
            "action": self.action,
            "action_input": self.action_input,
            "final_answer": self.final_answer,
        }
        if self.observation is not None:
            out["observation"] = self.observation
        out["value"] = float(self.value)
        out["q_value"] = float(self.q_value)
        out["visit_count"] = int(self.visit_count)
        out.update(self.extra)
        return out


@dataclasses.dataclass
class SearchTree:
    """One problem's search tree on the host.

    Attributes:
      question: the problem text.
      answer: the gold answer, a list of accepted gold answers (a few MATH records accept
        several), or None at inference.
      record: the input problem record (written back into the dump line).
      nodes: all nodes, `nodes[i].index == i`; nodes[0] is the root.
      mode: "mcts" or "bs" (beam search also dumps its `solutions`, §4.1).
      solutions: beam search answers sorted by value (empty for MCTS).
    """

    question: str
    answer: str | list[str] | None = None
    record: dict[str, Any] = dataclasses.field(default_factory=dict)
    nodes: list[Node] = dataclasses.field(default_factory=list)
    mode: str = "mcts"
    solutions: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @classmethod
    def new(cls, question: str, answer: str | list[str] | None = None, record: dict | None = None,
            mode: str = "mcts") -> "SearchTree":
        root = Node(index=0, parent=-1, tag="0", depth=0, extra_info=f"question: {question}")
        return cls(question=question, answer=answer, record=dict(record or {}), nodes=[root],
                   mode=mode)

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: int, **fields: Any) -> Node:
        """Append a child of `parent`; its tag is `parent.k` with k counting from 1 (§2.1)."""
        p = self.nodes[parent]
        node = Node(index=len(self.nodes), parent=parent, tag=f"{p.tag}.{len(p.children) + 1}",
                    depth=p.depth + 1, **fields)
        self.nodes.append(node)
        p.children.append(node.index)
        return node

    def path(self, index: int) -> list[Node]:
        """Nodes from the root to `index`, both included."""
        out = []
        while index >= 0:
            out.append(self.nodes[index])
            index = self.nodes[index].parent
        return out[::-1]

    def partial_solution(self, index: int) -> str:
        """Concatenated step texts root -> node (the reference's `collect_partial_solution`)."""
        return "".join(n.text for n in self.path(index))

    def set_stats(self, visits: np.ndarray, value_sum: np.ndarray, value: np.ndarray,
                  terminal: np.ndarray) -> None:
        """Copy one tree's device numbers ([N] each) into the node records."""
        for n in self.nodes:
            i = n.index
            n.visit_count = int(visits[i])
            n.q_value = float(value_sum[i] / visits[i]) if visits[i] > 0 else 0.0
            n.value = float(value[i])
            n.terminal = bool(terminal[i]) or n.terminal

    def valid_answer_nodes(self) -> list[Node]:
        """Valid final-answer leaves in BFS order."""
        return [n for n in self.bfs() if not n.children and n.is_valid_answer]

    def bfs(self) -> list[Node]:
        order, queue = [], [0]
        while queue:
            i = queue.pop(0)
            order.append(self.nodes[i])
            queue.extend(self.nodes[i].children)
        return order

    def to_rstar_json(self) -> dict[str, Any]:
        """`{tag: state}` in the reference's dump format (§4.1), BFS order."""
        out: dict[str, Any] = {n.tag: n.state() for n in self.bfs()}
        if self.mode == "bs":
            out["solutions"] = list(self.solutions)
        return out

    def to_record(self) -> dict[str, Any]:
        """One dump line: the input record plus `"rstar": tree` (the reference's shape)."""
        rec = dict(self.record)
        rec.setdefault("question", self.question)
        if self.answer is not None:
            rec["answer"] = self.answer    # every accepted gold, so the data rules see them all
        rec[TREE_KEY] = self.to_rstar_json()
        return rec

    @classmethod
    def from_record(cls, rec: Any, *, where: str = "record") -> "SearchTree":
        """Rebuild a tree from one decoded dump line (ours or the reference's).

        Raises TreeFormatError naming `where` (and the tag and field) for a line that is
        not an object, lacks the tree or the question, or holds a node without one of
        `REQUIRED_NODE_FIELDS`, with a mistyped field, a malformed tag or no parent.
        Children are ordered by their index k (tags `parent.k`, gaps allowed, k <
        `MAX_CHILD_INDEX`), as the reference's rebuild probes them.
        """
        if not isinstance(rec, dict):
            raise TreeFormatError(f"{where}: line must be a JSON object, got {type(rec).__name__}")
        key = next((k for k in TREE_KEY_ALIASES if k in rec), None)
        if key is None:
            raise TreeFormatError(f"{where}: missing field 'tree' (the tag -> node object; "
                                  f"the search and the reference write it as {TREE_KEY!r})")
        states = rec[key]
        question = rec.get("question", rec.get("query"))
        if question is None:
            raise TreeFormatError(f"{where}: missing field 'question' (or 'query')")
        if not isinstance(question, str):
            raise TreeFormatError(f"{where}: field 'question' must be a string, got {question!r}")
        children_of = _index_tags(states, where)
        tree = cls(question=question, answer=_gold_of(rec.get("answer"), where),
                   record={k: v for k, v in rec.items() if k not in TREE_KEY_ALIASES},
                   mode="bs" if "solutions" in states else "mcts",
                   solutions=list(states.get("solutions", [])))
        queue = [(ROOT_TAG, -1, 0)]
        while queue:
            tag, parent, depth = queue.pop(0)
            node = _node_from_state(states[tag], len(tree.nodes), parent, tag, depth)
            tree.nodes.append(node)
            if parent >= 0:
                tree.nodes[parent].children.append(node.index)
            queue.extend((child, node.index, depth + 1) for child in children_of.get(tag, ()))
        return tree


def _parse_tag(tag: str, where: str) -> tuple[int, ...]:
    """Tag "0.3.1" -> (0, 3, 1); only canonical decimal parts (the reference builds tags
    with f"{parent}.{k}", so "0.01" or "0.a" can never be found by its rebuild)."""
    parts = tag.split(".")
    if parts[0] != ROOT_TAG or not all(p.isdigit() and str(int(p)) == p for p in parts):
        raise TreeFormatError(f"{where}: malformed node tag {tag!r} "
                              f"(expected '0', '0.1', '0.1.2', ...)")
    return tuple(int(p) for p in parts)


def _check_state(tag: str, fields: Any, where: str) -> None:
    """Raise TreeFormatError unless `fields` is a node state with every required field."""
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
    for name in _OPTIONAL_STR_FIELDS:
        if name in fields and not isinstance(fields[name], str):
            raise TreeFormatError(f"{where}: node {tag!r} field {name!r} must be str")


def _index_tags(states: Any, where: str) -> dict[str, list[str]]:
    """Validate every node of a `{tag: state}` object; children tags per parent, by index."""
    if not isinstance(states, dict) or not states:
        raise TreeFormatError(f"{where}: tree must be a non-empty JSON object of tag -> node")
    if ROOT_TAG not in states:
        raise TreeFormatError(f"{where}: tree has no root node tagged '0'")
    children: dict[str, list[tuple[int, str]]] = {}
    for tag, fields in states.items():
        if tag in NON_NODE_KEYS:
            continue
        parts = _parse_tag(tag, where)
        _check_state(tag, fields, where)
        if tag == ROOT_TAG:
            continue
        parent = tag.rsplit(".", 1)[0]
        if parent not in states:
            raise TreeFormatError(f"{where}: node {tag!r} has no parent node {parent!r}")
        if parts[-1] < MAX_CHILD_INDEX:
            children.setdefault(parent, []).append((parts[-1], tag))
    return {parent: [t for _, t in sorted(kids)] for parent, kids in children.items()}


def _node_from_state(st: dict, index: int, parent: int, tag: str, depth: int) -> Node:
    node = Node(index=index, parent=parent, tag=tag, depth=depth, text=st["text"],
                extra_info=st.get("extra_info", ""), action=st.get("action", ""),
                action_input=st.get("action_input", ""), final_answer=st["final_answer"],
                observation=st.get("observation"), value=float(st["value"]),
                q_value=float(st["q_value"]), visit_count=int(st["visit_count"]),
                extra={k: v for k, v in st.items() if k not in _MODELLED_FIELDS})
    node.terminal = bool(node.final_answer)
    return node


def _gold_of(answer: Any, where: str) -> str | list[str] | None:
    """Gold answer as the reference grades it: `str(d["answer"])` (main.py), or a list."""
    if answer is None:
        return None
    if isinstance(answer, list):
        return [_gold_of(a, where) for a in answer]
    if isinstance(answer, (str, int, float)) and not isinstance(answer, bool):
        return str(answer)
    raise TreeFormatError(f"{where}: field 'answer' must be a string, number or list, "
                          f"got {answer!r}")


def save_trees(trees: Iterable[SearchTree], path: str, *, append: bool = True) -> None:
    """Write trees as JSONL (one line each), flushing after every line."""
    save_tree_records((t.to_record() for t in trees), path, append=append)


def save_tree_records(records: Iterable[dict], path: str, *, append: bool = True) -> None:
    """`save_trees` for trees already turned into records (`SearchTree.to_record`)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()


def iter_trees(path: str | os.PathLike) -> Iterator[tuple[str, SearchTree]]:
    """("file:line", tree) for each line of a JSONL tree dump (ours or the reference's).

    Blank lines are skipped. Unlike the reference, which silently drops lines it cannot
    parse, any bad line raises TreeFormatError naming the file, line and field.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TreeFormatError(
                    f"{where}: invalid JSON ({e.msg} at column {e.colno}); a partly written "
                    "last line can be deleted and the run resumed") from e
            yield where, SearchTree.from_record(rec, where=where)


def load_trees(path: str | os.PathLike) -> list[SearchTree]:
    """Read a JSONL tree dump written by `save_trees` (or by the reference's main.py)."""
    return [tree for _, tree in iter_trees(path)]


def resume_from_dump(path: str | os.PathLike, trees: Sequence[SearchTree]) -> dict[int, SearchTree]:
    """Trees already in the dump at `path`, matched to `trees` by (question, gold), in order.

    A search appends one flushed line per finished tree, so an interruption can only cut
    the last line: that unterminated line is removed from the file (so appending goes on
    cleanly) and its problem is searched again. Any other bad line is an error naming it.
    Returns {position in `trees`: the finished tree read back}.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        data = f.read()
    found: dict[tuple, list[SearchTree]] = {}
    keep = 0
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        end = keep + len(raw) + 1
        if not raw.strip():
            keep = min(end, len(data))
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if end > len(data):          # the last, unterminated line: cut by the interruption
                with open(path, "r+b") as f:
                    f.truncate(keep)
                break
            raise TreeFormatError(f"{where}: not a tree dump line ({e}); fix or remove the "
                                  "file, or search without resuming") from e
        tree = SearchTree.from_record(rec, where=where)
        found.setdefault(_problem_key(tree), []).append(tree)
        keep = min(end, len(data))
    done = {}
    for i, t in enumerate(trees):
        same = found.get(_problem_key(t))
        if same:
            done[i] = same.pop(0)
    return done


def _problem_key(tree: SearchTree) -> tuple[str, str]:
    return tree.question, json.dumps(tree.answer)

"""Host side of a search tree: step texts, code results and answers, indexed by node slot.

The numbers (visits, values, terminal flags) live in `rstar_jax.search.tree.Tree` on the
device during search and are copied into these records when a tree finishes. This file
also owns the dump format (rstar_reference.md §4.1): one JSON line per problem, the
input record plus `"rstar": {tag: state}` with tags `0`, `0.1`, `0.1.2` in BFS order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable

import numpy as np

from rstar_jax.step_format import INVALID_TERMINALS


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

    @property
    def is_valid_answer(self) -> bool:
        """A terminal answer step that is not one of the invalid-terminal markers (§2.9)."""
        return bool(self.final_answer) and self.final_answer not in INVALID_TERMINALS

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
        rec["rstar"] = self.to_rstar_json()
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any], *, where: str = "record") -> "SearchTree":
        """Rebuild a tree from a dump line (ours or the reference's)."""
        states = rec.get("rstar", rec.get("tree"))
        if not isinstance(states, dict) or "0" not in states:
            raise ValueError(f"{where}: no tree under 'rstar' (or 'tree') with a root tag '0'")
        question = rec.get("question", rec.get("query"))
        if question is None:
            raise ValueError(f"{where}: no 'question' field")
        answer = rec.get("answer")
        record = {k: v for k, v in rec.items() if k not in ("rstar", "tree")}
        mode = "bs" if "solutions" in states else "mcts"
        if isinstance(answer, (list, tuple)):
            answer = [str(a) for a in answer]
        elif answer is not None:
            answer = str(answer)
        tree = cls(question=question, answer=answer,
                   record=record, mode=mode, solutions=list(states.get("solutions", [])))
        queue = [("0", -1, 0)]
        while queue:
            tag, parent, depth = queue.pop(0)
            st = states[tag]
            node = Node(index=len(tree.nodes), parent=parent, tag=tag, depth=depth,
                        text=st.get("text", ""), extra_info=st.get("extra_info", ""),
                        action=st.get("action", ""), action_input=st.get("action_input", ""),
                        final_answer=st.get("final_answer", ""),
                        observation=st.get("observation"),
                        value=float(st.get("value", 0.0) or 0.0),
                        q_value=float(st.get("q_value", 0.0) or 0.0),
                        visit_count=int(st.get("visit_count", 0) or 0))
            node.terminal = bool(node.final_answer)
            tree.nodes.append(node)
            if parent >= 0:
                tree.nodes[parent].children.append(node.index)
            k = 1
            while f"{tag}.{k}" in states:
                queue.append((f"{tag}.{k}", node.index, depth + 1))
                k += 1
        return tree


def save_trees(trees: Iterable[SearchTree], path: str, *, append: bool = True) -> None:
    """Write trees as JSONL (one line each), flushing after every line."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for t in trees:
            f.write(json.dumps(t.to_record(), ensure_ascii=False) + "\n")
            f.flush()


def load_trees(path: str) -> list[SearchTree]:
    """Read a JSONL tree dump written by `save_trees` (or by the reference's main.py)."""
    trees = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e}); "
                                 "a partly written last line can be deleted and the run resumed") from e
            trees.append(SearchTree.from_record(rec, where=f"{path}:{lineno}"))
    return trees

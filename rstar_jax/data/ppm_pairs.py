"""Search trees -> PPM preference pairs, as the reference builds them (rstar_reference.md
§4.3, §9.6), plus the paper's final-answer trajectory pairs behind a switch.

Step pairs (reference extra_rm_file.py, then train/sample_rm_data.py):

1. A tree with no valid-answer leaf gives no pairs.
2. Leaves are labelled from their Q alone (no re-grading): a valid answer with
   Q == 1 is *correct*, one with Q == -1 is *wrong*; a code-error leaf is never wrong
   (and counts as correct only if its Q is exactly 1, which the search never writes).
   Every node counts the correct and wrong leaves below it.
3. Breadth first from the root, at each node: positives are children with a correct
   leaf below, highest Q first; negatives are children with a wrong leaf below, lowest
   Q first (stable sorts). Take 2 of each; with a single positive take up to 4
   negatives, with a single negative up to 4 positives. A node lacking either gives no
   pairs and is not descended from.
4. Each positive x negative pair is kept when Q(pos) - Q(neg) > 0 and the mean Q along
   the best continuation of pos (greedily the highest-Q child with a correct leaf
   below) beats the mean Q along the worst continuation of neg (lowest-Q child with a
   wrong leaf below).
5. The search moves on to every child with both a correct and a wrong leaf below
   (`mode="all"`), or only to the most visited such child (`mode="vis_count"`).
6. Finally pairs with step margin < 0.5 or a character edit distance between the two
   step texts < 20 are dropped.

`pos_count` / `neg_count` are the numbers of positives / negatives taken at the node,
not the number of pairs kept (they weight the loss, §4.5).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

from rstar_jax.data.rstar_trees import (TreeNode, TreeRecord, is_code_error_leaf,
                                        is_valid_answer_leaf, iter_nodes,
                                        root_to_leaf_paths, write_json_atomic,
                                        write_jsonl_atomic)
from rstar_jax.step_format import PROMPT_TEMPLATE, USER, build_prompt

BFS_MODES = ("all", "vis_count")


@dataclasses.dataclass(frozen=True)
class PairRules:
    """Numbers of the pair rules; defaults are the reference's (see configs/data.py)."""

    pairs_per_side: int = 2          # extra_rm_file.py: top 2 positives x top 2 negatives
    fallback_per_side: int = 4       # ... up to 4 on one side when the other has only 1
    min_step_margin: float = 0.5     # sample_rm_data.py
    min_edit_distance: int = 20      # sample_rm_data.py, characters
    mode: str = "all"                # extra_rm_file.py --mode default
    final_step_pairs: bool = False   # paper §3.3 trajectory pairs; absent from the code

    def __post_init__(self):
        # Named after the config keys (configs/data.py, `ppm` block) they come from.
        if self.pairs_per_side < 1:
            raise ValueError(f"config.ppm.pairs_per_side must be >= 1, got {self.pairs_per_side}")
        if self.fallback_per_side < self.pairs_per_side:
            raise ValueError("config.ppm.fallback_per_side must be >= pairs_per_side, got "
                             f"{self.fallback_per_side} < {self.pairs_per_side}")
        if self.min_edit_distance < 0:
            raise ValueError(f"config.ppm.min_edit_distance must be >= 0, "
                             f"got {self.min_edit_distance}")
        if self.mode not in BFS_MODES:
            raise ValueError(f"config.ppm.mode must be one of {BFS_MODES}, got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    """One preference pair.

    `prefix_steps` is the text of the steps shared by both sides (empty for a
    final-answer trajectory pair); the model input is the question prompt +
    `prefix_steps` + `pos` (or `neg`). `pos_steps` / `neg_steps` are the greedy
    continuations used by the reference's continuation rule (provenance only).
    """

    question: str
    prefix_steps: str
    pos: str
    neg: str
    step_margin: float
    steps_margin: float
    pos_count: int
    neg_count: int
    kind: str = "step"               # "step" or "final"
    pos_steps: str = ""
    neg_steps: str = ""


# ---------------------------------------------------------------------------- labels

def leaf_outcomes(root: TreeNode) -> dict[str, tuple[int, int]]:
    """tag -> (correct leaves below, wrong leaves below), the node itself included.

    Labels come from Q exactly (§9.6): a PPM-valued answer leaf (Q strictly between
    -1 and 1) is neither correct nor wrong.
    """
    counts: dict[str, tuple[int, int]] = {}

    def visit(node: TreeNode) -> tuple[int, int]:
        correct = wrong = 0
        if is_valid_answer_leaf(node) or is_code_error_leaf(node):
            if node.q_value == 1:
                correct = 1
            elif node.q_value == -1 and not is_code_error_leaf(node):
                # A code error says nothing about the reasoning being wrong, so the
                # reference never uses it as a negative.
                wrong = 1
        for child in node.children:
            c, w = visit(child)
            correct += c
            wrong += w
        counts[node.tag] = (correct, wrong)
        return correct, wrong

    visit(root)
    return counts


def _continuation(node: TreeNode, counts: dict[str, tuple[int, int]],
                  best: bool) -> tuple[str, float]:
    """Greedy path from `node` down through correct (best) or wrong (worst) descendants:
    (concatenated texts, mean Q over the path's nodes)."""
    side = 0 if best else 1
    path = [node]
    while True:
        options = [c for c in path[-1].children if counts[c.tag][side] > 0]
        if not options:
            break
        path.append(sorted(options, key=lambda c: c.q_value, reverse=best)[0])
    return "".join(n.text for n in path), sum(n.q_value for n in path) / len(path)


# ------------------------------------------------------------------------ step pairs

def _take_sides(pos_all: list, neg_all: list, rules: PairRules) -> tuple[list, list]:
    """Positives and negatives to pair from ranked candidates: the first 2 of each, or
    up to 4 of one side when the other has a single candidate (extra_rm_file.py)."""
    pos, neg = pos_all[:rules.pairs_per_side], neg_all[:rules.pairs_per_side]
    # Order matters: the negative side is widened first, judged on the cut positives,
    # then the positive side, judged on the (possibly widened) negatives.
    if len(pos) == 1:
        neg = neg_all[:rules.fallback_per_side]
    if len(neg) == 1:
        pos = pos_all[:rules.fallback_per_side]
    return pos, neg


def _node_pairs(node: TreeNode, prefix_steps: str, question: str,
                counts: dict[str, tuple[int, int]], rules: PairRules) -> list[PreferencePair]:
    """Unfiltered sibling pairs among the children of one node (rule 3-4)."""
    pos_all = sorted([c for c in node.children if counts[c.tag][0] > 0],
                     key=lambda c: c.q_value, reverse=True)
    neg_all = sorted([c for c in node.children if counts[c.tag][1] > 0],
                     key=lambda c: c.q_value)
    pos, neg = _take_sides(pos_all, neg_all, rules)
    pairs = []
    for p in pos:
        for n in neg:
            margin = p.q_value - n.q_value
            p_text, p_avg = _continuation(p, counts, best=True)
            n_text, n_avg = _continuation(n, counts, best=False)
            if margin > 0 and p_avg > n_avg:
                pairs.append(PreferencePair(
                    question=question, prefix_steps=prefix_steps, pos=p.text, neg=n.text,
                    step_margin=margin, steps_margin=p_avg - n_avg,
                    pos_count=len(pos), neg_count=len(neg), kind="step",
                    pos_steps=p_text, neg_steps=n_text))
    return pairs


def extract_step_pairs(record: TreeRecord, rules: PairRules = PairRules()) -> list[PreferencePair]:
    """All sibling pairs of one tree before the margin / edit-distance filter (rules 1-5)."""
    if not any(is_valid_answer_leaf(n) for n in iter_nodes(record.root)):
        return []
    counts = leaf_outcomes(record.root)
    pairs = []
    # Queue of (node, texts of the steps from the root's first child to the node).
    queue = [(record.root, "")]
    while queue:
        node, prefix = queue.pop(0)
        # The reference neither pairs at nor descends from a node lacking either side.
        if not _has_both_sides(node, counts):
            continue
        pairs.extend(_node_pairs(node, prefix, record.question, counts, rules))
        mixed = [c for c in node.children if counts[c.tag][0] > 0 and counts[c.tag][1] > 0]
        if rules.mode == "vis_count":
            mixed = sorted(mixed, key=lambda c: c.visit_count, reverse=True)[:1]
        queue.extend((c, prefix + c.text) for c in mixed)
    return pairs


def _has_both_sides(node: TreeNode, counts: dict[str, tuple[int, int]]) -> bool:
    """Whether some child has a correct and some child a wrong leaf below."""
    return (any(counts[c.tag][0] > 0 for c in node.children)
            and any(counts[c.tag][1] > 0 for c in node.children))


# ------------------------------------------------------------------- final-step pairs

def extract_final_step_pairs(record: TreeRecord,
                             rules: PairRules = PairRules()) -> list[PreferencePair]:
    """The paper's final-answer pairs (§3.3): whole correct vs whole wrong trajectories.

    The reference code never makes these (answer steps do not branch, §2.4), but its
    released examples hold them with a question-only prompt. Trajectories are ranked
    by (mean step Q, min step Q) like SFT traces: the best correct ones are positives,
    the worst wrong ones negatives, with the same 2 x 2 sizes and 1 -> 4 fallback as
    step pairs. Labels use the same exact-Q rule (code errors never negatives).
    """
    counts = leaf_outcomes(record.root)
    correct, wrong = [], []
    for path in root_to_leaf_paths(record.root):
        leaf, steps = path[-1], path[1:]
        if not steps or not is_valid_answer_leaf(leaf):
            continue
        is_correct, is_wrong = counts[leaf.tag]
        if is_correct:
            correct.append(steps)
        elif is_wrong:
            wrong.append(steps)

    def rank(steps):
        q = [s.q_value for s in steps]
        return sum(q) / len(q), min(q)

    pos_all = sorted(correct, key=rank, reverse=True)
    neg_all = sorted(wrong, key=rank)
    if not pos_all or not neg_all:
        return []
    pos, neg = _take_sides(pos_all, neg_all, rules)
    pairs = []
    for p in pos:
        for n in neg:
            p_avg, n_avg = rank(p)[0], rank(n)[0]
            pairs.append(PreferencePair(
                question=record.question, prefix_steps="",
                pos="".join(s.text for s in p), neg="".join(s.text for s in n),
                step_margin=p[-1].q_value - n[-1].q_value, steps_margin=p_avg - n_avg,
                pos_count=len(pos), neg_count=len(neg), kind="final"))
    return pairs


# --------------------------------------------------------------------------- filter

def levenshtein(a: str, b: str, bound: int | None = None) -> int:
    """Character edit distance (insert, delete, substitute; unit costs).

    With `bound`, returns min(distance, bound) and stops early once the distance is
    known to reach it, which keeps the filter cheap on long steps.
    """
    # A shared prefix or suffix never changes the distance.
    start = 0
    while start < len(a) and start < len(b) and a[start] == b[start]:
        start += 1
    end_a, end_b = len(a), len(b)
    while end_a > start and end_b > start and a[end_a - 1] == b[end_b - 1]:
        end_a -= 1
        end_b -= 1
    a, b = a[start:end_a], b[start:end_b]
    if len(a) < len(b):
        a, b = b, a
    # The distance never exceeds len(a), so len(a) + 1 is no cap at all.
    cap = len(a) + 1 if bound is None else max(bound, 0)
    if len(a) - len(b) >= cap:
        return cap
    # Banded DP over capped values: a cell (i, j) with |i - j| >= cap is at least
    # |i - j| >= cap, so only the diagonal band needs computing.
    prev = [min(j, cap) for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        lo, hi = max(1, i - cap + 1), min(len(b), i + cap - 1)
        cur = [cap] * (len(b) + 1)
        cur[0] = min(i, cap)
        ca = a[i - 1]
        for j in range(lo, hi + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != b[j - 1]), cap)
        # No later cell can fall below this row's minimum.
        if min(cur) >= cap:
            return cap
        prev = cur
    return prev[-1]


def keep_pair(pair: PreferencePair, rules: PairRules = PairRules()) -> bool:
    """The reference's final filter: step margin >= 0.5 and edit distance >= 20."""
    if pair.step_margin < rules.min_step_margin:
        return False
    return levenshtein(pair.neg, pair.pos, bound=rules.min_edit_distance) >= rules.min_edit_distance


def build_ppm_pairs(records: Iterable[TreeRecord],
                    rules: PairRules = PairRules()) -> list[PreferencePair]:
    """All kept pairs of all trees, in tree order (step pairs, then final-step pairs)."""
    kept = []
    for record in records:
        pairs = extract_step_pairs(record, rules)
        if rules.final_step_pairs:
            pairs = pairs + extract_final_step_pairs(record, rules)
        kept.extend(p for p in pairs if keep_pair(p, rules))
    return kept


# --------------------------------------------------------------------------- output

def to_rows(pairs: Sequence[PreferencePair], *, reference_newlines: bool = False) -> list[dict]:
    """Our rows: `{"question", "prompt", "pos", "neg", "pos_count", "neg_count", ...}`.

    `prompt` is `build_prompt(question)` + the shared steps (one newline before
    <|assistant|>, as in the reference's PPM prefixes and in our search);
    `reference_newlines=True` uses the reference's search-time two-newline prompt.
    """
    return [{"question": p.question,
             "prompt": build_prompt(p.question, reference_newlines=reference_newlines)
             + p.prefix_steps,
             "pos": p.pos, "neg": p.neg, "pos_count": p.pos_count, "neg_count": p.neg_count,
             "step_margin": p.step_margin, "steps_margin": p.steps_margin, "kind": p.kind}
            for p in pairs]


def to_reference_ppm(pairs: Sequence[PreferencePair]) -> list[dict]:
    """The reference's PPM records `{prompt, neg, pos, neg_count, pos_count}` (§4.3).

    Step pairs: prompt = reference prefix (question not stripped, one newline) + shared
    steps. Final-step pairs follow the reference's released whole-trajectory examples:
    prompt = "<|user|>:\\n" + question and both sides start with "\\n<|assistant|>: ...".
    """
    out = []
    for p in pairs:
        if p.kind == "final":
            split = len(USER) + 2 + len(p.question)  # "<|user|>:\n" + question
            full_prompt = PROMPT_TEMPLATE.format(question=p.question)
            prompt, preamble = full_prompt[:split], full_prompt[split:]
            neg, pos = preamble + p.neg, preamble + p.pos
        else:
            prompt = PROMPT_TEMPLATE.format(question=p.question) + p.prefix_steps
            neg, pos = p.neg, p.pos
        out.append({"prompt": prompt, "neg": neg, "pos": pos,
                    "neg_count": p.neg_count, "pos_count": p.pos_count})
    return out


def write_reference_ppm_json(pairs: Sequence[PreferencePair], path: str | os.PathLike) -> None:
    """Write the reference's PPM training file (JSON list, indent 4), atomically."""
    write_json_atomic(to_reference_ppm(pairs), path)


def write_ppm_jsonl(pairs: Sequence[PreferencePair], path: str | os.PathLike, *,
                    reference_newlines: bool = False) -> None:
    """Write our rows as JSONL, atomically."""
    write_jsonl_atomic(to_rows(pairs, reference_newlines=reference_newlines), path)


def rules_from_config(config) -> PairRules:
    """PairRules from the `ppm` block of configs/data.py."""
    return PairRules(pairs_per_side=config.pairs_per_side,
                     fallback_per_side=config.fallback_per_side,
                     min_step_margin=config.min_step_margin,
                     min_edit_distance=config.min_edit_distance,
                     mode=config.mode, final_step_pairs=config.final_step_pairs)

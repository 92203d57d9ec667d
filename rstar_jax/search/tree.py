"""Search trees of a batch of problems as padded arrays, with jitted select/expand/backup.

B problems, N node slots per tree, K child slots per node. Slot 0 is the root; the
children of a node occupy consecutive fresh slots in creation order, so slot order is
creation order. Only numbers live here: step texts, code results and answers stay on
the host, indexed by the same slot numbers (`rstar_jax.search.host_tree`).

The rules are the reference's (rstar_reference.md §2):
* selection is UCT `Q + c * sqrt(ln N_parent / N_child)` with c = 2, an unvisited child
  scores exactly 0 (no `+inf` bonus; a switch allows `+inf`), terminal children are
  skipped, ties go to the first child (§2.3);
* `update(v)` adds one visit and `v` to the value sum and, on a node's first update,
  records `v` as the node's `value` (§2.6); a recursive update does that on the node
  and every ancestor up to the root, so Q is the running mean of all backed-up values;
* a node whose children are all terminal becomes terminal when selection reaches it.

Every function below is written for ONE tree and batched with `jax.vmap`; the jitted
entry points (`select_step`, `level_update`) donate the tree so updates happen in place.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp

ROOT_INDEX = 0
NO_PARENT = -1  # parent of the root and of free slots
NO_CHILD = -1   # empty child slot; also "no node" in selection results

# How a value reaches the tree (per new child, `level_update`'s `modes`).
NO_UPDATE = 0   # nothing backed up (e.g. round 1 intermediate nodes, §2.7)
LOCAL = 1       # `update(v)` on the node only: PPM init (§2.7), invalid terminals (§2.5)
RECURSIVE = 2   # `update_recursive(v, root)`: graded or PPM-scored answers (§2.5, §2.7)


@flax.struct.dataclass
class Tree:
    """B search trees of N node slots with K child slots per node.

    Attributes:
      visits: [B, N] int32, visit count (number of values backed up through the node).
      value_sum: [B, N] float32, sum of backed-up values; Q = value_sum / visits.
      value: [B, N] float32, the first value ever backed up (the reference's
        `node.value`: the PPM score for PPM-initialised nodes), 0 until then.
      parent: [B, N] int32, parent slot; NO_PARENT at the root and in free slots.
      depth: [B, N] int32, steps from the root (root = 0).
      terminal: [B, N] bool, no further expansion or selection through this node.
      children: [B, N, K] int32, child slots in creation order, NO_CHILD where empty.
      num_nodes: [B] int32, slots in use (the next free slot).
    """

    visits: jax.Array
    value_sum: jax.Array
    value: jax.Array
    parent: jax.Array
    depth: jax.Array
    terminal: jax.Array
    children: jax.Array
    num_nodes: jax.Array

    @property
    def batch_size(self) -> int:
        return self.visits.shape[0]

    @property
    def num_slots(self) -> int:
        # shape[-1] so the same property works inside vmap (one tree, no batch axis).
        return self.visits.shape[-1]

    @property
    def num_child_slots(self) -> int:
        return self.children.shape[-1]

    def q_values(self) -> jax.Array:
        """Q of every node, [B, N] float32; 0 where unvisited (as the reference's `q_value()`)."""
        return jnp.where(self.visits > 0, self.value_sum / jnp.maximum(self.visits, 1), 0.0)


def init_tree(batch_size: int, num_slots: int, num_child_slots: int) -> Tree:
    """B empty trees holding only a root (unvisited, non-terminal)."""
    if batch_size < 1 or num_slots < 2 or num_child_slots < 1:
        raise ValueError(
            f"init_tree needs batch_size >= 1, num_slots >= 2, num_child_slots >= 1; got "
            f"{batch_size}, {num_slots}, {num_child_slots}")
    b, n, k = batch_size, num_slots, num_child_slots
    return Tree(
        visits=jnp.zeros((b, n), jnp.int32),
        value_sum=jnp.zeros((b, n), jnp.float32),
        value=jnp.zeros((b, n), jnp.float32),
        parent=jnp.full((b, n), NO_PARENT, jnp.int32),
        depth=jnp.zeros((b, n), jnp.int32),
        terminal=jnp.zeros((b, n), bool),
        children=jnp.full((b, n, k), NO_CHILD, jnp.int32),
        num_nodes=jnp.ones((b,), jnp.int32),
    )


def grow(tree: Tree, num_slots: int) -> Tree:
    """The same trees re-allocated with `num_slots` node slots (never truncates).

    Used by the driver when the next expansion would not fit; the new size is a new
    shape, so the jitted functions compile once more for it.
    """
    old = tree.num_slots
    if num_slots < old:
        raise ValueError(f"grow() cannot shrink trees: {old} slots in use, asked for {num_slots}")
    pad = num_slots - old
    if pad == 0:
        return tree
    p2 = ((0, 0), (0, pad))
    return Tree(
        visits=jnp.pad(tree.visits, p2),
        value_sum=jnp.pad(tree.value_sum, p2),
        value=jnp.pad(tree.value, p2),
        parent=jnp.pad(tree.parent, p2, constant_values=NO_PARENT),
        depth=jnp.pad(tree.depth, p2),
        terminal=jnp.pad(tree.terminal, p2),
        children=jnp.pad(tree.children, p2 + ((0, 0),), constant_values=NO_CHILD),
        num_nodes=tree.num_nodes,
    )


# ----------------------------------------------------------------------------------
# One-tree functions (no batch axis); `_one(tree)` strips nothing, the caller vmaps.


def uct_scores(tree: Tree, node: jax.Array, c_puct: float, unvisited_inf: bool) -> jax.Array:
    """UCT score of each child slot of `node` in one tree: [K] float32.

    Empty and terminal child slots score -inf so they are never chosen (§2.3).
    """
    kids = tree.children[node]                       # [K]
    valid = kids != NO_CHILD
    safe = jnp.where(valid, kids, 0)
    n_child = tree.visits[safe].astype(jnp.float32)
    n_parent = tree.visits[node].astype(jnp.float32)
    q = jnp.where(n_child > 0, tree.value_sum[safe] / jnp.maximum(n_child, 1.0), 0.0)
    # The reference gives no exploration bonus when either count is 0 (§2.3); ln(1) = 0
    # also makes it 0 for a parent visited once.
    explore = (n_child > 0) & (n_parent > 0)
    u = jnp.where(explore, c_puct * jnp.sqrt(jnp.log(jnp.maximum(n_parent, 1.0))
                                             / jnp.maximum(n_child, 1.0)), 0.0)
    score = q + u
    if unvisited_inf:
        score = jnp.where(n_child > 0, score, jnp.inf)
    return jnp.where(valid & ~tree.terminal[safe], score, -jnp.inf)


def _select_one(tree: Tree, node: jax.Array, active: jax.Array, c_puct: float,
                unvisited_inf: bool) -> tuple[Tree, jax.Array]:
    """The reference's `selection()` from `node` in one tree (§2.2, §2.3).

    A node that has children (or is terminal) moves to its best non-terminal child; if
    there is none, the node becomes terminal and the result is NO_CHILD. A node without
    children stays where it is (it is expanded next). Inactive rows are untouched.
    Returns (tree, selected node or NO_CHILD).
    """
    safe = jnp.where(node >= 0, node, 0)
    active = active & (node >= 0)
    has_children = tree.children[safe, 0] != NO_CHILD
    moves = has_children | tree.terminal[safe]
    scores = uct_scores(tree, safe, c_puct, unvisited_inf)
    best = jnp.argmax(scores)                        # first maximum: ties go to the first child
    found = scores[best] > -jnp.inf
    child = tree.children[safe, best]
    nxt = jnp.where(moves, jnp.where(found, child, NO_CHILD), safe)
    # A node that stays must itself be selectable (the reference returns None for a
    # terminal node).
    nxt = jnp.where(moves | ~tree.terminal[safe], nxt, NO_CHILD)
    exhausted = active & moves & ~found
    terminal = tree.terminal.at[safe].set(tree.terminal[safe] | exhausted)
    return tree.replace(terminal=terminal), jnp.where(active, nxt, NO_CHILD)


def _expand_one(tree: Tree, parent: jax.Array, num_new: jax.Array,
                child_terminal: jax.Array) -> Tree:
    """Append `num_new` children under `parent` in one tree (no-op when num_new == 0).

    child_terminal: [K] bool, terminal flag of each new child in creation order.
    The caller guarantees num_nodes + num_new <= N (the driver grows trees first); the
    scatter drops writes past N rather than wrapping, as a second guard.
    """
    k = tree.num_child_slots
    n = tree.num_slots
    offs = jnp.arange(k, dtype=jnp.int32)
    used = offs < num_new
    slots = tree.num_nodes + offs
    dst = jnp.where(used, slots, n)                  # index n is out of range -> dropped
    safe_parent = jnp.where(num_new > 0, parent, 0)
    row = jnp.where(used, slots, NO_CHILD)
    children = tree.children.at[safe_parent].set(
        jnp.where(num_new > 0, row, tree.children[safe_parent]))
    return tree.replace(
        parent=tree.parent.at[dst].set(safe_parent, mode="drop"),
        depth=tree.depth.at[dst].set(tree.depth[safe_parent] + 1, mode="drop"),
        terminal=tree.terminal.at[dst].set(child_terminal, mode="drop"),
        children=children,
        num_nodes=tree.num_nodes + jnp.maximum(num_new, 0),
    )


def _update_nodes(tree: Tree, nodes: jax.Array, counts: jax.Array, sums: jax.Array,
                  firsts: jax.Array) -> Tree:
    """Apply `counts[i]` updates totalling `sums[i]` to `nodes[i]` (dropped where nodes == N).

    `firsts[i]` is the first of those values: it becomes the node's `value` if the node
    had no visit before (the reference's `inited` flag, §2.6).
    """
    n = tree.num_slots
    safe = jnp.where(nodes < n, nodes, 0)
    fresh = (tree.visits[safe] == 0) & (counts > 0)
    value = tree.value.at[nodes].set(jnp.where(fresh, firsts, tree.value[safe]), mode="drop")
    return tree.replace(
        visits=tree.visits.at[nodes].add(counts, mode="drop"),
        value_sum=tree.value_sum.at[nodes].add(sums, mode="drop"),
        value=value,
    )


def _ancestors(tree: Tree, node: jax.Array, max_path: int) -> tuple[jax.Array, jax.Array]:
    """Slots from `node` up to the root in one tree: ([max_path] int32, overflow bool).

    Unused entries hold N (dropped by scatters). A fixed trip count keeps the vmapped
    loop cheap: a data-dependent while_loop under vmap would re-select its whole carry
    every iteration. `overflow` is True when the path is longer than `max_path`.
    """
    n = tree.num_slots

    def body(i, carry):
        cur, path = carry
        path = path.at[i].set(jnp.where(cur >= 0, cur, n))
        return jnp.where(cur >= 0, tree.parent[jnp.maximum(cur, 0)], NO_PARENT), path

    last, path = jax.lax.fori_loop(0, max_path, body,
                                   (node, jnp.full((max_path,), n, jnp.int32)))
    return path, last != NO_PARENT


def _backup_one(tree: Tree, parent: jax.Array, slots: jax.Array, values: jax.Array,
                modes: jax.Array, make_terminal: jax.Array,
                max_path: int) -> tuple[Tree, jax.Array]:
    """Back up the values of the new children `slots` ([K]) of `parent` in one tree.

    LOCAL children get `update(v)`; RECURSIVE children get `update(v)` and so does every
    ancestor from `parent` up to the root, in slot order (which fixes which value is an
    ancestor's first). `make_terminal` ([K] bool) marks children terminal (a PPM that
    returned no score, §2.7). Slots < 0 are ignored. Returns (tree, path overflow).
    """
    n = tree.num_slots
    real = slots >= 0
    counted = real & (modes != NO_UPDATE)
    dst = jnp.where(counted, slots, n)
    tree = _update_nodes(tree, dst, counted.astype(jnp.int32), jnp.where(counted, values, 0.0),
                         values)
    term_dst = jnp.where(real & make_terminal, slots, n)
    tree = tree.replace(terminal=tree.terminal.at[term_dst].set(True, mode="drop"))

    rec = real & (modes == RECURSIVE)
    count = jnp.sum(rec.astype(jnp.int32))
    total = jnp.sum(jnp.where(rec, values, 0.0))
    first = values[jnp.argmax(rec.astype(jnp.int32))]   # first recursive value in slot order
    path, overflow = _ancestors(tree, jnp.where(count > 0, parent, NO_PARENT), max_path)
    ones = jnp.ones_like(path)
    tree = _update_nodes(tree, path, ones * count, ones * total, ones * first)
    return tree, overflow


def _level_one(tree: Tree, current: jax.Array, active: jax.Array, num_new: jax.Array,
               child_terminal: jax.Array, values: jax.Array, modes: jax.Array,
               make_terminal: jax.Array, c_puct: float, unvisited_inf: bool, max_path: int):
    """One tree level for one tree: expand `current`, back up values, select the next node.

    This is one pass of the reference's generate_postprocess + value_postprocess for one
    agent (§2.2). When num_new == 0 the node was already expanded (or its proposals
    were all dropped) and only the selection step happens.
    """
    start = tree.num_nodes
    tree = _expand_one(tree, current, num_new, child_terminal)
    offs = jnp.arange(tree.num_child_slots, dtype=jnp.int32)
    slots = jnp.where(offs < num_new, start + offs, -1)
    tree, overflow = _backup_one(tree, current, slots, values, modes, make_terminal, max_path)
    tree, nxt = _select_one(tree, current, active, c_puct, unvisited_inf)
    return tree, nxt, overflow


@functools.partial(jax.jit, static_argnames=("c_puct", "unvisited_inf"), donate_argnums=0)
def select_step(tree: Tree, nodes: jax.Array, active: jax.Array, *, c_puct: float = 2.0,
                unvisited_inf: bool = False) -> tuple[Tree, jax.Array]:
    """One selection step in every tree (the reference's `selection()`), batched.

    Args:
      tree: B trees (donated).
      nodes: [B] int32 start node per tree (ROOT_INDEX at the start of a rollout).
      active: [B] bool, rows to touch; inactive rows return NO_CHILD.
    Returns:
      (tree, [B] int32 selected node, NO_CHILD where the tree has nothing to expand).
    """
    _check_rows(tree, nodes=nodes, active=active)
    fn = jax.vmap(functools.partial(_select_one, c_puct=c_puct, unvisited_inf=unvisited_inf))
    return fn(tree, nodes, active)


@functools.partial(jax.jit, static_argnames=("c_puct", "unvisited_inf", "max_path"),
                   donate_argnums=0)
def level_update(tree: Tree, current: jax.Array, active: jax.Array, num_new: jax.Array,
                 child_terminal: jax.Array, values: jax.Array, modes: jax.Array,
                 make_terminal: jax.Array, *, c_puct: float = 2.0, unvisited_inf: bool = False,
                 max_path: int = 32) -> tuple[Tree, jax.Array, jax.Array]:
    """One tree level in every tree: add children, back up values, select the next node.

    Args:
      tree: B trees (donated).
      current: [B] int32 node being expanded (or just descended through) per tree.
      active: [B] bool, rows taking part in this level.
      num_new: [B] int32 children added under `current` (0 for already-expanded nodes).
      child_terminal: [B, K] bool terminal flag of each new child.
      values: [B, K] float32 value of each new child.
      modes: [B, K] int32, NO_UPDATE / LOCAL / RECURSIVE per new child.
      make_terminal: [B, K] bool, mark the new child terminal after its update.
      max_path: static bound on root-to-`current` path length (nodes); the MCTS driver
        passes max_depth + 2, as no node is deeper than max_depth + 1 (§2.5).
    Returns:
      (tree, [B] int32 next node per tree (NO_CHILD where the rollout stops),
       [B] bool overflow: a recursive backup met a path longer than max_path; the
       caller must raise, the backup above max_path nodes was not applied).
    """
    _check_rows(tree, nodes=current, active=active, num_new=num_new)
    k = tree.num_child_slots
    for name, arr in (("child_terminal", child_terminal), ("values", values), ("modes", modes),
                      ("make_terminal", make_terminal)):
        if arr.shape != (tree.batch_size, k):
            raise ValueError(f"level_update: {name} must have shape {(tree.batch_size, k)} "
                             f"(B, K), got {arr.shape}")
    fn = jax.vmap(functools.partial(_level_one, c_puct=c_puct, unvisited_inf=unvisited_inf,
                                    max_path=max_path))
    return fn(tree, current, active, num_new, child_terminal, values, modes, make_terminal)


def _check_rows(tree: Tree, **rows: jax.Array) -> None:
    for name, arr in rows.items():
        if arr.shape != (tree.batch_size,):
            raise ValueError(f"{name} must have shape ({tree.batch_size},) (one entry per tree), "
                             f"got {arr.shape}")

"""Device side of training: pure losses, the accumulating train step, and its jit on a mesh.

The train state is a plain pytree `{"step": int32[], "params": <model params>,
"opt_state": <optax state>}` so Orbax saves and restores it as is. Params are the fp32
master weights; with `compute_dtype=bfloat16` a bf16 copy is made inside the loss, so
gradients and the optimizer stay fp32 (the reference trains with HF `--bf16`, §4.4).

A global batch is `[A, M, ...]`: the step scans over the A micro-batches, sums the
gradients of each micro-batch's *summed* loss, and divides once by the global
denominator (response tokens for SFT; pairs or reference groups for the PPM), so the
result does not depend on how the batch is split into micro-batches or devices.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rstar_jax.models import qwen2
from rstar_jax.models.config import Qwen2Config, resolve_dtype
from rstar_jax.models.sharding import activation_constraint, logical_to_spec, param_shardings

# loss_fn(params, micro_batch, rng) -> (summed loss, aux dict of additive scalars incl.
# "denominator")
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


def cast_floats(tree, dtype):
    """Floating leaves of `tree` cast to `dtype` (the bf16 compute copy of fp32 masters)."""
    dtype = resolve_dtype(dtype)
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)


# ---------------------------------------------------------------------------- losses

def sft_loss(params: dict, micro: dict, rng: jax.Array, *, cfg: Qwen2Config,
             compute_dtype="float32", remat: bool | str = False,
             constrain=qwen2._no_constraint, attention_impl: str = "xla") -> tuple[jax.Array, dict]:
    """Summed next-token NLL over response tokens of one micro-batch.

    micro: input_ids, attention_mask, loss_mask, each [M, T] int32 (data.sft_batch).
    Returns (sum of NLL, {"denominator": trained tokens, "tokens": real tokens}).
    """
    del rng
    logits = qwen2.forward_logits(cast_floats(params, compute_dtype), cfg, micro["input_ids"],
                                  micro["attention_mask"], remat=remat, constrain=constrain,
                                  attention_impl=attention_impl)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                          micro["input_ids"][:, 1:])
    weight = micro["loss_mask"][:, :-1].astype(jnp.float32)
    return jnp.sum(nll * weight), {"denominator": jnp.sum(weight),
                                   "tokens": jnp.sum(micro["attention_mask"]).astype(jnp.float32)}


def ppm_values(params: dict, ids: jax.Array, mask: jax.Array, rng: jax.Array | None, *,
               cfg: Qwen2Config, dropout: float = 0.0, remat: bool | str = False,
               constrain=qwen2._no_constraint, attention_impl: str = "xla") -> jax.Array:
    """Raw PPM value at each row's last real token: ids, mask [N, T] -> [N] float32.

    The reference's value head is Dropout(0.1) -> Linear on the last hidden state
    (train/rm.py, §4.5); dropout is active when `rng` is given and dropout > 0.
    """
    h = qwen2.forward_hidden(params["backbone"], cfg, ids, mask, remat=remat,
                             constrain=constrain, attention_impl=attention_impl)
    last = qwen2.last_token_index(mask)
    h = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]          # [N, D]
    if rng is not None and dropout > 0:
        keep = jax.random.bernoulli(rng, 1.0 - dropout, h.shape)
        h = jnp.where(keep, h / (1.0 - dropout), 0).astype(h.dtype)
    return qwen2.value_of_hidden(params["v_head"], h)


def ppm_loss(params: dict, micro: dict, rng: jax.Array | None, *, cfg: Qwen2Config,
             compute_dtype="float32", dropout: float = 0.0, reduction: str = "sum",
             sum_group_size: int = 16, remat: bool | str = False,
             constrain=qwen2._no_constraint, attention_impl: str = "xla") -> tuple[jax.Array, dict]:
    """Weighted Bradley-Terry loss of one micro-batch of pairs (train/rm.py, §4.5).

    micro: pos_ids, pos_mask, neg_ids, neg_mask [M, T]; weight, valid [M].
    Per pair: -log sigmoid(r_pos - r_neg) * weight. The step divides the summed loss by
    the summed "denominator": with reduction "sum" that is one per `sum_group_size`
    pairs, which reproduces the reference's per-device sum averaged over devices and
    accumulation steps; with "mean" it is the number of real pairs.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"ppm loss_reduction must be 'sum' or 'mean', got {reduction!r}")
    m = micro["weight"].shape[0]
    p = cast_floats(params, compute_dtype)
    # One forward over pos and neg rows together: [2M, T].
    ids = jnp.concatenate([micro["pos_ids"], micro["neg_ids"]], axis=0)
    mask = jnp.concatenate([micro["pos_mask"], micro["neg_mask"]], axis=0)
    v = ppm_values(p, ids, mask, rng, cfg=cfg, dropout=dropout, remat=remat,
                   constrain=constrain, attention_impl=attention_impl)
    r_pos, r_neg = v[:m], v[m:]
    valid = micro["valid"]
    loss = -jax.nn.log_sigmoid(r_pos - r_neg) * micro["weight"]
    denom = (jnp.float32(m / sum_group_size) if reduction == "sum" else jnp.sum(valid))
    return jnp.sum(loss), {"denominator": denom, "pairs": jnp.sum(valid),
                           "correct": jnp.sum((r_pos > r_neg) * valid),
                           "tokens": jnp.sum(mask).astype(jnp.float32)}


# ------------------------------------------------------------------------ train step

def init_state(params: dict, optimizer: optax.GradientTransformation) -> dict:
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": optimizer.init(params)}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    seed: int = 0, grad_shardings=None):
    """`step(state, batch) -> (state, metrics)` for a global batch of [A, M, ...] arrays.

    The per-step RNG (PPM dropout) is fold_in(seed, step), so a resumed run draws the
    same masks as an uninterrupted one. `grad_shardings` pins the gradient accumulator
    to the parameter layout (FSDP: each device only holds its shard of the sum).
    """
    def step(state: dict, batch: dict):
        params = state["params"]
        key = jax.random.fold_in(jax.random.key(seed), state["step"])
        n_micro = jax.tree.leaves(batch)[0].shape[0]
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def micro_step(carry, xs):
            grads, sums = carry
            micro, i = xs
            (num, aux), g = grad_fn(params, micro, jax.random.fold_in(key, i))
            sums = jax.tree.map(jnp.add, sums, {**aux, "numerator": num})
            return (jax.tree.map(jnp.add, grads, g), sums), None

        zero_grads = jax.tree.map(jnp.zeros_like, params)
        if grad_shardings is not None:
            zero_grads = jax.lax.with_sharding_constraint(zero_grads, grad_shardings)
        first = jax.tree.map(lambda x: x[0], batch)
        aux_shape = jax.eval_shape(loss_fn, params, first, key)[1]
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in [*aux_shape, "numerator"]}
        (grads, sums), _ = jax.lax.scan(micro_step, (zero_grads, zero_sums),
                                        (batch, jnp.arange(n_micro)))
        denom = jnp.maximum(sums["denominator"], 1e-6)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                     "opt_state": opt_state}
        metrics = {**sums, "loss": sums["numerator"] / denom,
                   "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    return step


# --------------------------------------------------------------------- mesh and jit

def state_shardings(abstract_state: dict, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules: Mapping | None = None) -> dict:
    """NamedShardings of the train state: params by the logical-axis rules, every
    parameter-shaped optimizer buffer (Adam moments) like its parameter, the rest
    replicated."""
    replicated = NamedSharding(mesh, P())
    p_sh = param_shardings(abstract_state["params"], mesh, rules)
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state["opt_state"], p_sh,
                                   transform_non_params=lambda _: replicated)
    return {"step": replicated, "params": p_sh, "opt_state": opt_sh}


def batch_shardings(batch: Mapping, mesh: Mesh, rules: Mapping | None = None) -> dict:
    """[A, M, ...] batch arrays: micro-batch rows M over the (data, fsdp) axes."""
    def one(x):
        logical = (None, "batch") + (None,) * (x.ndim - 2)
        return NamedSharding(mesh, logical_to_spec(logical, x.shape, mesh, rules))
    return {k: one(v) for k, v in batch.items()}


def jit_train_step(loss_fn_factory: Callable[..., LossFn], optimizer, abstract_state: dict,
                   example_batch: Mapping, mesh: Mesh, *, seed: int = 0,
                   rules: Mapping | None = None):
    """The train step jitted on `mesh` with explicit in/out shardings; state is donated.

    `loss_fn_factory(constrain)` returns the loss with activation sharding constraints
    for this mesh. Returns (jitted step, state shardings, batch shardings).
    """
    st_sh = state_shardings(abstract_state, optimizer, mesh, rules)
    b_sh = batch_shardings(example_batch, mesh, rules)
    step = make_train_step(loss_fn_factory(activation_constraint(mesh, rules)), optimizer,
                           seed=seed, grad_shardings=st_sh["params"])
    # CPU cannot reuse donated buffers (it only warns); donate on accelerators.
    donate = (0,) if jax.default_backend() != "cpu" else ()
    jitted = jax.jit(step, in_shardings=(st_sh, b_sh),
                     out_shardings=(st_sh, NamedSharding(mesh, P())), donate_argnums=donate)
    return jitted, st_sh, b_sh


def jit_init_state(optimizer, abstract_params: dict, mesh: Mesh, rules: Mapping | None = None):
    """`init(params) -> state` jitted so the optimizer buffers are created sharded."""
    abstract = jax.eval_shape(lambda p: init_state(p, optimizer), abstract_params)
    st_sh = state_shardings(abstract, optimizer, mesh, rules)
    return jax.jit(lambda p: init_state(p, optimizer), in_shardings=(st_sh["params"],),
                   out_shardings=st_sh), abstract, st_sh

"""Qwen2-family decoder in Flax NNX: one trunk, an LM head (policy) and a value head (PPM).

The NNX modules define and own the parameters. The forward passes are pure functions of
a plain parameter dict (`params_of(model)`), so hot loops (decoding, training steps) are
ordinary `jax.jit` functions with explicit shardings and no graph traversal per call.

Parameter layout (L layers stacked on a leading axis so the stack is `lax.scan`ned and
compile time does not grow with depth):
    embed        [V, D]           final_norm [D]          lm_head [D, V] (untied only)
    layers/attn_norm, mlp_norm                   [L, D]
    layers/q_kernel [L, D, H, Dh]   q_bias [L, H, Dh]
    layers/k_kernel, v_kernel [L, D, G, Dh]   k_bias, v_bias [L, G, Dh]
    layers/o_kernel [L, H, Dh, D]
    layers/gate_kernel, up_kernel [L, D, F]   down_kernel [L, F, D]
PPM: {"backbone": <the above>, "v_head": {"kernel": [D, 1], "bias": [1]}}.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models import layers
from rstar_jax.models.config import Qwen2Config, resolve_dtype

PPM_SCORE_SCALE = 5.0  # reference: search-time PPM score is tanh(v / 5) (rstar_reference §2.7)

Constraint = Callable[[jax.Array, tuple], jax.Array]


def _no_constraint(x, logical_axes):
    del logical_axes
    return x


@dataclasses.dataclass(frozen=True)
class LayerParam:
    """One parameter of a decoder layer, the single description every part reads.

    axes: logical axes of one layer's tensor (the stacked "layers" axis comes first in
      the parameter dict); they name the sharding (sharding.py rules) and, through
      `axis_sizes`, the shape.
    hf_name: the transformers tensor under `model.layers.{i}.`.
    hf_in_axes: for a linear weight, how many leading axes form transformers' input
      dimension (its weight is [out, in]); 0 for vectors (norms, biases).
    """

    axes: tuple[str, ...]
    hf_name: str
    hf_in_axes: int = 0


# The decoder layer, in transformers' order.
LAYER_PARAMS: dict[str, LayerParam] = {
    "attn_norm": LayerParam(("norm",), "input_layernorm.weight"),
    "q_kernel": LayerParam(("embed", "heads", "head_dim"), "self_attn.q_proj.weight", 1),
    "q_bias": LayerParam(("heads", "head_dim"), "self_attn.q_proj.bias"),
    "k_kernel": LayerParam(("embed", "kv_heads", "head_dim"), "self_attn.k_proj.weight", 1),
    "k_bias": LayerParam(("kv_heads", "head_dim"), "self_attn.k_proj.bias"),
    "v_kernel": LayerParam(("embed", "kv_heads", "head_dim"), "self_attn.v_proj.weight", 1),
    "v_bias": LayerParam(("kv_heads", "head_dim"), "self_attn.v_proj.bias"),
    "o_kernel": LayerParam(("heads", "head_dim", "embed"), "self_attn.o_proj.weight", 2),
    "mlp_norm": LayerParam(("norm",), "post_attention_layernorm.weight"),
    "gate_kernel": LayerParam(("embed", "mlp"), "mlp.gate_proj.weight", 1),
    "up_kernel": LayerParam(("embed", "mlp"), "mlp.up_proj.weight", 1),
    "down_kernel": LayerParam(("mlp", "embed"), "mlp.down_proj.weight", 1),
}


def axis_sizes(cfg: Qwen2Config) -> dict[str, int]:
    """Size of each logical parameter axis for a model config."""
    return {"layers": cfg.num_hidden_layers, "embed": cfg.hidden_size, "norm": cfg.hidden_size,
            "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim, "mlp": cfg.intermediate_size, "vocab": cfg.vocab_size}


def layer_param_shapes(cfg: Qwen2Config) -> dict[str, tuple[int, ...]]:
    """Stacked shape [L, ...] of every layer parameter."""
    sizes = axis_sizes(cfg)
    return {name: (sizes["layers"],) + tuple(sizes[a] for a in p.axes)
            for name, p in LAYER_PARAMS.items()}


class DecoderStack(nnx.Module):
    """All decoder layers' weights, stacked on a leading layer axis."""

    def __init__(self, cfg: Qwen2Config, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        for name, shape in layer_param_shapes(cfg).items():
            if name.endswith("norm"):
                value = jnp.ones(shape, dtype)
            elif name.endswith("bias"):
                value = jnp.zeros(shape, dtype)
            else:
                value = init(rngs.params(), shape, dtype)
            setattr(self, name, nnx.Param(value))


class Qwen2ForCausalLM(nnx.Module):
    """The policy: Qwen2 trunk and LM head (tied to the embedding when the config says so)."""

    def __init__(self, cfg: Qwen2Config, *, dtype="float32", rngs: nnx.Rngs | None = None,
                 remat: bool = False):
        rngs = rngs or nnx.Rngs(0)
        dtype = resolve_dtype(dtype)
        self.cfg = cfg
        self.remat = remat
        self.embed = nnx.Param(nnx.initializers.normal(0.02)(
            rngs.params(), (cfg.vocab_size, cfg.hidden_size), dtype))
        self.layers = DecoderStack(cfg, dtype=dtype, rngs=rngs)
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), dtype))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(nnx.initializers.normal(0.02)(
                rngs.params(), (cfg.hidden_size, cfg.vocab_size), dtype))

    @property
    def dtype(self):
        return self.embed[...].dtype

    def params(self) -> dict:
        return params_of(self)

    def hidden_states(self, input_ids, attention_mask=None, positions=None):
        """[B, T] -> final-normed hidden states [B, T, D] (HF `hidden_states[-1]`)."""
        return forward_hidden(self.params(), self.cfg, input_ids, attention_mask, positions,
                              remat=self.remat)

    def logits(self, input_ids, attention_mask=None, positions=None):
        """[B, T] -> [B, T, V] float32 logits, as HF Qwen2ForCausalLM."""
        return forward_logits(self.params(), self.cfg, input_ids, attention_mask, positions,
                              remat=self.remat)

    __call__ = logits


class ValueHead(nnx.Module):
    """The PPM's linear value head on the last hidden state (reference `ValueHead`).

    The reference initialises the weight N(5e-7, 1e-6) and the bias to 1e-6 (train/rm.py).
    """

    def __init__(self, hidden_size: int, *, dtype, rngs: nnx.Rngs):
        self.kernel = nnx.Param(
            5e-7 + 1e-6 * jax.random.normal(rngs.params(), (hidden_size, 1)).astype(dtype))
        self.bias = nnx.Param(jnp.full((1,), 1e-6, dtype))


class Qwen2PPM(nnx.Module):
    """Process preference model: the policy's trunk (LM head kept, as the reference) + value head."""

    def __init__(self, cfg: Qwen2Config, *, dtype="float32", rngs: nnx.Rngs | None = None,
                 remat: bool = False, backbone: Qwen2ForCausalLM | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.cfg = cfg
        self.backbone = backbone or Qwen2ForCausalLM(cfg, dtype=dtype, rngs=rngs, remat=remat)
        self.v_head = ValueHead(cfg.hidden_size, dtype=self.backbone.dtype, rngs=rngs)

    @classmethod
    def from_policy(cls, policy: Qwen2ForCausalLM, *, seed: int = 0) -> "Qwen2PPM":
        """Each round the PPM is re-initialised from the policy (reference issue #29).

        The trunk is a copy: training the PPM (which writes its params back into the
        model) must not overwrite the round's policy.
        """
        return cls(policy.cfg, backbone=nnx.clone(policy), rngs=nnx.Rngs(seed))

    def params(self) -> dict:
        return params_of(self)

    def values(self, input_ids, attention_mask=None, positions=None):
        """Raw value at every token [B, T] float32 (the training signal)."""
        return forward_values(self.params(), self.cfg, input_ids, attention_mask, positions,
                              remat=self.backbone.remat)

    def scores(self, input_ids, attention_mask):
        """Search-time score tanh(v/5) at each row's last real token: [B] in (-1, 1)."""
        return forward_scores(self.params(), self.cfg, input_ids, attention_mask)


def params_of(model: nnx.Module) -> dict:
    """The model's parameters as a plain nested dict of arrays (see module docstring)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


REMAT_POLICIES = {
    # recompute the whole layer in the backward pass: least memory, ~8N instead of 6N FLOPs
    "full": jax.checkpoint_policies.nothing_saveable,
    # keep matmul outputs, recompute only the cheap elementwise work in between
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _remat_policy(remat: bool | str):
    if remat in (False, None, "none"):
        return None
    key = "full" if remat is True else remat
    if key not in REMAT_POLICIES:
        raise ValueError(f"remat must be a bool or one of {['none', *REMAT_POLICIES]}, got {remat!r}")
    return REMAT_POLICIES[key]


def forward_hidden(params: dict, cfg: Qwen2Config, input_ids: jax.Array,
                   attention_mask: jax.Array | None = None, positions: jax.Array | None = None,
                   *, remat: bool | str = False, constrain: Constraint = _no_constraint,
                   attention_impl: str = "xla") -> jax.Array:
    """Final-normed hidden states [B, T, D] of a full (uncached) forward pass.

    input_ids [B, T] int; attention_mask [B, T] (1 = real token, 0 = padding); positions
    [B, T] default to 0..T-1 as in HF's forward without position_ids.
    remat: False, True / "full" (recompute each layer) or "dots" (keep matmul outputs).
    attention_impl: "xla" (any mask; the exact reference path), "cudnn" (fused flash
    attention on GPU; needs right padding) or "auto" (cudnn on GPU in bf16, else xla).
    """
    b, t = input_ids.shape
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    impl = layers.resolve_attention_impl(attention_impl, params["embed"].dtype)
    if impl == "cudnn":
        lengths = None if attention_mask is None else jnp.sum(attention_mask, axis=1).astype(jnp.int32)
        attend = lambda q, k, v: layers.flash_causal_attention(q, k, v, lengths)  # noqa: E731
    else:
        mask = layers.causal_mask(attention_mask, b, t)
        attend = lambda q, k, v: layers.grouped_attention(q, k, v, mask)  # noqa: E731
    cos, sin = layers.rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    # The table is vocab-sharded for the LM head; gathering rows from it would make GSPMD
    # rebuild it implicitly ("involuntary full rematerialization"), so gather it on
    # purpose: replicated over vocab, still sharded over embed.
    table = constrain(params["embed"], ("table_vocab", "embed"))
    h = jnp.take(table, input_ids, axis=0)
    h = constrain(h, ("batch", "length", "act_embed"))
    eps = cfg.rms_norm_eps

    def layer(h, p):
        q, k, v = layers.qkv_projection(p, layers.rms_norm(h, p["attn_norm"], eps), cos, sin)
        h = h + layers.attention_output(p, attend(q, k, v))
        h = h + layers.swiglu_mlp(p, layers.rms_norm(h, p["mlp_norm"], eps))
        return constrain(h, ("batch", "length", "act_embed")), None

    policy = _remat_policy(remat)
    if policy is not None:
        layer = jax.checkpoint(layer, policy=policy)
    h, _ = jax.lax.scan(layer, h, params["layers"])
    return layers.rms_norm(h, params["final_norm"], eps)


def lm_head_kernel(params: dict, cfg: Qwen2Config) -> jax.Array:
    """[D, V]: the LM head, or the transposed embedding when tied."""
    return params["embed"].T if cfg.tie_word_embeddings else params["lm_head"]


def forward_logits(params: dict, cfg: Qwen2Config, input_ids, attention_mask=None,
                   positions=None, *, remat: bool | str = False,
                   constrain: Constraint = _no_constraint, attention_impl: str = "xla") -> jax.Array:
    """[B, T] -> [B, T, V] float32 logits."""
    h = forward_hidden(params, cfg, input_ids, attention_mask, positions, remat=remat,
                       constrain=constrain, attention_impl=attention_impl)
    logits = jnp.einsum("btd,dv->btv", h, lm_head_kernel(params, cfg))
    return constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))


def value_of_hidden(v_head: dict, h: jax.Array) -> jax.Array:
    """Raw PPM value of hidden states [..., D] -> [...] float32."""
    return (h @ v_head["kernel"] + v_head["bias"])[..., 0].astype(jnp.float32)


def forward_values(params: dict, cfg: Qwen2Config, input_ids, attention_mask=None,
                   positions=None, *, remat: bool | str = False,
                   constrain: Constraint = _no_constraint, attention_impl: str = "xla") -> jax.Array:
    """PPM raw values at every token: [B, T] float32 (the reference computes all, reads last)."""
    h = forward_hidden(params["backbone"], cfg, input_ids, attention_mask, positions,
                       remat=remat, constrain=constrain, attention_impl=attention_impl)
    return value_of_hidden(params["v_head"], h)


def last_token_index(attention_mask: jax.Array) -> jax.Array:
    """Index of each row's last real token [B], for left or right padding."""
    t = attention_mask.shape[1]
    return t - 1 - jnp.argmax(attention_mask[:, ::-1].astype(bool), axis=1)


def forward_scores(params: dict, cfg: Qwen2Config, input_ids, attention_mask) -> jax.Array:
    """Search-time PPM score tanh(v / 5) at each row's last real token: [B]."""
    values = forward_values(params, cfg, input_ids, attention_mask)
    last = jnp.take_along_axis(values, last_token_index(attention_mask)[:, None], axis=1)[:, 0]
    return jnp.tanh(last / PPM_SCORE_SCALE)

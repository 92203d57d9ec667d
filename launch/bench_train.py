"""Throughput and model FLOPs utilisation of one SFT train step, random weights.

Usage:
  python launch/bench_train.py --preset qwen2.5-math-1.5b --seq_len 2048 --micro_batch 4 \
      [--accum 1] [--steps 5] [--remat] [--fsdp -1] [--peak_flops 989e12]

Prints one JSON object. Model FLOPs per trained token follow the PaLM convention:
6 * N (N = matmul parameters: every decoder-layer weight plus the LM head; the embedding
lookup is no matmul) + 12 * layers * heads * head_dim * seq_len for attention (no causal
halving), so remat's recomputation is not counted. MFU = model FLOPs per second per device
/ --peak_flops (default: H100 SXM dense bf16, 989 TFLOP/s).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "tiny", "configs/model.py preset: tiny, "
                              "qwen2.5-math-1.5b or qwen2.5-math-7b (aliases 1.5b, 7b)")
_SEQ = flags.DEFINE_integer("seq_len", 2048, "tokens per row")
_MICRO = flags.DEFINE_integer("micro_batch", 4, "rows per accumulation micro-step (global)")
_ACCUM = flags.DEFINE_integer("accum", 1, "micro-steps per optimizer step")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps")
_WARMUP = flags.DEFINE_integer("warmup", 2, "untimed steps (the first compiles)")
_REMAT = flags.DEFINE_bool("remat", True, "recompute each layer in the backward pass")
_REMAT_POLICY = flags.DEFINE_enum("remat_policy", "full", ["full", "dots"],
                                  "what remat recomputes (see models/qwen2.py REMAT_POLICIES)")
_ATTN = flags.DEFINE_enum("attention_impl", "auto", ["auto", "xla", "cudnn"],
                          "attention kernel: cuDNN flash on GPU, or the XLA fallback")
_DTYPE = flags.DEFINE_enum("compute_dtype", "bfloat16", ["bfloat16", "float32"],
                           "compute dtype (params and optimizer stay fp32)")
_LAYERS = flags.DEFINE_integer("layers", 0, "override the number of layers (0: preset's)")
_DATA = flags.DEFINE_integer("data", 1, "mesh data axis")
_FSDP = flags.DEFINE_integer("fsdp", -1, "mesh fsdp axis (-1: remaining devices)")
_TENSOR = flags.DEFINE_integer("tensor", 1, "mesh tensor axis")
from rstar_jax import cli  # noqa: E402

cli.define_distributed_flags()
_PEAK = flags.DEFINE_float("peak_flops", 989e12, "peak dense bf16 FLOP/s of one device")

ALIASES = {"1.5b": "qwen2.5-math-1.5b", "7b": "qwen2.5-math-7b"}


def model_config(preset: str, layers: int):
    from rstar_jax.models import Qwen2Config
    spec = importlib.util.spec_from_file_location("model_presets",
                                                  os.path.join(ROOT, "configs", "model.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = Qwen2Config.from_config_dict(mod.get_config(ALIASES.get(preset, preset)))
    return cfg.replace(num_hidden_layers=layers) if layers > 0 else cfg


def flops_per_token(cfg, seq_len: int) -> tuple[int, int]:
    """(matmul parameter count N, model training FLOPs per token)."""
    from rstar_jax.models.qwen2 import layer_param_shapes
    import math
    layer = sum(math.prod(s) for s in layer_param_shapes(cfg).values())
    n = layer + cfg.hidden_size * cfg.vocab_size
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq_len
    return n, 6 * n + attn


def main(argv):
    del argv
    process = cli.setup_command()    # several processes: one mesh over all their devices
    import jax
    import numpy as np
    from flax import nnx

    from rstar_jax.models import Qwen2ForCausalLM, make_mesh, params_of
    from rstar_jax.models.sharding import param_shardings
    from rstar_jax.train import steps
    from rstar_jax.train.optim import make_optimizer

    cfg = model_config(_PRESET.value, _LAYERS.value)
    mesh = make_mesh(_DATA.value, _FSDP.value, _TENSOR.value)
    make = lambda: params_of(Qwen2ForCausalLM(cfg, dtype="float32", rngs=nnx.Rngs(0)))  # noqa: E731
    abstract = jax.eval_shape(make)
    params = jax.jit(make, out_shardings=param_shardings(abstract, mesh))()  # born sharded
    optim = dict(learning_rate=7e-6, schedule="linear", warmup_steps=0, weight_decay=0.1,
                 b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0)
    optimizer, _ = make_optimizer(optim, total_steps=1000)
    init, abstract_state, _ = steps.jit_init_state(optimizer, abstract, mesh)
    state = init(params)
    del params

    rng = np.random.default_rng(0)
    shape = (_ACCUM.value, _MICRO.value, _SEQ.value)
    batch = {"input_ids": rng.integers(0, cfg.vocab_size, shape).astype(np.int32),
             "attention_mask": np.ones(shape, np.int32), "loss_mask": np.ones(shape, np.int32)}
    factory = lambda c: functools.partial(steps.sft_loss, cfg=cfg, compute_dtype=_DTYPE.value,  # noqa: E731
                                          remat=_REMAT.value and _REMAT_POLICY.value,
                                          constrain=c, attention_impl=_ATTN.value)
    step, _, b_sh = steps.jit_train_step(factory, optimizer, abstract_state, batch, mesh)
    if process.multi:     # each process hands over only its own rows
        from rstar_jax import distributed
        batch = distributed.to_global(batch, b_sh)
    else:
        batch = jax.device_put(batch, b_sh)

    t0 = time.perf_counter()
    for _ in range(max(1, _WARMUP.value)):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_and_warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(_STEPS.value):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)

    n_dev = mesh.size
    tokens = int(np.prod(shape))
    step_s = statistics.median(times)
    n, fpt = flops_per_token(cfg, _SEQ.value)
    tps = tokens / step_s
    mem = {}
    try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = {"peak_bytes_in_use_device0": stats.get("peak_bytes_in_use")}
    except Exception:  # noqa: BLE001 - CPU backends have no memory stats
        pass
    if not process.is_main:
        return
    print(json.dumps({
        "preset": ALIASES.get(_PRESET.value, _PRESET.value), "layers": cfg.num_hidden_layers,
        "device_kind": jax.devices()[0].device_kind, "devices": n_dev,
        "processes": process.count,
        "mesh": dict(mesh.shape), "seq_len": _SEQ.value, "micro_batch": _MICRO.value,
        "accum": _ACCUM.value, "remat": _REMAT.value and _REMAT_POLICY.value,
        "attention_impl": _ATTN.value, "compute_dtype": _DTYPE.value,
        "matmul_params": n, "model_flops_per_token": fpt, "tokens_per_step": tokens,
        "step_time_s": step_s, "step_times_s": times, "compile_and_warmup_s": compile_and_warmup_s,
        "tokens_per_second": tps, "tokens_per_second_per_device": tps / n_dev,
        "model_tflops_per_second_per_device": fpt * tps / n_dev / 1e12,
        "mfu": fpt * tps / n_dev / _PEAK.value, "peak_flops": _PEAK.value,
        "loss": float(metrics["loss"]), **mem}, indent=1))


if __name__ == "__main__":
    app.run(main)

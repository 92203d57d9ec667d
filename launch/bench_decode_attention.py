"""One layer's decode attention: the fused Pallas kernel against the XLA reference.

Times `write_and_attend` (RoPE + cache write + attention for one new token per slot) at a
model's decode shapes, for a grid of kernel settings, and prints one JSON line each:
  python launch/bench_decode_attention.py --preset qwen2.5-math-1.5b --slots 256 \
      --cache-len 512 --mean-len 384 --block-k 16,32,64 --num-warps 2,4,8 --num-stages 1,2,3
Each line carries microseconds per call, the bytes the call must move (the live KV rows,
read once) over the time as GB/s, and the same for the XLA path, which reads the whole
cache length. Slot lengths are uniform in [mean/2, 3*mean/2) (ragged, like real search).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import model as model_presets  # noqa: E402
from rstar_jax import cli  # noqa: E402
from rstar_jax.engine.decode_attention import write_and_attend_pallas, write_and_attend_xla  # noqa: E402
from rstar_jax.models.layers import rope_tables  # noqa: E402
from rstar_jax.models.config import Qwen2Config, resolve_dtype  # noqa: E402


def time_call(fn, args, iters):
    """Mean seconds per call of fn(*args) -> (attn, k, v), the caches fed back (donated)."""
    qkv, cos, sin, k, v, n, act = args
    out = fn(qkv, cos, sin, k, v, n, act)
    jax.block_until_ready(out)
    k, v = out[1], out[2]
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn(qkv, cos, sin, k, v, n, act)
        k, v = out[1], out[2]
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=model_presets.PRESETS)
    ap.add_argument("--slots", type=int, default=256)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--mean-len", type=int, default=384)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--block-k", default="32")
    ap.add_argument("--num-warps", default="4")
    ap.add_argument("--num-stages", default="2")
    ap.add_argument("--iters", type=int, default=50)
    cli.add_distributed_arguments(ap)
    args = ap.parse_args(argv)
    process = cli.start_distributed_from_args(args)  # each process benchmarks its own devices; process 0 prints

    cfg = Qwen2Config.from_config_dict(model_presets.get_config(args.preset))
    dtype = resolve_dtype(args.dtype)
    s, g, dh, t = args.slots, cfg.num_key_value_heads, cfg.head_dim, args.cache_len
    r = cfg.num_attention_heads // g
    rng = np.random.default_rng(0)
    lo, hi = max(1, args.mean_len // 2), min(t - 1, args.mean_len * 3 // 2)
    lengths = rng.integers(lo, hi, s).astype(np.int32)
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    qkv = jax.random.normal(k1, (s, g, r + 2, dh), dtype)
    cache = lambda kk: jax.random.normal(kk, (s, g, t, dh), dtype)  # noqa: E731
    n = jnp.asarray(lengths)
    cos, sin = rope_tables(n[:, None], dh, cfg.rope_theta)
    act = jnp.ones((s,), bool)
    itemsize = jnp.dtype(dtype).itemsize
    live_bytes = 2 * int(lengths.sum() + s) * g * dh * itemsize   # K and V rows read once
    base = dict(preset=args.preset, slots=s, cache_len=t, mean_len=float(lengths.mean()),
                dtype=args.dtype, device=str(jax.devices()[0].device_kind))

    xla = jax.jit(write_and_attend_xla, donate_argnums=(3, 4))
    sec = time_call(xla, (qkv, cos[:, 0], sin[:, 0], cache(k2), cache(k3), n, act), args.iters)
    xla_us = sec * 1e6
    if process.is_main:
        print(json.dumps(dict(base, impl="xla", us=xla_us, live_gb_per_s=live_bytes / sec / 1e9,
                              read_gb_per_s=2 * s * t * g * dh * itemsize / sec / 1e9)), flush=True)
    ints = lambda x: [int(v) for v in x.split(",") if v]  # noqa: E731
    interpret = jax.default_backend() != "gpu"
    for bk, warps, stages in itertools.product(ints(args.block_k), ints(args.num_warps),
                                               ints(args.num_stages)):
        fn = jax.jit(functools.partial(write_and_attend_pallas, block_k=bk, num_warps=warps,
                                       num_stages=stages, interpret=interpret),
                     donate_argnums=(3, 4))
        try:
            sec = time_call(fn, (qkv, cos[:, 0], sin[:, 0], cache(k2), cache(k3), n, act),
                            args.iters)
        except Exception as e:   # one bad setting must not lose the others
            if process.is_main:
                print(json.dumps(dict(base, impl="pallas", block_k=bk, num_warps=warps,
                                      num_stages=stages, error=f"{type(e).__name__}: {e}"[:300])))
            continue
        if process.is_main:
            print(json.dumps(dict(base, impl="pallas", block_k=bk, num_warps=warps,
                                  num_stages=stages, us=sec * 1e6,
                                  live_gb_per_s=live_bytes / sec / 1e9,
                                  speedup_vs_xla=xla_us / (sec * 1e6))), flush=True)


if __name__ == "__main__":
    main()

"""Generation throughput: our JAX engine vs Hugging Face `generate`, plus the decode roofline.

Random weights of a model preset (configs/model.py), B prompts of --prompt-len random
tokens, --new-tokens generated with stops disabled (greedy). One JSON line per batch size:
  python launch/bench_engine.py --preset qwen2.5-math-1.5b --batch-sizes 16,64,256
Decode attention: --decode-attention auto (the default: pallas on GPU, else xla), xla (kv
buckets) or pallas (the fused in-place kernel of rstar_jax/engine/decode_attention.py;
--decode-block-k sets its key block). --profile DIR adds the top device kernels of one
more, traced run to the JSON (launch/profile_summary.py).
Ours needs only jax; the HF baseline (static and dynamic cache) runs when torch and
transformers are importable and --skip-hf is not given.
Roofline: a decode step must read all weights and the live KV cache once, so
tok/s <= B / ((weight bytes + KV bytes at the mean context) / HBM bandwidth).
"""

from __future__ import annotations

import argparse
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
from rstar_jax.engine.kv_cache import cache_bytes_per_token  # noqa: E402
from rstar_jax.engine.scheduler import GenerationEngine, Request  # noqa: E402
from rstar_jax.models.config import Qwen2Config, resolve_dtype  # noqa: E402
from rstar_jax.models.qwen2 import layer_param_shapes  # noqa: E402


def random_params(cfg: Qwen2Config, dtype, seed: int = 0) -> dict:
    """Random weights with the qwen2.py layout, made on device in one jitted call."""
    def make(key):
        keys = iter(jax.random.split(key, 32))
        normal = lambda shape: (0.02 * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)
        layers = {name: (jnp.ones(shape, dtype) if name.endswith("norm") else normal(shape))
                  for name, shape in layer_param_shapes(cfg).items()}
        p = {"embed": normal((cfg.vocab_size, cfg.hidden_size)), "layers": layers,
             "final_norm": jnp.ones((cfg.hidden_size,), dtype)}
        if not cfg.tie_word_embeddings:
            p["lm_head"] = normal((cfg.hidden_size, cfg.vocab_size))
        return p
    return jax.jit(make)(jax.random.PRNGKey(seed))


def param_bytes(params) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))


def bench_ours(params, cfg, b, prompt_len, new_tokens, args, dtype):
    engine = GenerationEngine(
        params, cfg, slots=b, max_len=prompt_len + new_tokens, capacity=new_tokens,
        steps_per_call=args.steps_per_call, kv_bucket=args.kv_bucket,
        prefill_len_bucket=args.prefill_len_bucket, prefill_batch=min(b, args.prefill_batch),
        dtype=dtype, decode_attention=args.decode_attention, decode_block_k=args.decode_block_k)
    rng = np.random.default_rng(0)

    def run(seed):
        # distinct random prompts so no prefix is shared between rows or runs
        reqs = [Request(rng.integers(0, cfg.vocab_size, prompt_len).tolist(),
                        max_new_tokens=new_tokens, temperature=args.temperature, seed=seed + i)
                for i in range(b)]
        for k in engine.stats:
            engine.stats[k] = 0
        t0 = time.perf_counter()
        out = engine.generate(reqs)
        jax.block_until_ready(engine.cache.k)
        return time.perf_counter() - t0, out

    run(0)                                   # compile every shape once
    seconds, out = run(1000)
    generated = sum(len(c.token_ids) for r in out for c in r)
    assert generated == b * new_tokens, (generated, b * new_tokens)
    rec = dict(seconds=seconds, tok_per_s=generated / seconds,
               decode_tok_per_s=generated / engine.stats["decode_seconds"],
               decode_calls=engine.stats["decode_calls"], decode_attention=engine.decode_attention)
    if args.profile:                          # a third, traced run: the timed one stays clean
        from launch.profile_summary import top_device_ops
        log_dir = os.path.join(args.profile, f"b{b}")
        with jax.profiler.trace(log_dir):
            run(2000)
        rec["profile"] = top_device_ops(log_dir, top=args.profile_top)
    return rec


def bench_hf(cfg, b, prompt_len, new_tokens, dtype_name, cache_impl):
    import torch
    import transformers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype_name]
    hf_cfg = transformers.Qwen2Config(**cfg.to_hf_dict(dtype_name))
    torch.manual_seed(0)
    # Build directly in the target dtype: an fp32 7B model (28 GB) beside our JAX arrays
    # does not fit in one H100's memory.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(tdtype)
    try:
        with torch.device(device):
            model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    ids = torch.randint(0, cfg.vocab_size, (b, prompt_len), device=device)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
              pad_token_id=0, eos_token_id=None)
    if cache_impl == "static":
        kw["cache_implementation"] = "static"

    def run():
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    run()
    seconds, out = run()
    generated = (out.shape[1] - prompt_len) * b
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return dict(seconds=seconds, tok_per_s=generated / seconds)


def roofline(cfg, weight_bytes, b, prompt_len, new_tokens, itemsize, bandwidth):
    mean_context = prompt_len + new_tokens / 2
    kv = b * mean_context * cache_bytes_per_token(cfg, itemsize)
    step = (weight_bytes + kv) / bandwidth
    return dict(step_ms=step * 1e3, tok_per_s=b / step, weight_gb=weight_bytes / 1e9,
                kv_gb_per_step=kv / 1e9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", choices=model_presets.PRESETS)
    ap.add_argument("--batch-sizes", default="16,64,256")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    ap.add_argument("--steps-per-call", type=int, default=64)
    ap.add_argument("--kv-bucket", type=int, default=512)
    ap.add_argument("--prefill-len-bucket", type=int, default=256)
    ap.add_argument("--prefill-batch", type=int, default=64)
    ap.add_argument("--decode-attention", default="auto", choices=("xla", "pallas", "auto"),
                    help="decode attention: xla (kv buckets), the fused in-place Pallas kernel, "
                         "or auto (pallas on GPU)")
    ap.add_argument("--decode-block-k", type=int, default=32,
                    help="key block of the Pallas kernel (a power of two dividing the cache length)")
    ap.add_argument("--bandwidth", type=float, default=3.35e12,
                    help="HBM bytes/s for the roofline (H100 SXM 3.35e12, H200 4.8e12)")
    ap.add_argument("--profile", default="",
                    help="trace one more run into this dir and add its top kernels to the JSON")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--hf-caches", default="static,dynamic")
    cli.add_distributed_arguments(ap)
    args = ap.parse_args(argv)
    process = cli.start_distributed_from_args(args)  # each process benchmarks its own devices; process 0 prints

    cfg = Qwen2Config.from_config_dict(model_presets.get_config(args.preset))
    dtype = resolve_dtype(args.dtype)
    batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    # The HF baselines run first, before JAX touches the accelerator: JAX's allocator keeps
    # the memory it has used, and a 7B model plus its cache beside ours does not fit one H100.
    hf = {b: hf_baselines(cfg, b, args) for b in batch_sizes} if not args.skip_hf else {}
    params = random_params(cfg, dtype)
    wbytes = param_bytes(params)
    for b in batch_sizes:
        rec = dict(preset=args.preset, batch=b, prompt_len=args.prompt_len,
                   new_tokens=args.new_tokens, dtype=args.dtype, backend=jax.default_backend(),
                   decode_attention=args.decode_attention, kv_bucket=args.kv_bucket,
                   decode_block_k=args.decode_block_k,
                   device=str(jax.devices()[0].device_kind))
        rec["ours"] = bench_ours(params, cfg, b, args.prompt_len, args.new_tokens, args, dtype)
        rec["roofline"] = roofline(cfg, wbytes, b, args.prompt_len, args.new_tokens,
                                   dtype.itemsize, args.bandwidth)
        rec["ours"]["decode_fraction_of_roofline"] = (
            rec["ours"]["decode_tok_per_s"] / rec["roofline"]["tok_per_s"])
        for key, value in hf.get(b, {}).items():
            rec[key] = value
            if isinstance(value, dict):
                rec[f"speedup_vs_{key}"] = rec["ours"]["tok_per_s"] / value["tok_per_s"]
        if process.is_main:
            print(json.dumps({**rec, "processes": process.count}), flush=True)


def hf_baselines(cfg, b, args) -> dict:
    """{'hf_static': {...} or an error string, 'hf_dynamic': ...} for batch size b."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return {"hf": "skipped: torch/transformers not installed"}
    out = {}
    for impl in args.hf_caches.split(","):
        try:
            out[f"hf_{impl}"] = bench_hf(cfg, b, args.prompt_len, args.new_tokens, args.dtype, impl)
        except Exception as e:   # a baseline failure must not lose our numbers
            out[f"hf_{impl}"] = f"failed: {type(e).__name__}: {e}"[:300]
    return out


if __name__ == "__main__":
    main()

"""The benchmark scripts run on CPU and print the JSON they promise."""

import contextlib
import importlib.util
import io
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "launch", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def json_lines(main, argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(argv)
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


def test_bench_engine_tiny_with_profile(tmp_path):
    bench = load_script("bench_engine")
    (rec,) = json_lines(bench.main, ["--preset", "tiny", "--batch-sizes", "3", "--prompt-len", "8",
                                     "--new-tokens", "6", "--skip-hf", "--profile", str(tmp_path)])
    ours = rec["ours"]
    assert rec["batch"] == 3 and ours["decode_attention"] == "xla"   # "auto" on CPU
    assert ours["tok_per_s"] > 0 and ours["decode_tok_per_s"] >= ours["tok_per_s"]
    assert 0 < ours["decode_fraction_of_roofline"] < 1
    prof = ours["profile"]
    assert prof["events"] > 0 and prof["top"]
    assert all(t["ms"] >= 0 and t["count"] >= 1 for t in prof["top"])
    shares = [t["share"] for t in prof["top"]]
    assert shares == sorted(shares, reverse=True) and sum(shares) <= 1.0 + 1e-6


def test_bench_decode_attention_runs_the_kernel_and_the_reference():
    bench = load_script("bench_decode_attention")
    rows = json_lines(bench.main, ["--preset", "qwen2.5-math-1.5b", "--slots", "2",
                                   "--cache-len", "32", "--mean-len", "16", "--iters", "1",
                                   "--block-k", "16,32", "--num-warps", "2", "--num-stages", "1"])
    assert [r["impl"] for r in rows] == ["xla", "pallas", "pallas"]
    assert [r.get("block_k") for r in rows[1:]] == [16, 32]
    assert all(r["us"] > 0 and "error" not in r for r in rows)

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


def test_bench_mcts_compares_serial_and_fast_paths_on_the_same_problems():
    bench = load_script("bench_mcts")
    (rec,) = json_lines(bench.main, ["--problems", "2", "--chunk", "1", "--children", "2",
                                     "--rollouts", "1", "--depth", "3", "--slots", "8",
                                     "--max-len", "256", "--max-new-tokens", "64",
                                     "--workers", "1", "--no-warmup"])
    serial, fast = rec["serial"], rec["fast"]
    assert (serial["chunks_in_flight"], serial["prefix_reuse"]) == (1, False)
    assert (fast["chunks_in_flight"], fast["prefix_reuse"]) == (2, True)
    for path in (serial, fast):
        assert path["problems"] == path["trees"] == 2
        assert path["tokens_generated"] > 0 and path["problems_per_hour"] > 0
        assert set(path["split"]) == {"prefill_s", "decode_s", "ppm_scoring_s", "executor_s",
                                      "grader_s", "tree_updates_s", "device_idle_or_other_s",
                                      "unaccounted_s"}
        assert all(path["split"][f"{k}_s"] > 0 for k in ("prefill", "decode", "ppm_scoring",
                                                         "executor", "tree_updates"))
    # the same steps reach the device either way; only the PPM path differs
    assert serial["steps"] == fast["steps"] and serial["nodes"] == fast["nodes"]
    assert serial["tokens_generated"] == fast["tokens_generated"]
    assert serial["ppm"]["prefix_prompts"] == 0 and fast["ppm"]["prefix_prompts"] > 0
    assert set(rec["speedup"]) == {"wall", "ppm_scoring", "problems_per_hour"}

"""Where device time goes: the top kernels of a `jax.profiler` trace, as plain data.

    with jax.profiler.trace(log_dir):
        run()
    print(json.dumps(top_device_ops(log_dir)))

Reads the newest `*.xplane.pb` under log_dir with `jax.profiler.ProfileData` (no
TensorBoard needed), sums event time per kernel name over the device planes (GPU/TPU
streams; the host CPU plane when there is no device plane), and returns the biggest.
"""

from __future__ import annotations

import collections
import glob
import os


def _newest_xplane(log_dir: str) -> str:
    paths = glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {log_dir}")
    return max(paths, key=os.path.getmtime)


def top_device_ops(log_dir: str, top: int = 25) -> dict:
    """{'plane', 'total_ms', 'events', 'top': [{name, ms, count, share}]} for one trace."""
    from jax.profiler import ProfileData
    data = ProfileData.from_file(_newest_xplane(log_dir))
    planes = [p for p in data.planes if p.name.startswith(("/device:GPU", "/device:TPU"))]
    if not planes:
        planes = [p for p in data.planes if p.name == "/host:CPU"]
    totals: dict = collections.defaultdict(float)
    counts: dict = collections.Counter()
    lines = [line for plane in planes for line in plane.lines]
    # XLA's GPU planes also carry "XLA Ops"/"XLA Modules" summary lines that repeat the
    # kernels' time; count the streams' kernels only (all lines where none is a stream).
    streams = [line for line in lines if line.name.startswith("Stream")]
    for line in streams or lines:
        for ev in line.events:
            totals[ev.name] += ev.duration_ns
            counts[ev.name] += 1
    total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return dict(plane=",".join(p.name for p in planes),
                lines=sorted({line.name for line in streams or lines})[:8], total_ms=total / 1e6,
                events=int(sum(counts.values())),
                top=[dict(name=n[:120], ms=round(ns / 1e6, 3), count=counts[n],
                          share=round(ns / total, 4)) for n, ns in ranked])

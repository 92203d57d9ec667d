"""rStar-Math self-evolution: the rounds of the paper as one resumable command.

  python launch/evolve.py --config configs/tiny.py --workdir runs/tiny          # make evolve
  python launch/evolve.py --config configs/qwen2.5-math-7b/run.py --workdir DIR \
      --config.model.base=~/ckpt/Qwen2.5-Math-7B --config.bootstrap.path=<policy dir> \
      --config.problems.train.train.path=~/data/problems.jsonl
  python launch/evolve.py --config configs/qwen2.5-math-7b/round3.py --workdir DIR ...
  python launch/evolve.py --config ... --workdir DIR --dry_run      # the plan, no weights

A run config chains rounds 1..N (and the control where enabled); a round config runs one
round and reads the earlier rounds' exports from DIR. Every stage (search, data, policy,
ppm, export, eval) writes DIR/round<k>/<stage>/ and marks itself DONE; running the same
command again resumes at the first unfinished stage (search per problem, training from
its last checkpoint). The resolved config (overrides included) is DIR/config.json; a
resume with a different config stops and names the fields that differ. Everything is
checked before any model is loaded or anything is written; bad input gets one line,
`error: ...`, and exit status 2. The report is DIR/report.md, report.json and *.png.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from rstar_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "a run or round config: configs/tiny.py, configs/<model>/run.py, "
    "configs/<model>/round<k>.py")
_WORKDIR = flags.DEFINE_string("workdir", None, "directory of the run (created; resumable)")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "print the plan and exit; loads no weights")
cli.define_distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every input is a --flag")
    if _CONFIG.value is None:
        raise cli.UsageError("--config is required (for example configs/tiny.py)")
    if not _WORKDIR.value:
        raise cli.UsageError("--workdir is required (the run's directory; rerun to resume)")
    cli.quiet_logging()
    cli.check_distributed_flags()
    from rstar_jax.evolve import driver
    t0 = time.perf_counter()
    try:
        prepared = driver.prepare(_CONFIG.value, _WORKDIR.value, check_paths=not _DRY_RUN.value)
    except driver.PlanError as e:
        raise cli.UsageError(str(e)) from e
    if _DRY_RUN.value:
        print(driver.describe_plan(prepared))
        return
    process = cli.setup_command()
    if process.is_main:
        print(driver.describe_plan(prepared), flush=True)
    driver.run(prepared, log=lambda m: print(m, flush=True), process=process)
    if process.is_main:
        print(f"finished in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    cli.run(main)

"""Self-evolution: rStar-Math's rounds as resumable stages over a workdir, evaluation,
reports and plots (the only package, with launch/, that wires all the others together).

settings.py   a run or round config read and checked once (configs/rounds.py, tiny.py)
workdir.py    stage folders, DONE markers, the resolved config and its comparison
stages.py     search, data, policy, ppm, export, eval (+ the same-compute control)
driver.py     prepare (check everything, write nothing), run, resume, dry-run plan
evaluate.py   greedy, sampled (majority / best-of-N), PPM-guided MCTS, beam; curves over N
bootstrap.py  the scripted round-1 policy of the tiny default
models.py     proposers and PPM scorers over checkpoint directories, cached
report.py     report.json, report.md, plots
"""

from rstar_jax.evolve.driver import PlanError, describe_plan, prepare, run
from rstar_jax.evolve.settings import RunSettings

__all__ = ["PlanError", "RunSettings", "describe_plan", "prepare", "run"]

"""rStar-Math's four rounds of self-evolution for qwen2.5-math-7b, chained (configs/rounds.py).

  python launch/evolve.py --config configs/qwen2.5-math-7b/run.py --workdir DIR \
      --config.model.base=<local qwen2.5-math-7b dir> --config.bootstrap.path=<policy dir> \
      --config.problems.train.train.path=<problems.jsonl>
"""

from configs import rounds


def get_config():
    return rounds.run_config("qwen2.5-math-7b")

"""rStar-Math round 1 for qwen2.5-math-1.5b (configs/rounds.py has every value and its source).

  python launch/evolve.py --config configs/qwen2.5-math-1.5b/round1.py --workdir DIR \
      --config.model.base=<local qwen2.5-math-1.5b dir> --config.bootstrap.path=<policy dir>

"""

from configs import rounds


def get_config():
    return rounds.round_config(1, "qwen2.5-math-1.5b")

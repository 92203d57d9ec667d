"""rStar-Math round 2 for qwen2.5-math-1.5b (configs/rounds.py has every value and its source).

  python launch/evolve.py --config configs/qwen2.5-math-1.5b/round2.py --workdir DIR \
      --config.model.base=<local qwen2.5-math-1.5b dir>

Reads round 1's exported policy from DIR (run the earlier rounds first).
"""

from configs import rounds


def get_config():
    return rounds.round_config(2, "qwen2.5-math-1.5b")

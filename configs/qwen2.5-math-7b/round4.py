"""rStar-Math round 4 for qwen2.5-math-7b (configs/rounds.py has every value and its source).

  python launch/evolve.py --config configs/qwen2.5-math-7b/round4.py --workdir DIR \
      --config.model.base=<local qwen2.5-math-7b dir>

Reads round 3's exported policy and PPM from DIR (run the earlier rounds first).
"""

from configs import rounds


def get_config():
    return rounds.round_config(4, "qwen2.5-math-7b")

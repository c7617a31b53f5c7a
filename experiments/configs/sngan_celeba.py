r"""SNGAN on celeb_a: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py \
      --config=experiments/configs/sngan_celeba.py:smoke --workdir=/tmp/run
  python experiments/find_tickets.py \
      --config=experiments/configs/sngan_celeba.py --workdir=/tmp/lt
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("sngan", "celeb_a", preset or "default")

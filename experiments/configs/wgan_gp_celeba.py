r"""WGAN-GP on celeb_a: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py \
      --config=experiments/configs/wgan_gp_celeba.py:smoke --workdir=/tmp/run
  python experiments/find_tickets.py \
      --config=experiments/configs/wgan_gp_celeba.py --workdir=/tmp/lt
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("wgan_gp", "celeb_a", preset or "default")

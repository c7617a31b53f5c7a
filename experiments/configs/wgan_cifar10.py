r"""WGAN (weight clipping) on cifar10: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py \
      --config=experiments/configs/wgan_cifar10.py:smoke --workdir=/tmp/run
  python experiments/find_tickets.py \
      --config=experiments/configs/wgan_cifar10.py --workdir=/tmp/lt
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("wgan", "cifar10", preset or "default")

r"""SNGAN on fashion_mnist: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py \
      --config=experiments/configs/sngan_fmnist.py:smoke --workdir=/tmp/run
  python experiments/find_tickets.py \
      --config=experiments/configs/sngan_fmnist.py --workdir=/tmp/lt
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("sngan", "fashion_mnist", preset or "default")

r"""ResNet-DCGAN on fashion_mnist: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py --workdir=/tmp/gan \
    --config=experiments/configs/resnet_dcgan_fmnist.py:smoke
  python experiments/find_tickets.py --workdir=/tmp/lt \
    --config=experiments/configs/resnet_dcgan_fmnist.py
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("resnet_dcgan", "fashion_mnist", preset or "default")

r"""ResNet-DCGAN on cifar10: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py --workdir=/tmp/gan \
    --config=experiments/configs/resnet_dcgan_cifar10.py:smoke
  python experiments/find_tickets.py --workdir=/tmp/lt \
    --config=experiments/configs/resnet_dcgan_cifar10.py
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("resnet_dcgan", "cifar10", preset or "default")

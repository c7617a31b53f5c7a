r"""ResNet-VAE on cifar10: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py --workdir=/tmp/vae \
    --config=experiments/configs/resnet_vae_cifar10.py:smoke
  python experiments/find_tickets.py --workdir=/tmp/lt \
    --config=experiments/configs/resnet_vae_cifar10.py
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("resnet_vae", "cifar10", preset or "default")

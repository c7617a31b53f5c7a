r"""ResNet-VAE on celeb_a: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py --workdir=/tmp/vae \
    --config=experiments/configs/resnet_vae_celeba.py:smoke
  python experiments/find_tickets.py --workdir=/tmp/lt \
    --config=experiments/configs/resnet_vae_celeba.py
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("resnet_vae", "celeb_a", preset or "default")

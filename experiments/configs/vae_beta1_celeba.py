r"""VAE (beta = 1) on celeb_a: `get_config('smoke' | 'default' | 'paper')`.

  python experiments/train.py \
      --config=experiments/configs/vae_beta1_celeba.py:smoke --workdir=/tmp/run
  python experiments/find_tickets.py \
      --config=experiments/configs/vae_beta1_celeba.py --workdir=/tmp/lt
"""
from lth_jax import configs


def get_config(preset: str = "default"):
  return configs.get_config("vae_beta1", "celeb_a", preset or "default")

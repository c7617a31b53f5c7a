"""WGAN with weight clipping (Arjovsky et al. 2017), the paper's WGAN: the DCGAN's networks
(:mod:`lth_jax.models.wgan`: the DCGAN generator and a BatchNorm critic) trained by the GAN
builder (:mod:`lth_jax.families.gan`) with the Wasserstein loss.

The original paper's settings: RMSprop (PyTorch's α 0.99) at lr 5e-5 in the ``paper`` preset,
2e-4 in the others (at 5e-5 the default preset's 4,000 generator steps, its CPU budget, left
silhouettes: FID 147.8 vs 67.1, docs/training.md), ``n_critic`` = 5 critic steps per generator
step, every critic param clipped to [-0.01, 0.01] after each critic update (a pruned entry is 0
and stays 0). The gradient-penalty variant is the family ``wgan_gp``
(:mod:`lth_jax.families.wgan_gp`): it needs another critic (no BatchNorm) and another optimizer,
so it is a second family rather than a switch of this one.

Early-bird (structured): the generator's and the critic's BatchNorm channels (the DCGAN's
layout). Transfer with the β-VAE as the DCGAN's (``wgan_to_vae``; ``vae_to_wgan`` is the VAE's):
the networks are the DCGAN's, and the target trains with its own loss and optimizer
(:func:`lth_jax.transfer.derive_configs`).
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import dcgan as dcgan_family
from lth_jax.families import gan
from lth_jax.models import wgan

# The DCGAN's exclusions: G's first layer and the critic's last layer stay dense.
EXCLUDE = ("generator/convt0", "discriminator/head")


def build(s: families.Settings):
  widths = s.widths or {}
  generator = wgan.Generator(width=s.width, channels=s.channels, image_size=s.image_size,
                             z_dim=s.z_dim, widths=widths.get("generator"))
  critic = wgan.Critic(width=s.width, channels=s.channels, image_size=s.image_size,
                       widths=widths.get("discriminator"))
  return gan.build("wgan", generator, critic, s, channel_groups=wgan.channel_groups)


SPEC = families.register(families.Spec(
    name="wgan", kind="gan", parts=gan.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 100, "model.width": 16, "train.steps": 4000, "loss.kind": "wasserstein",
            "train.n_critic": 5, "train.clip": 0.01,
            "train.optimizer.kind": "rmsprop", "train.optimizer.lr": 2e-4,
            "train.optimizer.b2": 0.99, "prune.exclude": EXCLUDE,
            "transfer.direction": "wgan_to_vae"},
    presets={"paper": {"model.width": wgan.PAPER_WIDTH, "train.batch_size": 64,
                       "train.optimizer.lr": 5e-5,
                       "lottery.rewind_step": "10it"}},
    transfers={"wgan_to_vae": dcgan_family.TO_VAE},
    reproduction=families.Reproduction(
        winning=73.7, levels={"smoke": 1, "cpu": 6, "gpu": 6}, seeds={"cpu": (0,)},
        claims=(1,))))

"""WGAN-GP (Gulrajani et al. 2017): the WGAN's networks (:mod:`lth_jax.models.wgan`) with a
LayerNorm critic (a gradient penalty is wrong with BatchNorm, which couples a batch's images)
trained by the GAN builder (:mod:`lth_jax.families.gan`) with the Wasserstein loss and the
gradient penalty λ = 10 on real/fake interpolates instead of weight clipping.

Optimizer: Adam β1 0.5, β2 0.9, ``n_critic`` = 5, as the authors' DCGAN-architecture CIFAR-10
code (their Algorithm 1 writes β1 = 0; with the DCGAN networks they used 0.5), and lr 1e-4 in the
``paper`` preset; 2e-4 in the others: the default preset's CPU budget allows 1,700 generator
steps, and at 1e-4 and 1,500 steps the samples were still checkerboard shapes (FID 168.5 vs 50.6
at 2e-4; docs/training.md). A second family rather than a config switch of ``wgan``: the
critic's architecture differs, and a family keeps one architecture.

Early-bird (structured): the generator's BatchNorm channels only (LayerNorm scales are no
BatchNorm γ; the critic is kept whole).
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import gan
from lth_jax.families import wgan as wgan_family
from lth_jax.models import wgan


def build(s: families.Settings):
  widths = s.widths or {}
  generator = wgan.Generator(width=s.width, channels=s.channels, image_size=s.image_size,
                             z_dim=s.z_dim, widths=widths.get("generator"))
  critic = wgan.Critic(width=s.width, channels=s.channels, image_size=s.image_size,
                       widths=widths.get("discriminator"), norm="layer")
  return gan.build("wgan_gp", generator, critic, s, channel_groups=wgan.channel_groups)


SPEC = families.register(families.Spec(
    name="wgan_gp", kind="gan", parts=gan.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 100, "model.width": 16, "train.steps": 1700, "loss.kind": "wasserstein",
            "loss.gradient_penalty": 10.0, "train.n_critic": 5,
            "train.optimizer.lr": 2e-4, "train.optimizer.b1": 0.5, "train.optimizer.b2": 0.9,
            "prune.exclude": wgan_family.EXCLUDE},
    presets={"paper": {"model.width": wgan.PAPER_WIDTH, "train.batch_size": 64,
                       "train.optimizer.lr": 1e-4,
                       "lottery.rewind_step": "10it"}},
    reproduction=families.Reproduction(
        winning=73.7, levels={"smoke": 1, "cpu": 6, "gpu": 6}, seeds={"cpu": (0,)},
        claims=(1,))))

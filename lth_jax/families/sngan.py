"""SNGAN (Miyato et al. 2018), the CNN of its Table 3: :mod:`lth_jax.models.sngan` trained by the
GAN builder (:mod:`lth_jax.families.gan`) with the hinge loss.

Spectral normalisation lives in the discriminator (:class:`lth_jax.models.sngan.SNConv`): its
power-iteration vectors are the discriminator's ``batch_stats``, and each layer divides its
*masked* kernel (the params the step sees) by the estimated σ, so a pruned entry stays 0 in the
kernel the forward pass uses.

Optimizer: Miyato et al.'s setting C (Adam lr 2e-4, β1 0.5, β2 0.999, ``n_dis`` = 1) rather than
their ResNet setting (``n_dis`` = 5, β1 0, β2 0.9): it is the setting of their standard-CNN
results, one D step per G step costs a fifth of ``n_dis`` = 5 on a CPU, and it is the DCGAN's
Adam, so the two GANs differ only in the networks and the loss.

Early-bird (structured): the generator's BatchNorm channels only (the discriminator has none;
it is kept whole). No transfer: no other family shares these networks.
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import gan
from lth_jax.models import sngan


def build(s: families.Settings):
  widths = s.widths or {}
  generator = sngan.Generator(width=s.width, channels=s.channels, image_size=s.image_size,
                              z_dim=s.z_dim, widths=widths.get("generator"))
  discriminator = sngan.Discriminator(width=s.width, channels=s.channels,
                                      image_size=s.image_size,
                                      widths=widths.get("discriminator"))
  return gan.build("sngan", generator, discriminator, s, channel_groups=sngan.channel_groups)


SPEC = families.register(families.Spec(
    name="sngan", kind="gan", parts=gan.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 128, "model.width": 16, "train.steps": 2000, "loss.kind": "hinge",
            "train.optimizer.lr": 2e-4, "train.optimizer.b1": 0.5,
            # As the DCGAN: G's first (dense) layer and D's last (dense) layer stay dense.
            "prune.exclude": ("generator/convt0", "discriminator/head")},
    presets={"paper": {"model.width": sngan.PAPER_WIDTH, "train.batch_size": 64,
                       "lottery.rewind_step": "10it"}},
    reproduction=families.Reproduction(
        winning=89.2, levels={"smoke": 1, "cpu": 10, "gpu": 10}, seeds={"cpu": (0,)},
        claims=(1,))))

"""ResNet-DCGAN (Table 1: 2.2M params, winning tickets at 79 % sparsity): the residual generator
and discriminator of :mod:`lth_jax.models.resnet` trained by the GAN builder
(:mod:`lth_jax.families.gan`).

At the ``paper`` preset (width :data:`resnet.PAPER_WIDTH` = 128, z_dim 128, 32x32x3) it has
2,257,924 params (G 1,204,099, D 1,053,825; +2.6 % of Table 1). Its generator is the ResNet-VAE's
decoder and its discriminator body that VAE's encoder body, so tickets transfer both ways
(direction ``resnet_gan_to_vae`` here, ``resnet_vae_to_gan`` from ``resnet_vae``).

Structured early-bird prunes the generator's channel groups only (each up block's ``conv1 ->
bn2 -> conv2``): the discriminator has no BatchNorm, so it keeps every channel (and gets no
network-slimming penalty); with the generator not pruned, the run is refused ("no BatchNorm
channels to score").
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import gan
from lth_jax.models import resnet


def build(s: families.Settings):
  widths = s.widths or {}
  generator = resnet.Generator(width=s.width, channels=s.channels, image_size=s.image_size,
                               z_dim=s.z_dim, widths=widths.get("generator"))
  discriminator = resnet.Discriminator(width=s.width, channels=s.channels,
                                       image_size=s.image_size,
                                       widths=widths.get("discriminator"))
  return gan.build("resnet_dcgan", generator, discriminator, s,
                   channel_groups=resnet.channel_groups)


SPEC = families.register(families.Spec(
    name="resnet_dcgan", kind="gan", parts=gan.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 128, "model.width": 16, "train.batch_size": 32, "train.steps": 5000,
            "train.optimizer.lr": 2e-4, "train.optimizer.b1": 0.5,
            "transfer.direction": "resnet_gan_to_vae",
            # As the DCGAN: the generator's first layer and the discriminator's last stay dense.
            "prune.exclude": ("generator/dense", "discriminator/head")},
    presets={"paper": {"model.width": resnet.PAPER_WIDTH, "train.batch_size": 64,
                       "lottery.rewind_step": "10it"}},
    transfers={"resnet_gan_to_vae": families.Transfer(
        "resnet_vae", {"generator": resnet.GAN_TO_VAE["generator"]},
        {"discriminator/body": resnet.GAN_TO_VAE["discriminator/body"]})},
    reproduction=families.Reproduction(
        winning=79.0, levels={"smoke": 1, "cpu": 7, "gpu": 7}, seeds={"cpu": (0,)},
        claims=(1,))))

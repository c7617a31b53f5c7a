"""ResNet-VAE (Table 1: 2.8M params, winning tickets at 93.1 % sparsity):
:class:`lth_jax.models.resnet.VAE` trained by the autoencoding builder
(:mod:`lth_jax.families.autoencoding`, β-VAE loss with ``loss.beta``).

At the ``paper`` preset (width :data:`resnet.VAE_PAPER_WIDTH` = 144, z_dim 128, 32x32x3) it has
2,855,923 params (+2.0 % of Table 1). Its decoder is the ResNet-DCGAN's generator and its encoder
body that GAN's discriminator body, so tickets transfer both ways (direction
``resnet_vae_to_gan`` here, ``resnet_gan_to_vae`` from ``resnet_dcgan``). A transfer builds the
target at the source config's width (:class:`lth_jax.families.Transfer`): from this family's
paper preset the ResNet-DCGAN is built at width 144 (2,818,948 params), from the ResNet-DCGAN's
this VAE at width 128 (2,290,819).

Structured early-bird prunes the decoder's channel groups only (each up block's ``conv1 -> bn2
-> conv2``); the encoder has no BatchNorm and keeps every channel.
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import autoencoding
from lth_jax.models import resnet


def build(s: families.Settings):
  widths = s.widths or {}
  model = resnet.VAE(width=s.width, channels=s.channels, image_size=s.image_size, z_dim=s.z_dim,
                     encoder_widths=widths.get("encoder"), decoder_widths=widths.get("decoder"))
  return autoencoding.build("resnet_vae", model, s, variational=True,
                            channel_groups=resnet.vae_channel_groups)


SPEC = families.register(families.Spec(
    name="resnet_vae", kind="autoencoding", parts=autoencoding.PARTS, build=build,
    primary_metric="fid",
    config={"model.z_dim": 128, "model.width": 16, "train.batch_size": 32, "train.steps": 3000,
            "train.optimizer.lr": 1e-3, "train.optimizer.b1": 0.9,
            "transfer.direction": "resnet_vae_to_gan"},
    presets={"paper": {"model.width": resnet.VAE_PAPER_WIDTH, "train.batch_size": 128,
                       "lottery.rewind_step": "0it"}},
    transfers={"resnet_vae_to_gan": families.Transfer(
        "resnet_dcgan", {resnet.GAN_TO_VAE["generator"]: "generator"},
        {resnet.GAN_TO_VAE["discriminator/body"]: "discriminator/body"})},
    reproduction=families.Reproduction(
        winning=93.1, levels={"smoke": 1, "cpu": 12, "gpu": 12}, seeds={"cpu": (0,)},
        claims=(1,))))

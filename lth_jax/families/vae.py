"""The β-VAE of the paper: :mod:`lth_jax.models.vae` trained by the autoencoding builder
(:mod:`lth_jax.families.autoencoding`); its decoder is the DCGAN generator, its encoder body
the discriminator's (tickets transfer both ways, with the DCGAN and with the WGAN, whose networks
are the DCGAN's)."""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import autoencoding
from lth_jax.models import dcgan
from lth_jax.models import vae


def build(s: families.Settings):
  widths = s.widths or {}
  model = vae.VAE(width=s.width, channels=s.channels, image_size=s.image_size, z_dim=s.z_dim,
                  encoder_widths=widths.get("encoder"), decoder_widths=widths.get("decoder"))
  return autoencoding.build("vae", model, s, variational=True, channel_groups=vae.channel_groups)


SPEC = families.register(families.Spec(
    name="vae", kind="autoencoding", parts=autoencoding.PARTS, build=build, primary_metric="fid",
    config={"model.z_dim": 32, "train.steps": 4000,
            "train.optimizer.lr": 1e-3, "train.optimizer.b1": 0.9},
    presets={"paper": {"train.batch_size": 128, "lottery.rewind_step": "0it"}},
    # The WGAN's networks are the DCGAN's (BatchNorm critic): the same layers map.
    transfers={direction: families.Transfer(
        target, {dcgan.GAN_TO_VAE["generator"]: "generator"},
        {dcgan.GAN_TO_VAE["discriminator/body"]: "discriminator/body"})
        for direction, target in (("vae_to_gan", "dcgan"), ("vae_to_wgan", "wgan"))},
    reproduction=families.Reproduction(
        winning=86.5, levels={"smoke": 1, "cpu": 12, "gpu": 12},
        overrides={"cpu": {"model.width": 16, "train.steps": 2000}},
        claims=(1, 2, 3, 4, 5, 6, 7))))

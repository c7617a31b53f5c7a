"""The plain VAE of the paper's Table 1 (β = 1): the β-VAE's model (:mod:`lth_jax.models.vae`)
and builder (:mod:`lth_jax.families.autoencoding`) with the KL term at weight 1.

The same networks as the β-VAE (family ``vae``); only ``loss.beta`` and the paper preset's
width differ. Early-bird (structured): the encoder's and decoder's BatchNorm channels.
"""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import autoencoding
from lth_jax.models import vae

# Table 1's 5.6M VAE at 32x32x3 (z_dim 32): width 120 gives 5,360,107 params (-4.3%).
PAPER_WIDTH = 120


def build(s: families.Settings):
  widths = s.widths or {}
  model = vae.VAE(width=s.width, channels=s.channels, image_size=s.image_size, z_dim=s.z_dim,
                  encoder_widths=widths.get("encoder"), decoder_widths=widths.get("decoder"))
  return autoencoding.build("vae_beta1", model, s, variational=True,
                            channel_groups=vae.channel_groups)


SPEC = families.register(families.Spec(
    name="vae_beta1", kind="autoencoding", parts=autoencoding.PARTS, build=build,
    primary_metric="fid",
    config={"model.z_dim": 32, "train.steps": 4000, "loss.beta": 1.0,
            "train.optimizer.lr": 1e-3, "train.optimizer.b1": 0.9},
    presets={"paper": {"model.width": PAPER_WIDTH, "train.batch_size": 128,
                       "lottery.rewind_step": "0it"}},
    reproduction=families.Reproduction(
        winning=79.0, levels={"smoke": 1, "cpu": 8, "gpu": 8}, seeds={"cpu": (0,)},
        claims=(1,))))

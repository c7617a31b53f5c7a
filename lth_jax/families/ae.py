"""The paper's convolutional AutoEncoder: :mod:`lth_jax.models.autoencoder` trained by the
autoencoding builder (:mod:`lth_jax.families.autoencoding`); judged by reconstruction MSE."""

from __future__ import annotations

from lth_jax import families
from lth_jax.families import autoencoding
from lth_jax.models import autoencoder


def build(s: families.Settings):
  widths = s.widths or {}
  model = autoencoder.AutoEncoder(width=s.width, channels=s.channels, image_size=s.image_size,
                                  z_dim=s.z_dim, encoder_widths=widths.get("encoder"),
                                  decoder_widths=widths.get("decoder"))
  return autoencoding.build("ae", model, s, variational=False,
                            channel_groups=autoencoder.channel_groups)


SPEC = families.register(families.Spec(
    name="ae", kind="autoencoding", parts=autoencoding.PARTS, build=build,
    primary_metric="recon_mse",
    config={"model.z_dim": 128, "train.steps": 3000,
            "train.optimizer.lr": 1e-3, "train.optimizer.b1": 0.9},
    presets={"paper": {"train.batch_size": 128, "lottery.rewind_step": "0it"}},
    reproduction=families.Reproduction(
        winning=95.6, levels={"smoke": 1, "cpu": 20, "gpu": 20},
        overrides={"cpu": {"model.width": 16, "train.steps": 1500}})))

"""Convolutional AutoEncoder built from the DCGAN halves, with a deterministic latent.

Params ``{'encoder': {'body': <DiscriminatorBody>, 'head': Conv(top -> z_dim, k4 VALID)},
'decoder': <Generator>}``, the :class:`lth_jax.models.vae.VAE` layout with a ``z_dim``-wide head
instead of ``2 * z_dim``. The loss and the reported metric are :func:`lth_jax.objectives.mse`.

Example::

  from lth_jax.models import autoencoder
  model = autoencoder.AutoEncoder(width=64, channels=1, image_size=32, z_dim=128)
  variables = model.init(key, x, train=False)
  recon, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models import dcgan
from lth_jax.models import layout


class AutoEncoder(nn.Module):
  """Conv AE on ``[B, image_size, image_size, channels]`` images in [-1, 1].

  Attributes:
    width: base channel count h of both halves.
    channels, image_size: image shape (``image_size`` a power of two >= 8).
    z_dim: code size.
    encoder_widths: hidden widths of the encoder body (as ``dcgan.DiscriminatorBody.widths``).
    decoder_widths: hidden widths of the decoder (as ``dcgan.Generator.widths``).
    dtype, param_dtype: computation and params dtypes.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  z_dim: int = 128
  encoder_widths: Sequence[int] | None = None
  decoder_widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    shape = dict(width=self.width, channels=self.channels, image_size=self.image_size,
                 dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = dcgan.Encoder(features=self.z_dim, widths=self.encoder_widths, **shape)
    self.decoder = dcgan.Generator(z_dim=self.z_dim, widths=self.decoder_widths, **shape)

  def encode(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Codes ``[B, z_dim]``."""
    return self.encoder(x, train=train)

  def decode(self, z: jax.Array, *, train: bool, activate: bool = True) -> jax.Array:
    """Images ``[B, H, W, C]`` from codes ``[B, z_dim]`` (pre-tanh if not ``activate``)."""
    return self.decoder(z, train=train, activate=activate)

  def __call__(self, x: jax.Array, key: jax.Array | None = None, *, train: bool) -> jax.Array:
    """Reconstructs ``x`` ``[B, H, W, C]``.

    ``key`` is ignored (the AE is deterministic); it is accepted so that the AE and the VAE
    share one calling convention ``apply(variables, x, key, train=...)``.
    """
    del key
    return self.decode(self.encode(x, train=train), train=train)

  def reconstruct(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Reconstructions ``[B, H, W, C]`` (the same as calling the model)."""
    return self.decode(self.encode(x, train=train), train=train)

  def synflow_forward(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The decoder's output without the final tanh, flattened per image: ``[B, H*W*C]``."""
    out = self.decode(self.encode(x, train=train), train=train, activate=False)
    return out.reshape(out.shape[0], -1)


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The AE's channel groups (``params`` is ``{'encoder', 'decoder'}``): the encoder's
  (discriminator layout), then the decoder's (generator layout)."""
  return (dcgan.discriminator_channel_groups(params["encoder"], "encoder")
          + dcgan.generator_channel_groups(params["decoder"], "decoder"))

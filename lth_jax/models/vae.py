"""(β-)VAE whose decoder is the DCGAN generator and whose encoder is the DCGAN discriminator body.

Params ``{'encoder': {'body': <DiscriminatorBody>, 'head': Conv(top -> 2 * z_dim, k4 VALID)},
'decoder': <Generator>}``: with ``z_dim`` equal to the GAN's, the decoder has exactly the
generator's names and shapes and the encoder body the discriminator body's, so tickets transfer
(:data:`lth_jax.models.dcgan.GAN_TO_VAE`). The loss is :func:`lth_jax.objectives.vae_loss`.

Sampling takes an explicit key argument (no flax rng stream), so steps stay pure.

Example::

  from lth_jax.models import vae
  model = vae.VAE(width=64, channels=1, image_size=32, z_dim=32)
  variables = model.init(init_key, x, noise_key, train=False)
  (recon, mean, logvar), updates = model.apply(variables, x, noise_key, train=True,
                                               mutable=['batch_stats'])
  samples = model.apply(variables, key, 16, method=model.sample)            # [16, 32, 32, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax.models import dcgan
from lth_jax.models import layout


class VAE(nn.Module):
  """Gaussian-latent VAE on ``[B, image_size, image_size, channels]`` images in [-1, 1].

  Attributes:
    width: base channel count h of both halves.
    channels, image_size: image shape (``image_size`` a power of two >= 8).
    z_dim: latent size.
    encoder_widths: hidden widths of the encoder body (as ``dcgan.DiscriminatorBody.widths``).
    decoder_widths: hidden widths of the decoder (as ``dcgan.Generator.widths``).
    dtype, param_dtype: computation and params dtypes.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  z_dim: int = 32
  encoder_widths: Sequence[int] | None = None
  decoder_widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  def setup(self):
    shape = dict(width=self.width, channels=self.channels, image_size=self.image_size,
                 dtype=self.dtype, param_dtype=self.param_dtype)
    self.encoder = dcgan.Encoder(features=2 * self.z_dim, widths=self.encoder_widths, **shape)
    self.decoder = dcgan.Generator(z_dim=self.z_dim, widths=self.decoder_widths, **shape)

  def encode(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Posterior parameters ``(mean, logvar)``, each ``[B, z_dim]``."""
    stats = self.encoder(x, train=train)
    return stats[:, :self.z_dim], stats[:, self.z_dim:]

  def decode(self, z: jax.Array, *, train: bool, activate: bool = True) -> jax.Array:
    """Images ``[B, H, W, C]`` from latents ``[B, z_dim]`` (pre-tanh if not ``activate``)."""
    return self.decoder(z, train=train, activate=activate)

  def __call__(self, x: jax.Array, key: jax.Array, *,
               train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encodes, samples ``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` from ``key``,
    decodes.

    Args:
      x: images ``[B, image_size, image_size, channels]``.
      key: PRNG key of the reparameterisation noise.
      train: BatchNorm mode (see :class:`lth_jax.models.dcgan.Generator`).

    Returns:
      ``(recon [B, H, W, C], mean [B, z_dim], logvar [B, z_dim])``.
    """
    mean, logvar = self.encode(x, train=train)
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return self.decode(mean + jnp.exp(0.5 * logvar) * eps, train=train), mean, logvar

  def reconstruct(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Deterministic reconstruction: decodes the posterior mean."""
    return self.decode(self.encode(x, train=train)[0], train=train)

  def sample(self, key: jax.Array, n: int, *, train: bool = False) -> jax.Array:
    """``n`` images decoded from prior samples ``z ~ N(0, I)`` drawn with ``key``."""
    return self.decode(jax.random.normal(key, (n, self.z_dim)), train=train)

  def synflow_forward(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """All outputs without the final tanh, flattened per image: ``[B, H*W*C + z_dim]``.

    The decoder's pre-activation at the posterior mean, then ``logvar``, so the sum (SynFlow's
    objective) reaches every encoder-head weight.
    """
    mean, logvar = self.encode(x, train=train)
    out = self.decode(mean, train=train, activate=False)
    return jnp.concatenate([out.reshape(out.shape[0], -1), logvar], axis=-1)


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The VAE's channel groups (``params`` is ``{'encoder', 'decoder'}``): the encoder's
  (discriminator layout), then the decoder's (generator layout)."""
  return (dcgan.discriminator_channel_groups(params["encoder"], "encoder")
          + dcgan.generator_channel_groups(params["decoder"], "decoder"))

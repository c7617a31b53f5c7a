"""Fully connected ("linear") AutoEncoder, the paper's MNIST AE, with a deterministic code.

With hidden width ``h``: images ``[B, H, W, C]`` -> flatten -> ``encoder``: Dense(HWC -> h)-ReLU
-> ``code`` Dense(h -> z_dim) -> ``decoder``: Dense(z_dim -> h)-ReLU -> ``out`` Dense(h -> HWC)
-> reshape -> Tanh. Params ``{'encoder': {'dense0', ..., 'code'}, 'decoder': {'dense0', ...,
'out'}}`` (``dense{i}`` per hidden layer; more of them with longer ``widths``). Dense layers have
biases and flax's default LeCun-normal kernels. There is no BatchNorm (so no channel groups:
structured, channel-level pruning does not apply) and no ``batch_stats``; the ``train``
arguments exist only for the AE / VAE calling convention.

Any image side works (28x28 MNIST as the paper, or 32x32). The loss and the reported metric are
:func:`lth_jax.objectives.mse`; the methods are :class:`lth_jax.models.autoencoder.AutoEncoder`'s.

Example::

  from lth_jax.models import linear_autoencoder
  model = linear_autoencoder.AutoEncoder(width=linear_autoencoder.PAPER_WIDTH, channels=1,
                                         image_size=32, z_dim=32)
  variables = model.init(key, x, train=False)                  # {'params'}
  recon = model.apply(variables, x, train=True)                 # [B, 32, 32, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Table 1's 200K linear AE at 32x32x1 (z_dim 32): measured 204,000 params (+2.0%). (At the
# paper's 28x28 MNIST, width 128 gives its 209,968.)
PAPER_WIDTH = 96


def _hidden(widths: Sequence[int] | None, width: int) -> tuple[int, ...]:
  """The hidden sizes: ``widths`` (any number, none for a linear map) or ``(width,)``."""
  return (width,) if widths is None else tuple(int(w) for w in widths)


class Encoder(nn.Module):
  """Images ``[B, H, W, C]`` -> codes ``[B, z_dim]``.

  Attributes:
    z_dim: code size.
    width: hidden size h.
    widths: hidden sizes in layer order (default ``(width,)``).
    dtype, param_dtype: computation and params dtypes.
  """
  z_dim: int
  width: int = 64
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, features in enumerate(_hidden(self.widths, self.width)):
      x = nn.relu(nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"dense{i}")(x))
    return nn.Dense(self.z_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="code")(x)


class Decoder(nn.Module):
  """Codes ``[B, z_dim]`` -> images ``[B, image_size, image_size, channels]``.

  Attributes:
    channels, image_size: image shape.
    width: hidden size h.
    widths: hidden sizes in layer order (default ``(width,)``).
    dtype, param_dtype: computation and params dtypes.
  """
  channels: int
  image_size: int
  width: int = 64
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, activate: bool = True) -> jax.Array:
    for i, features in enumerate(_hidden(self.widths, self.width)):
      z = nn.relu(nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"dense{i}")(z))
    shape = (self.image_size, self.image_size, self.channels)
    x = nn.Dense(self.image_size ** 2 * self.channels, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="out")(z).reshape(z.shape[0], *shape)
    return jnp.tanh(x) if activate else x


class AutoEncoder(nn.Module):
  """Fully connected AE on ``[B, image_size, image_size, channels]`` images in [-1, 1].

  Attributes:
    width: hidden size h of both halves.
    channels, image_size: image shape (any side, e.g. 28 or 32).
    z_dim: code size.
    encoder_widths: hidden sizes of the encoder in layer order (default ``(width,)``).
    decoder_widths: hidden sizes of the decoder in layer order (default ``(width,)``).
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
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    self.encoder = Encoder(self.z_dim, self.width, self.encoder_widths, **dtypes)
    self.decoder = Decoder(self.channels, self.image_size, self.width, self.decoder_widths,
                           **dtypes)

  def encode(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Codes ``[B, z_dim]`` (``train`` has no effect: no BatchNorm)."""
    del train
    if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.channels):
      owner, size = type(self).__name__, self.image_size
      raise ValueError(f"{owner} expects images [B, {size}, {size}, {self.channels}]; "
                       f"got shape {x.shape}")
    return self.encoder(x)

  def decode(self, z: jax.Array, *, train: bool, activate: bool = True) -> jax.Array:
    """Images ``[B, H, W, C]`` from codes ``[B, z_dim]`` (pre-tanh if not ``activate``)."""
    del train
    return self.decoder(z, activate)

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

"""DCGAN (Radford et al. 2016) in the authors' layout, for 2^n-pixel NHWC images in [-1, 1].

With base width ``h`` and 32x32 images (64x64 adds one block; the hidden widths double per block):

* :class:`Generator`: ``z [B, z_dim]`` -> ConvT(z->4h, k4 s1 p0)-BN-ReLU -> ConvT(4h->2h, k4 s2 p1)
  -BN-ReLU -> ConvT(2h->h)-BN-ReLU -> ConvT(h->C)-Tanh -> ``[B, 32, 32, C]``.
  Submodules ``convt0..convt3``, ``bn0..bn2`` (``bn{i}`` follows ``convt{i}``).
* :class:`DiscriminatorBody`: Conv(C->h, k4 s2 p1)-LReLU(0.2) -> Conv(h->2h)-BN-LReLU ->
  Conv(2h->4h)-BN-LReLU -> features ``[B, 4, 4, 4h]``. Submodules ``conv0..conv2``,
  ``bn1..bn2`` (the first conv has no BN). ``norm='layer'`` / ``'none'`` replaces the BNs by
  LayerNorms ``ln1..ln2`` / nothing (the WGAN-GP critic, :mod:`lth_jax.models.wgan`).
* :class:`Discriminator`: ``body`` + ``head`` Conv(4h->1, k4 VALID) -> logits ``[B]``.
* :class:`Encoder`: ``body`` + ``head`` Conv(4h->features, k4 VALID) -> ``[B, features]``, the
  VAE / AE encoder: same param names and shapes as the discriminator apart from the head.

All transposed convolutions are :class:`lth_jax.layers.ConvTranspose` (fast gradients). Convs
followed by BatchNorm have no bias; the others (first D conv, output convs, heads) do.
Initialisation is the DCGAN standard (PyTorch ``weights_init``): conv kernels N(0, 0.02), BN
scales N(1, 0.02), biases and BN offsets 0. BatchNorm: momentum 0.9 (PyTorch's 0.1), eps
:data:`BN_EPSILON`, batch statistics in train mode, running averages (collection ``batch_stats``)
in eval mode.

``widths`` overrides the hidden channel counts (in layer order, e.g. ``(4h, 2h, h)`` for a 32x32
generator, ``(h, 2h, 4h)`` for its discriminator): channel pruning builds physically smaller
models this way.

Channel layout for channel pruning (:mod:`lth_jax.channels`):
:func:`generator_channel_groups` and :func:`discriminator_channel_groups` (also the VAE / AE
decoder and encoder), :func:`channel_groups` for the GAN's two-part params.

Param-tree correspondence with the VAE / AE (``{'encoder': {'body', 'head'}, 'decoder'}``), as
``/``-joined path prefixes: :data:`GAN_TO_VAE` (and its inverse :data:`VAE_TO_GAN`).

Example::

  from lth_jax.models import dcgan
  gen = dcgan.Generator(width=64, channels=1, image_size=32, z_dim=100)
  variables = gen.init(key, jnp.zeros((1, 100)), train=False)   # {'params', 'batch_stats'}
  images, updates = gen.apply(variables, z, train=True, mutable=['batch_stats'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax import layers
from lth_jax.models import layout

# GAN param subtree -> VAE/AE param subtree with identical names and shapes (``/``-joined paths
# into the two-part trees ``{'generator', 'discriminator'}`` and ``{'encoder', 'decoder'}``).
# The decoder needs the generator's z_dim; the encoder head (2 * z_dim outputs) has no GAN twin.
GAN_TO_VAE = {"generator": "decoder", "discriminator/body": "encoder/body"}
VAE_TO_GAN = {v: k for k, v in GAN_TO_VAE.items()}

KERNEL_INIT = nn.initializers.normal(0.02)
LEAKY_SLOPE = 0.2
BN_EPSILON = 1e-5
# DiscriminatorBody.norm: what follows its convs after the first.
NORMS = ("batch", "layer", "none")


def bn_scale_init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
  """DCGAN BatchNorm scale initialiser: N(1, 0.02)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def num_blocks(image_size: int) -> int:
  """Hidden layers per network: ``log2(image_size) - 2`` (3 for 32x32, 4 for 64x64)."""
  if image_size < 8 or image_size & (image_size - 1):
    raise ValueError(f"image_size must be a power of two >= 8 (e.g. 32 or 64), got {image_size}")
  return image_size.bit_length() - 3


def generator_widths(width: int, image_size: int) -> tuple[int, ...]:
  """Default hidden widths of the generator, in layer order: ``(4h, 2h, h)`` for 32x32."""
  return tuple(width * 2 ** i for i in reversed(range(num_blocks(image_size))))


def discriminator_widths(width: int, image_size: int) -> tuple[int, ...]:
  """Default hidden widths of the discriminator body, in layer order: ``(h, 2h, 4h)`` for 32x32."""
  return generator_widths(width, image_size)[::-1]


def _resolve(widths: Sequence[int] | None, default: tuple[int, ...], owner: str) -> tuple[int, ...]:
  if widths is None:
    return default
  widths = tuple(int(w) for w in widths)
  if len(widths) != len(default) or min(widths) < 1:
    raise ValueError(f"{owner}: widths {widths} must be {len(default)} positive channel counts "
                     f"(one per hidden layer, default {default})")
  return widths


def _batch_norm(train: bool, name: str, dtype: Any, param_dtype: Any) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                      scale_init=bn_scale_init, dtype=dtype, param_dtype=param_dtype, name=name)


def _check_images(x: jax.Array, image_size: int, channels: int, owner: str) -> None:
  if x.ndim != 4 or x.shape[1:] != (image_size, image_size, channels):
    raise ValueError(f"{owner} expects images [B, {image_size}, {image_size}, {channels}]; "
                     f"got shape {x.shape}")


class Generator(nn.Module):
  """DCGAN generator ``z [B, z_dim]`` -> images ``[B, image_size, image_size, channels]``.

  Attributes:
    width: base channel count h.
    channels: output image channels.
    image_size: output side (a power of two >= 8).
    z_dim: latent size.
    widths: hidden channel counts in layer order (default ``generator_widths(width, image_size)``).
    dtype: computation dtype (None: promoted from inputs and params, e.g. bfloat16 for mixed
      precision); param_dtype: params dtype.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  z_dim: int = 100
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool, activate: bool = True) -> jax.Array:
    """Generates images.

    Args:
      z: latents ``[B, z_dim]``.
      train: BatchNorm uses batch statistics and updates ``batch_stats`` (apply with
        ``mutable=['batch_stats']``) when True, running averages when False.
      activate: apply the final tanh (False returns the pre-activation, e.g. for SynFlow).

    Returns:
      ``[B, image_size, image_size, channels]``, in [-1, 1] when ``activate``.
    """
    if z.ndim != 2 or z.shape[1] != self.z_dim:
      raise ValueError(f"Generator expects z [B, {self.z_dim}]; got shape {z.shape}")
    hidden = _resolve(self.widths, generator_widths(self.width, self.image_size), "Generator")
    x = z.reshape(z.shape[0], 1, 1, self.z_dim)
    for i, features in enumerate(hidden):
      # The first layer maps the 1x1 latent to 4x4 (k4 s1 p0); the others double (k4 s2 p1).
      stride, pad = (1, 0) if i == 0 else (2, 1)
      x = layers.ConvTranspose(features, (4, 4), strides=stride, padding=pad, use_bias=False,
                               kernel_init=KERNEL_INIT, dtype=self.dtype,
                               param_dtype=self.param_dtype, name=f"convt{i}")(x)
      x = nn.relu(_batch_norm(train, f"bn{i}", self.dtype, self.param_dtype)(x))
    x = layers.ConvTranspose(self.channels, (4, 4), strides=2, padding=1, kernel_init=KERNEL_INIT,
                             dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"convt{len(hidden)}")(x)
    return jnp.tanh(x) if activate else x


class DiscriminatorBody(nn.Module):
  """DCGAN discriminator without its output conv: images -> features ``[B, 4, 4, widths[-1]]``.

  Attributes:
    width: base channel count h.
    channels: input image channels.
    image_size: input side (a power of two >= 8).
    widths: hidden channel counts in layer order (default
      ``discriminator_widths(width, image_size)``).
    norm: what follows every conv but the first: 'batch' (BatchNorm ``bn{i}``, DCGAN), 'layer'
      (LayerNorm ``ln{i}`` over each image's ``(H, W, C)``, the WGAN-GP critic; a gradient
      penalty is wrong with BatchNorm) or 'none'; the convs have a bias unless a norm follows.
    dtype, param_dtype: computation and params dtypes.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  widths: Sequence[int] | None = None
  norm: str = "batch"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, image_size, image_size, channels]`` to ``[B, 4, 4, widths[-1]]``."""
    _check_images(x, self.image_size, self.channels, "DiscriminatorBody")
    if self.norm not in NORMS:
      field = f"{type(self).__name__}.norm"
      raise ValueError(f"unknown {field} {self.norm!r}; expected one of {NORMS}")
    hidden = _resolve(self.widths, discriminator_widths(self.width, self.image_size),
                      "DiscriminatorBody")
    for i, features in enumerate(hidden):
      normed = i > 0 and self.norm != "none"
      x = nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=not normed,
                  kernel_init=KERNEL_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                  conv_general_dilated=layers.conv_general_dilated, name=f"conv{i}")(x)
      if normed and self.norm == "batch":
        x = _batch_norm(train, f"bn{i}", self.dtype, self.param_dtype)(x)
      elif normed:
        # Per image over (H, W, C), a learned scale and offset per channel (WGAN-GP's critic).
        x = nn.LayerNorm(epsilon=BN_EPSILON, reduction_axes=(1, 2, 3), feature_axes=-1,
                         dtype=self.dtype, param_dtype=self.param_dtype, name=f"ln{i}")(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    return x


def _head(features: int, dtype: Any, param_dtype: Any) -> nn.Conv:
  """The k4 VALID output conv mapping the body's 4x4 features to ``features`` per image."""
  return nn.Conv(features, (4, 4), padding="VALID", kernel_init=KERNEL_INIT, dtype=dtype,
                 param_dtype=param_dtype, conv_general_dilated=layers.conv_general_dilated,
                 name="head")


class Discriminator(nn.Module):
  """DCGAN discriminator: ``body`` (:class:`DiscriminatorBody`) + ``head`` conv -> logits ``[B]``.

  Also the WGAN critic (the logits are its scores; ``norm`` 'layer' or 'none' for WGAN-GP).

  Attributes: as :class:`DiscriminatorBody`.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  widths: Sequence[int] | None = None
  norm: str = "batch"
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, image_size, image_size, channels]`` to logits ``[B]``."""
    h = DiscriminatorBody(width=self.width, channels=self.channels, image_size=self.image_size,
                          widths=self.widths, norm=self.norm, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="body")(x, train=train)
    return _head(1, self.dtype, self.param_dtype)(h).reshape(x.shape[0])


class Encoder(nn.Module):
  """Discriminator-shaped encoder: ``body`` + ``head`` conv -> ``[B, features]``.

  Attributes: as :class:`DiscriminatorBody`, plus ``features``, the head's output size.
  """
  features: int
  width: int = 64
  channels: int = 1
  image_size: int = 32
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, image_size, image_size, channels]`` to ``[B, features]``."""
    h = DiscriminatorBody(width=self.width, channels=self.channels, image_size=self.image_size,
                          widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="body")(x, train=train)
    return _head(self.features, self.dtype, self.param_dtype)(h).reshape(x.shape[0], self.features)


# ------------------------------------------------------------------------------ channel layout
def generator_channel_groups(params: dict, part: str) -> list[layout.ChannelGroup]:
  """The channel groups of :class:`Generator` params (``convt0..convtN``, ``bn0..bn{N-1}``) at
  ``part``: hidden layer ``convt{i}`` feeds ``bn{i}`` and is read by ``convt{i+1}``; the image
  conv ``convtN`` keeps its outputs."""
  n = sum(1 for k in params if k.startswith("bn"))
  return [layout.ChannelGroup(f"{part}/convt{i}", f"{part}/bn{i}", f"{part}/convt{i + 1}",
                              int(params[f"convt{i}"]["kernel"].shape[-1]), BN_EPSILON)
          for i in range(n)]


def discriminator_channel_groups(params: dict, part: str) -> list[layout.ChannelGroup]:
  """The channel groups of :class:`Discriminator` or :class:`Encoder` params (``body/conv0..``,
  ``body/bn1..``, ``head``) at ``part``: body conv ``conv{i}`` feeds ``bn{i}`` and is read by
  ``conv{i+1}`` (the last one by ``head``, which keeps its outputs).

  ``conv0`` has no BatchNorm (``bn=None``, no γ to score): channel pruning keeps the kept
  fraction of ``bn1`` for it, ranked by its BN-scaled weights into ``conv1``. Keeping it dense
  instead would leave ``conv1``'s input full width and cap the discriminator's FLOPs cut near
  80% at a 0.7 channel fraction.
  """
  body = params["body"]
  n = sum(1 for k in body if k.startswith("conv"))
  groups = []
  for i in range(n):
    consumer = f"{part}/body/conv{i + 1}" if i + 1 < n else f"{part}/head"
    bn = f"{part}/body/bn{i}" if f"bn{i}" in body else None
    groups.append(layout.ChannelGroup(f"{part}/body/conv{i}", bn, consumer,
                                      int(body[f"conv{i}"]["kernel"].shape[-1]),
                                      None if bn is None else BN_EPSILON))
  return groups


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The GAN's groups (``params`` is ``{'generator', 'discriminator'}``), generator first."""
  return (generator_channel_groups(params["generator"], "generator")
          + discriminator_channel_groups(params["discriminator"], "discriminator"))

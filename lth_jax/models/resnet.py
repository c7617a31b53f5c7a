"""ResNet-DCGAN and ResNet-VAE: the CIFAR ResNets of Gulrajani et al. 2017 / Miyato et al. 2018.

For 2^n-pixel NHWC images in [-1, 1], with base width ``h`` (the residual stream's channels) and
32x32 images (64x64 adds one up block to G and one down block to D):

* :class:`Generator`: ``z [B, z_dim]`` -> ``dense`` (z -> 4x4xh) -> ``block0..block2``
  (:class:`UpBlock`, 4 -> 8 -> 16 -> 32) -> ``bn``-ReLU -> ``conv_out`` (h -> C, k3)-Tanh.
  An :class:`UpBlock` is ``bn1``-ReLU-up-``conv1`` (k3, ``hidden`` channels)-``bn2``-ReLU-``conv2``
  (k3, h) plus ``shortcut`` (up, k1 conv); up-sampling is nearest-neighbour x2.
* :class:`DiscriminatorBody`: ``block0`` (optimised first block: ``conv1``-ReLU-``conv2``-pool,
  shortcut pool-k1 conv), ``block1`` (down), ``block2..block3`` (same size, identity shortcut),
  all :class:`DownBlock` (pre-activation ReLU-``conv1``-ReLU-``conv2`` [-pool]), then ReLU ->
  features ``[B, 8, 8, h]``. Pooling is 2x2 average. No BatchNorm.
* :class:`Discriminator`: ``body`` + global *sum* pooling + dense ``head`` -> logits ``[B]``.
* :class:`Encoder`: ``body`` + global *mean* pooling (a VAE's posterior must not scale with the
  image area) + dense ``head`` -> ``[B, features]``.
* :class:`VAE`: :class:`lth_jax.models.vae.VAE` (the same methods: ``encode``, ``decode``,
  ``reconstruct``, ``sample``, ``synflow_forward``) with an :class:`Encoder` of ``2 * z_dim``
  features and a :class:`Generator` decoder: params ``{'encoder': {'body', 'head'},
  'decoder': <Generator>}``. With the GAN's ``width`` and ``z_dim``, the decoder has exactly the
  generator's names and shapes and the encoder body the discriminator body's, so tickets transfer
  through :data:`GAN_TO_VAE` (the DCGAN pair's prefixes).

Convolutions go through :mod:`lth_jax.layers` (both conv formulations apply). Initialisation as
Miyato et al.'s code: residual k3 convs Glorot-uniform with gain sqrt(2), shortcuts, dense layers
and ``conv_out`` Glorot-uniform, biases 0; BatchNorm momentum 0.9, eps :data:`BN_EPSILON`, scale
1. Convs followed by BatchNorm (``conv1`` of an up block) have no bias.

``widths`` overrides the ``hidden`` (``conv1``) channels of each block, in block order (default
``(h,) * blocks``): channel pruning builds physically smaller models this way. The residual
stream (``dense``, every ``conv2`` and ``shortcut``, ``bn1``, the final ``bn``) is summed across
blocks, so its channels are no prunable group; the prunable groups are each up block's
``conv1`` -> ``bn2`` -> ``conv2`` (:func:`generator_channel_groups`).

Example::

  from lth_jax.models import resnet
  gen = resnet.Generator(width=resnet.PAPER_WIDTH, channels=3, image_size=32, z_dim=128)
  disc = resnet.Discriminator(width=resnet.PAPER_WIDTH, channels=3, image_size=32)
  model = resnet.VAE(width=resnet.PAPER_WIDTH, channels=3, image_size=32, z_dim=128)
  (recon, mean, logvar), updates = model.apply(variables, x, noise_key, train=True,
                                               mutable=['batch_stats'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax import layers
from lth_jax.models import dcgan, layout, vae

# Table 1's 2.2M ResNet-DCGAN at 32x32x3 (z_dim 128): measured 2,257,924 params (+2.6%;
# G 1,204,099 incl. BatchNorm, D 1,053,825), Gulrajani et al.'s 128 channels.
PAPER_WIDTH = 128
# Table 1's 2.8M ResNet-VAE at 32x32x3 (z_dim 128): measured 2,855,923 params (+2.0%). At
# PAPER_WIDTH it has 2,290,819: a GAN <-> VAE transfer builds both at one width.
VAE_PAPER_WIDTH = 144
BN_EPSILON = 1e-5
# GAN param subtree -> VAE param subtree with identical names and shapes (as the DCGAN pair).
GAN_TO_VAE = dcgan.GAN_TO_VAE
VAE_TO_GAN = dcgan.VAE_TO_GAN

RESIDUAL_INIT = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")
GLOROT_INIT = nn.initializers.xavier_uniform()


def num_blocks(image_size: int) -> int:
  """Up blocks of the generator (down-sampling blocks of the discriminator, the first one
  included): ``log2(image_size) - 2`` (3 for 32x32, 4 for 64x64)."""
  return dcgan.num_blocks(image_size)


def _resolve(widths: Sequence[int] | None, n: int, width: int, owner: str) -> tuple[int, ...]:
  if widths is None:
    return (width,) * n
  widths = tuple(int(w) for w in widths)
  if len(widths) != n or min(widths) < 1:
    raise ValueError(f"{owner}: widths {widths} must be {n} positive channel counts (one per "
                     f"hidden layer, default {(width,) * n})")
  return widths


def _conv(features: int, kernel: int, init, name: str, module: nn.Module,
          use_bias: bool = True) -> nn.Conv:
  pad = (kernel - 1) // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                 kernel_init=init, dtype=module.dtype, param_dtype=module.param_dtype,
                 conv_general_dilated=layers.conv_general_dilated, name=name)


def _batch_norm(train: bool, name: str, module: nn.Module) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                      dtype=module.dtype, param_dtype=module.param_dtype, name=name)


def _upsample(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _downsample(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _check_images(x: jax.Array, image_size: int, channels: int, owner: str) -> None:
  if x.ndim != 4 or x.shape[1:] != (image_size, image_size, channels):
    raise ValueError(f"{owner} expects images [B, {image_size}, {image_size}, {channels}]; "
                     f"got shape {x.shape}")


class UpBlock(nn.Module):
  """Pre-activation residual block doubling the spatial size: ``[B, H, W, C]`` ->
  ``[B, 2H, 2W, features]``.

  Attributes:
    features: output channels (the residual stream).
    hidden: channels of ``conv1`` (normalised by ``bn2``).
    dtype, param_dtype: computation and params dtypes.
  """
  features: int
  hidden: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    h = nn.relu(_batch_norm(train, "bn1", self)(x))
    h = _conv(self.hidden, 3, RESIDUAL_INIT, "conv1", self, use_bias=False)(_upsample(h))
    h = nn.relu(_batch_norm(train, "bn2", self)(h))
    h = _conv(self.features, 3, RESIDUAL_INIT, "conv2", self)(h)
    return h + _conv(self.features, 1, GLOROT_INIT, "shortcut", self)(_upsample(x))


class DownBlock(nn.Module):
  """Residual block of the discriminator: ``[B, H, W, C]`` -> ``[B, H', W', features]``.

  Attributes:
    features: output channels (the residual stream).
    hidden: channels of ``conv1``.
    down: halve the spatial size (2x2 average pooling).
    first: the optimised first block (no pre-activation; shortcut pools, then convolves).
    dtype, param_dtype: computation and params dtypes.
  """
  features: int
  hidden: int
  down: bool
  first: bool = False
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x if self.first else nn.relu(x)
    h = nn.relu(_conv(self.hidden, 3, RESIDUAL_INIT, "conv1", self)(h))
    h = _conv(self.features, 3, RESIDUAL_INIT, "conv2", self)(h)
    if self.down:
      h = _downsample(h)
    if self.first:
      return h + _conv(self.features, 1, GLOROT_INIT, "shortcut", self)(_downsample(x))
    if self.down or x.shape[-1] != self.features:
      shortcut = _conv(self.features, 1, GLOROT_INIT, "shortcut", self)(x)
      return h + (_downsample(shortcut) if self.down else shortcut)
    return h + x


class Generator(nn.Module):
  """ResNet generator ``z [B, z_dim]`` -> images ``[B, image_size, image_size, channels]``.

  Attributes:
    width: channels h of the residual stream.
    channels: output image channels.
    image_size: output side (a power of two >= 8).
    z_dim: latent size.
    widths: ``conv1`` channels of each up block (default ``(h,) * num_blocks(image_size)``).
    dtype: computation dtype (None: promoted from inputs and params, e.g. bfloat16 for mixed
      precision); param_dtype: params dtype.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  z_dim: int = 128
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
    hidden = _resolve(self.widths, num_blocks(self.image_size), self.width, "Generator")
    x = nn.Dense(4 * 4 * self.width, kernel_init=GLOROT_INIT, dtype=self.dtype,
                 param_dtype=self.param_dtype, name="dense")(z)
    x = x.reshape(z.shape[0], 4, 4, self.width)
    for i, features in enumerate(hidden):
      x = UpBlock(self.width, features, dtype=self.dtype, param_dtype=self.param_dtype,
                  name=f"block{i}")(x, train=train)
    x = nn.relu(_batch_norm(train, "bn", self)(x))
    x = _conv(self.channels, 3, GLOROT_INIT, "conv_out", self)(x)
    return jnp.tanh(x) if activate else x


class DiscriminatorBody(nn.Module):
  """ResNet discriminator without pooling and head: images -> features ``[B, 8, 8, h]``.

  Attributes:
    width: channels h of the residual stream.
    channels: input image channels.
    image_size: input side (a power of two >= 8).
    widths: ``conv1`` channels of each block (default ``(h,) * (num_blocks(image_size) + 1)``).
    dtype, param_dtype: computation and params dtypes.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, image_size, image_size, channels]`` to ``[B, 8, 8, width]``.

    ``train`` has no effect (no BatchNorm); it keeps the discriminators' calling convention.
    """
    del train
    _check_images(x, self.image_size, self.channels, "DiscriminatorBody")
    down = num_blocks(self.image_size) - 1      # 32x32 -> 8x8
    hidden = _resolve(self.widths, down + 2, self.width, "DiscriminatorBody")
    for i, features in enumerate(hidden):
      x = DownBlock(self.width, features, down=i < down, first=i == 0, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"block{i}")(x)
    return nn.relu(x)


class Discriminator(nn.Module):
  """ResNet discriminator: ``body`` + global sum pooling + dense ``head`` -> logits ``[B]``.

  Attributes: as :class:`DiscriminatorBody`.
  """
  width: int = 64
  channels: int = 1
  image_size: int = 32
  widths: Sequence[int] | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps images ``[B, image_size, image_size, channels]`` to logits ``[B]``."""
    h = DiscriminatorBody(width=self.width, channels=self.channels, image_size=self.image_size,
                          widths=self.widths, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="body")(x, train=train)
    h = jnp.sum(h, axis=(1, 2))
    return nn.Dense(1, kernel_init=GLOROT_INIT, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="head")(h).reshape(x.shape[0])


class Encoder(nn.Module):
  """Discriminator-bodied encoder: ``body`` + global mean pooling + dense ``head`` ->
  ``[B, features]``.

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
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(self.features, kernel_init=GLOROT_INIT, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="head")(h)


class VAE(vae.VAE):
  """ResNet-VAE: :class:`lth_jax.models.vae.VAE` with the ResNet halves (see the module doc).

  Attributes: as :class:`lth_jax.models.vae.VAE` (``width`` is the residual stream's h;
  ``encoder_widths`` / ``decoder_widths`` as :class:`DiscriminatorBody` / :class:`Generator`
  ``widths``); ``z_dim`` defaults to the ResNet generator's 128, which transfer needs.
  """
  z_dim: int = 128

  def setup(self):
    shape = {"width": self.width, "channels": self.channels, "image_size": self.image_size,
             "dtype": self.dtype, "param_dtype": self.param_dtype}
    self.encoder = Encoder(features=2 * self.z_dim, widths=self.encoder_widths, **shape)
    self.decoder = Generator(z_dim=self.z_dim, widths=self.decoder_widths, **shape)


# ------------------------------------------------------------------------------ channel layout
def generator_channel_groups(params: dict, part: str) -> list[layout.ChannelGroup]:
  """The channel groups of :class:`Generator` params at ``part``: in each ``block{i}``,
  ``conv1`` feeds ``bn2`` and is read by ``conv2``. The residual stream's BatchNorms (each
  block's ``bn1``, the final ``bn``) normalise sums of several layers: no group."""
  blocks = sorted((k for k in params if k.startswith("block")), key=lambda k: int(k[5:]))
  return [layout.ChannelGroup(f"{part}/{b}/conv1", f"{part}/{b}/bn2", f"{part}/{b}/conv2",
                              int(params[b]["conv1"]["kernel"].shape[-1]), BN_EPSILON)
          for b in blocks]


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The ResNet-DCGAN's groups (``params`` is ``{'generator', 'discriminator'}``): the
  generator's only (the discriminator has no BatchNorm)."""
  return generator_channel_groups(params["generator"], "generator")


def vae_channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The ResNet-VAE's groups (``params`` is ``{'encoder', 'decoder'}``): the decoder's only."""
  return generator_channel_groups(params["decoder"], "decoder")

"""SNGAN (Miyato et al. 2018), the CNN of its Table 3, for 2^n-pixel NHWC images in [-1, 1].

With base width ``h`` and 32x32 images (64x64 adds one up block to G and one conv pair to D; the
hidden widths double per block):

* :class:`Generator`: ``z [B, z_dim]`` -> dense(z -> 4x4x8h)-BN-ReLU -> ConvT(8h->4h, k4 s2 p1)
  -BN-ReLU -> ConvT(4h->2h)-BN-ReLU -> ConvT(2h->h)-BN-ReLU -> Conv(h->C, k3 s1 p1)-Tanh ->
  ``[B, 32, 32, C]``. Submodules ``convt0..convt3``, ``bn0..bn3`` (``bn{i}`` follows
  ``convt{i}``), ``conv_out``. The dense layer ``convt0`` is written as a k4 transposed conv of
  the 1x1 latent (the same function, computed as one matrix product by
  :func:`lth_jax.layers.conv_transpose`), so its channels are its kernel's last axis.
* :class:`Discriminator`: spectrally normalised Conv(C->h, k3 s1 p1) -> Conv(h->h, k4 s2 p1) ->
  Conv(h->2h, k3) -> Conv(2h->2h, k4 s2) -> Conv(2h->4h, k3) -> Conv(4h->4h, k4 s2) ->
  Conv(4h->8h, k3), each followed by LeakyReLU(0.1), then the spectrally normalised dense
  ``head`` on the ``4x4x8h`` features (a k4 VALID conv, the same function) -> logits ``[B]``.
  Submodules ``conv0..conv6``, ``head`` (all :class:`SNConv`, with biases). No BatchNorm.

Convolutions go through :mod:`lth_jax.layers` (both conv formulations apply). Kernels N(0, 0.02)
and BN scales N(1, 0.02) as the DCGAN (:mod:`lth_jax.models.dcgan`, whose BatchNorm settings
these are); convs followed by BatchNorm have no bias.

Spectral normalisation (:class:`SNConv`): the kernel a layer uses is its param divided by its
largest singular value (of the kernel as a ``[-1, C_out]`` matrix), estimated by one
power-iteration step per call. The params stay the raw ``.../kernel`` leaves (masks and pruning
see them; a pruned entry, kept 0, stays 0 after the division). The power iteration's vector is
``batch_stats`` leaf ``.../u`` beside the layer's params (e.g. ``conv3/u``), updated only with
``train=True``. (``flax.linen.SpectralNorm`` does not fit: at init it stores the *normalised*
kernel as the param, and it keys its state ``'conv3/kernel/u'``, a ``/`` inside one key, which
the ``/``-joined paths of :mod:`lth_jax.channels` and :mod:`lth_jax.transfer` cannot address.)

``widths`` overrides the hidden channel counts (in layer order, e.g. ``(8h, 4h, 2h, h)`` for a
32x32 generator, ``(h, h, 2h, 2h, 4h, 4h, 8h)`` for its discriminator).

Example::

  from lth_jax.models import sngan
  gen = sngan.Generator(width=sngan.PAPER_WIDTH, channels=3, image_size=32, z_dim=128)
  disc = sngan.Discriminator(width=sngan.PAPER_WIDTH, channels=3, image_size=32)
  variables = disc.init(key, images, train=False)        # {'params', 'batch_stats'}
  logits, updates = disc.apply(variables, images, train=True, mutable=['batch_stats'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lth_jax import layers
from lth_jax.models import dcgan, layout

# Table 1's 6.7M SNGAN at 32x32x3 (z_dim 128): measured 6,740,612 params (+0.6%; G 3,804,739
# incl. BatchNorm, D 2,935,873).
PAPER_WIDTH = 64
LEAKY_SLOPE = 0.1
SN_EPSILON = 1e-12   # floor of the norms in the power iteration


def generator_widths(width: int, image_size: int) -> tuple[int, ...]:
  """Default hidden widths of the generator, in layer order: ``(8h, 4h, 2h, h)`` for 32x32."""
  return tuple(width * 2 ** i for i in reversed(range(dcgan.num_blocks(image_size) + 1)))


def discriminator_widths(width: int, image_size: int) -> tuple[int, ...]:
  """Default conv widths of the discriminator, in layer order: ``(h, h, 2h, 2h, 4h, 4h, 8h)``
  for 32x32 (a k3 s1 / k4 s2 pair per halving, then one k3 conv)."""
  pairs = dcgan.discriminator_widths(width, image_size)
  return tuple(w for w in pairs for _ in range(2)) + (2 * pairs[-1],)


def _resolve(widths: Sequence[int] | None, default: tuple[int, ...], owner: str) -> tuple[int, ...]:
  if widths is None:
    return default
  widths = tuple(int(w) for w in widths)
  if len(widths) != len(default) or min(widths) < 1:
    raise ValueError(f"{owner}: widths {widths} must be {len(default)} positive channel counts "
                     f"(one per hidden layer, default {default})")
  return widths


class Generator(nn.Module):
  """SNGAN generator ``z [B, z_dim]`` -> images ``[B, image_size, image_size, channels]``.

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
    hidden = _resolve(self.widths, generator_widths(self.width, self.image_size), "Generator")
    x = z.reshape(z.shape[0], 1, 1, self.z_dim)
    for i, features in enumerate(hidden):
      # The dense layer maps the 1x1 latent to 4x4 (k4 s1 p0); the others double (k4 s2 p1).
      stride, pad = (1, 0) if i == 0 else (2, 1)
      x = layers.ConvTranspose(features, (4, 4), strides=stride, padding=pad, use_bias=False,
                               kernel_init=dcgan.KERNEL_INIT, dtype=self.dtype,
                               param_dtype=self.param_dtype, name=f"convt{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=dcgan.BN_EPSILON,
                       scale_init=dcgan.bn_scale_init, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"bn{i}")(x)
      x = nn.relu(x)
    x = nn.Conv(self.channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=dcgan.KERNEL_INIT,
                dtype=self.dtype, param_dtype=self.param_dtype,
                conv_general_dilated=layers.conv_general_dilated, name="conv_out")(x)
    return jnp.tanh(x) if activate else x


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x), SN_EPSILON ** 2))


def spectral_normalize(kernel: jax.Array, u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One power-iteration step and the normalised kernel.

  Args:
    kernel: ``[..., C_out]``, read as the matrix ``W [-1, C_out]``.
    u: ``[C_out]``, the current estimate of W's top right singular vector.

  Returns:
    ``(kernel / sigma, new u)`` with ``sigma = v^T W u'``, ``v = normalise(W u)``,
    ``u' = normalise(W^T v)``; gradients flow through ``sigma`` (not through ``u``, ``v``), as in
    Miyato et al. A zero kernel (``sigma = 0``) is returned unchanged.
  """
  w = kernel.reshape(-1, kernel.shape[-1])
  v = _l2_normalize(w @ u)
  u = jax.lax.stop_gradient(_l2_normalize(w.T @ v))
  sigma = jax.lax.stop_gradient(v) @ w @ u
  return kernel / jnp.where(sigma != 0, sigma, 1), u


class SNConv(nn.Module):
  """A spectrally normalised convolution (NHWC / HWIO, through :mod:`lth_jax.layers`).

  Params ``kernel [kh, kw, C_in, features]`` and ``bias [features]``; ``batch_stats``: ``u
  [features]``, the power iteration's vector (N(0, 1) at init). Each call normalises the kernel
  by one power-iteration step from ``u`` (:func:`spectral_normalize`); ``train=True`` stores the
  new ``u`` (apply with ``mutable=['batch_stats']``), ``train=False`` stores nothing.

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)``.
    strides: ``(sh, sw)``.
    padding: ``((top, bottom), (left, right))`` or 'VALID' / 'SAME'.
    dtype, param_dtype: computation and params dtypes (the power iteration runs in the params').
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: Any = ((1, 1), (1, 1))
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Maps ``[B, H, W, C_in]`` to ``[B, H', W', features]``."""
    kernel = self.param("kernel", dcgan.KERNEL_INIT,
                        tuple(self.kernel_size) + (x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
    u = self.variable("batch_stats", "u",
                      lambda: jax.random.normal(self.make_rng("params"), (self.features,),
                                                self.param_dtype))
    kernel, new_u = spectral_normalize(kernel, u.value)
    if train and not self.is_initializing():
      u.value = new_u
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = layers.conv_general_dilated(x, kernel, self.strides, self.padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


class Discriminator(nn.Module):
  """Spectrally normalised SNGAN discriminator: images -> logits ``[B]``.

  Attributes:
    width: base channel count h.
    channels: input image channels.
    image_size: input side (a power of two >= 8).
    widths: conv channel counts in layer order (default
      ``discriminator_widths(width, image_size)``).
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
    """Maps images ``[B, image_size, image_size, channels]`` to logits ``[B]``.

    Args:
      x: images in [-1, 1].
      train: advance the spectral norms' power iterations and store them in ``batch_stats``
        (apply with ``mutable=['batch_stats']``); False stores nothing.
    """
    if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.channels):
      owner, size = type(self).__name__, self.image_size
      raise ValueError(f"{owner} expects images [B, {size}, {size}, {self.channels}]; "
                       f"got shape {x.shape}")
    hidden = _resolve(self.widths, discriminator_widths(self.width, self.image_size),
                      "Discriminator")
    dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    for i, features in enumerate(hidden):
      # Even layers k3 s1 p1 keep the size, odd ones k4 s2 p1 halve it; the last is k3.
      kernel, stride = (3, 1) if i % 2 == 0 else (4, 2)
      x = SNConv(features, (kernel, kernel), (stride, stride), name=f"conv{i}", **dtypes)(
          x, train=train)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    # The dense layer on the flattened 4x4 features, as a k4 VALID conv (the same function).
    x = SNConv(1, (4, 4), padding="VALID", name="head", **dtypes)(x, train=train)
    return x.reshape(x.shape[0])


def generator_channel_groups(params: dict, part: str) -> list[layout.ChannelGroup]:
  """The channel groups of :class:`Generator` params at ``part``: ``convt{i}`` feeds ``bn{i}``
  and is read by ``convt{i+1}``, the last one by ``conv_out`` (which keeps its outputs)."""
  n = sum(1 for k in params if k.startswith("bn"))
  return [layout.ChannelGroup(f"{part}/convt{i}", f"{part}/bn{i}",
                              f"{part}/convt{i + 1}" if i + 1 < n else f"{part}/conv_out",
                              int(params[f"convt{i}"]["kernel"].shape[-1]), dcgan.BN_EPSILON)
          for i in range(n)]


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The SNGAN's groups (``params`` is ``{'generator', 'discriminator'}``): the generator's only
  (the discriminator has no BatchNorm)."""
  return generator_channel_groups(params["generator"], "generator")

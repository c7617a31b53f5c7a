"""Layers: a transposed convolution whose gradients avoid XLA's slow kernel-gradient path.

``lax.conv_transpose`` (and so ``flax.linen.ConvTranspose``) differentiates its kernel through a
convolution with ``lhs_dilation``, which XLA CPU runs 10-20x slower than the forward pass: for a
DCGAN generator layer (batch 64, 8x8x128 -> 16x16x64) forward took ~20 ms, forward + gradients
~350-510 ms. :func:`conv_transpose` computes the same function, but its derivative rule
(a ``jax.custom_jvp``) writes the kernel tangent as a convolution *with the tangent as the input
image* and the (flipped) activations as a dilated kernel. Reverse mode transposes that into an
ordinary strided-conv kernel gradient (``rhs_dilation``, no ``lhs_dilation``), and the input
gradient is an ordinary strided convolution. Measured on 2 CPU cores: same outputs, forward
unchanged, forward + gradients 5-8x faster (that layer: ~60-80 ms); a whole width-64 DCGAN
G+D train step 2.8x faster. Being a JVP rule (not a ``custom_vjp``) it also supports forward
mode and every higher order (``jax.jvp``, ``jax.hessian``, GraSP's ``jvp`` of ``grad``).

A ``1x1`` input (the generator's first layer, ``z`` -> ``4x4``) is a matrix product, computed as
one ``einsum`` instead of a convolution over a mostly-padded image (forward ~16x faster).

Semantics are PyTorch's ``ConvTranspose2d`` (scatter form, no kernel flip), NHWC / HWIO::

  y[b, i*s - p + a, j*s - p + c, o] += x[b, i, j, ci] * kernel[a, c, ci, o]
  output size: (H - 1) * s - 2p + k

Equivalences (tested): ``conv_transpose(x, K, s, p)`` equals
``flax.linen.ConvTranspose(features, (k, k), (s, s), padding=((k-1-p, k-1-p),) * 2,
transpose_kernel=True)`` with flax kernel ``K.swapaxes(2, 3)`` (shape ``(k, k, out, in)``), and
equals the same flax layer with ``transpose_kernel=False`` and flax kernel ``K[::-1, ::-1]``.
A PyTorch weight ``W [in, out, kh, kw]`` is ``K = W.transpose(2, 3, 0, 1)``.

Two formulations of every convolution (:func:`conv_formulation`, read when a function is
traced): ``'xla'`` (XLA's convolutions, the transposed one with the derivative rule above; the
default) and ``'patches'``: matrix products and data movement only. A convolution is the input's
patches (strided slices of the padded input) times the kernel; a transposed convolution is the
input times the kernel (every tap's contribution), each tap's plane then added at its strided
place. Their gradients are again matrix products, slices and pads. Vmapped over tickets with
per-ticket kernels, XLA's convolution becomes a grouped one (slow on CPU and GPU, see
BENCHMARKS.md), while the patches formulation becomes one batched matrix product per layer,
whatever the number of tickets. DCGAN-family convolutions pass :func:`conv_general_dilated` to
flax's ``nn.Conv`` and the transposed ones use :func:`conv_transpose`; both follow the
formulation.

Example::

  from lth_jax import layers
  y = layers.conv_transpose(x, kernel, strides=2, padding=1)    # [B, 8, 8, 128] -> [B, 16, 16, 64]
  up = layers.ConvTranspose(64, kernel_size=(4, 4), strides=(2, 2), padding=1)
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")
# The kernel tangent as the convolution's *input* (batch = out channels, feature = in channels)
# and the activations as its kernel (out feature = batch): output [B, H', W', out].
_KERNEL_AS_INPUT = ("HWCN", "OHWI", "CHWN")


FORMULATIONS = ("xla", "patches")
_FORMULATION = contextvars.ContextVar("lth_jax_conv_formulation", default="xla")


@contextlib.contextmanager
def conv_formulation(name: str) -> Iterator[None]:
  """Convolutions traced inside the block use formulation ``name`` (one of :data:`FORMULATIONS`).

  The choice is made when a function is traced: jit the function inside the block, or call the
  block inside the function being traced (as :class:`lth_jax.parallel.TicketRunner` does).
  """
  if name not in FORMULATIONS:
    raise ValueError(f"unknown convolution formulation {name!r}; expected one of {FORMULATIONS}")
  token = _FORMULATION.set(name)
  try:
    yield
  finally:
    _FORMULATION.reset(token)


def _im2col(x, kernel_hw, strides, padding):
  """NHWC ``x`` -> patches ``[B, H', W', kh*kw*C]`` (order kh, kw, C: HWIO's), as strided slices
  of the padded input (exact; their gradient is pads and adds, no convolution)."""
  (kh, kw), (sh, sw) = kernel_hw, strides
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0),
                                           (0, 0, 0)))
  b, h, w, c = xp.shape
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  cols = [lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                    (1, sh, sw, 1)) for i in range(kh) for j in range(kw)]
  return jnp.concatenate(cols, axis=-1)


def _patches_conv(x, kernel, strides, padding, precision):
  """NHWC ``x`` * HWIO ``kernel``: patches ``[B, H', W', kh*kw*C]`` times ``[kh*kw*C, O]``."""
  patches = _im2col(x, kernel.shape[:2], strides, padding)
  flat = kernel.reshape(-1, kernel.shape[3]).astype(patches.dtype)
  return jnp.einsum("bhwk,ko->bhwo", patches, flat, precision=precision)


def _patches_conv_transpose(x, kernel, strides, padding, precision):
  """The transposed convolution as ``x`` times the kernel (one matrix product to every tap's
  contribution ``[B, H, W, kh, kw, O]``), then each tap's plane added at its strided place."""
  b, h, w, _ = x.shape
  kh, kw, c_in, c_out = kernel.shape
  (sh, sw), (ph, pw) = strides, padding
  taps = jnp.einsum("bhwi,iq->bhwq", x, kernel.transpose(2, 0, 1, 3).reshape(c_in, -1),
                    precision=precision).reshape(b, h, w, kh, kw, c_out)
  hf, wf = (h - 1) * sh + kh, (w - 1) * sw + kw
  zero = jnp.zeros((), taps.dtype)
  full = sum(lax.pad(taps[:, :, :, i, j], zero,
                     ((0, 0, 0), (i, hf - i - (h - 1) * sh - 1, sh - 1),
                      (j, wf - j - (w - 1) * sw - 1, sw - 1), (0, 0, 0)))
             for i in range(kh) for j in range(kw))
  return full[:, ph:hf - ph, pw:wf - pw]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         **kwargs) -> jax.Array:
  """``lax.conv_general_dilated`` in the current :func:`conv_formulation` (flax's ``nn.Conv``
  hook). 'patches' covers 2-D NHWC/HWIO convolutions without groups or dilation, the
  layers of the DCGAN-style models; anything else runs XLA's convolution."""
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  simple = (dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
            and feature_group_count == 1 and not kwargs and lhs.ndim == 4
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and all(d == 1 for d in (lhs_dilation or (1, 1))))
  if _FORMULATION.get() != "patches" or not simple:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    precision=precision, **kwargs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return _patches_conv(lhs, rhs, window_strides, padding, precision)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  pair = tuple(int(v) for v in value)
  if len(pair) != 2:
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
  return pair


def output_size(size: int, kernel: int, stride: int, padding: int) -> int:
  """Spatial output size of a transposed conv: ``(size - 1) * stride - 2 * padding + kernel``."""
  return (size - 1) * stride - 2 * padding + kernel


def _scatter_conv(x, kernel, strides, padding, precision):
  """The transposed conv as a convolution over the stride-dilated input (the forward pass)."""
  pads = [(k - 1 - p, k - 1 - p) for k, p in zip(kernel.shape[:2], padding)]
  return lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=strides,
                                  dimension_numbers=_NHWC, precision=precision)


def _kernel_as_input_conv(x, kernel, strides, padding, precision):
  """The same function, with ``kernel`` as the image and flipped ``x`` as a dilated kernel.

  Linear in ``kernel``. JAX transposes it w.r.t. ``kernel`` into a strided-conv-style kernel
  gradient (a convolution with ``rhs_dilation``), the fast path on XLA CPU.
  """
  pads = [((n - 1) * s - p,) * 2 for n, s, p in zip(x.shape[1:3], strides, padding)]
  return lax.conv_general_dilated(kernel, x[:, ::-1, ::-1], (1, 1), pads, rhs_dilation=strides,
                                  dimension_numbers=_KERNEL_AS_INPUT, precision=precision)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv_transpose(x, kernel, strides, padding, precision):
  return _scatter_conv(x, kernel, strides, padding, precision)


@functools.partial(_conv_transpose.defjvp, symbolic_zeros=True)
def _conv_transpose_jvp(strides, padding, precision, primals, tangents):
  x, kernel = primals
  x_dot, kernel_dot = tangents
  y = _scatter_conv(x, kernel, strides, padding, precision)
  zero = jax.custom_derivatives.SymbolicZero
  # The input term is transposed by JAX into a strided convolution of the cotangent (the input
  # gradient); the kernel term into a strided-conv kernel gradient.
  if isinstance(kernel_dot, zero):
    y_dot = _scatter_conv(x_dot, kernel, strides, padding, precision)
  elif isinstance(x_dot, zero):
    y_dot = _kernel_as_input_conv(x, kernel_dot, strides, padding, precision)
  else:
    y_dot = (_scatter_conv(x_dot, kernel, strides, padding, precision)
             + _kernel_as_input_conv(x, kernel_dot, strides, padding, precision))
  return y, y_dot


def conv_transpose(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 2,
                   padding: int | Sequence[int] = 1, *,
                   precision: lax.PrecisionLike = None) -> jax.Array:
  """PyTorch-style 2-D transposed convolution with fast derivatives (see the module docstring).

  Args:
    x: input ``[B, H, W, C_in]``.
    kernel: ``[kh, kw, C_in, C_out]`` (flax's HWIO layout; scatter semantics, no flip).
    strides: int or ``(sh, sw)``, the up-sampling factor.
    padding: int or ``(ph, pw)``, PyTorch's ``padding``: rows/columns cropped from each side of
      the full output.
    precision: passed to ``lax.conv_general_dilated`` / ``jnp.einsum``.

  Returns:
    ``[B, (H-1)*sh - 2*ph + kh, (W-1)*sw - 2*pw + kw, C_out]``, in the promoted dtype of
    ``x`` and ``kernel``.

  Raises:
    ValueError: on ranks, channel counts, negative padding or an empty output.
  """
  if x.ndim != 4 or kernel.ndim != 4:
    raise ValueError(f"conv_transpose needs x [B, H, W, C] and kernel [kh, kw, C_in, C_out]; "
                     f"got shapes {x.shape} and {kernel.shape}")
  if kernel.shape[2] != x.shape[3]:
    raise ValueError(f"conv_transpose: x has {x.shape[3]} channels but the kernel {kernel.shape} "
                     f"expects {kernel.shape[2]} (kernel layout is [kh, kw, C_in, C_out])")
  strides = _pair(strides, "strides")
  padding = _pair(padding, "padding")
  if min(strides) < 1 or min(padding) < 0:
    raise ValueError(f"conv_transpose needs strides >= 1 and padding >= 0; "
                     f"got strides={strides}, padding={padding}")
  out_hw = [output_size(n, k, s, p)
            for n, k, s, p in zip(x.shape[1:3], kernel.shape[:2], strides, padding)]
  if min(out_hw) < 1:
    raise ValueError(f"conv_transpose of a {x.shape[1:3]} input with kernel {kernel.shape[:2]}, "
                     f"strides {strides} and padding {padding} has empty output {out_hw}")
  dtype = jnp.result_type(x, kernel)
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if x.shape[1:3] == (1, 1):
    (ph, pw), (kh, kw) = padding, kernel.shape[:2]
    return jnp.einsum("bc,hwco->bhwo", x[:, 0, 0], kernel[ph:kh - ph, pw:kw - pw],
                      precision=precision)
  if _FORMULATION.get() == "patches":
    return _patches_conv_transpose(x, kernel, strides, padding, precision)
  return _conv_transpose(x, kernel, strides, padding, precision)


class ConvTranspose(nn.Module):
  """PyTorch-semantics ``ConvTranspose2d`` on NHWC inputs, built on :func:`conv_transpose`.

  Params: ``kernel [kh, kw, C_in, features]`` and, with ``use_bias``, ``bias [features]``.
  The defaults are the DCGAN x2 up-sampling block (k=4, s=2, p=1).

  Attributes:
    features: output channels.
    kernel_size: ``(kh, kw)`` or an int.
    strides: ``(sh, sw)`` or an int.
    padding: PyTorch's ``padding`` (int or pair); output size ``(H-1)*s - 2p + k``.
    use_bias: add a learned bias.
    dtype: computation dtype (None: promoted from the input and params).
    param_dtype: dtype of the params.
    precision: convolution precision.
    kernel_init, bias_init: initialisers (flax's defaults).
  """
  features: int
  kernel_size: int | Sequence[int] = (4, 4)
  strides: int | Sequence[int] = (2, 2)
  padding: int | Sequence[int] = 1
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: lax.PrecisionLike = None
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps ``[B, H, W, C_in]`` to ``[B, H', W', features]``."""
    if x.ndim != 4:
      raise ValueError(f"ConvTranspose {self.name!r} expects NHWC input [B, H, W, C]; "
                       f"got shape {x.shape}")
    kernel_size = _pair(self.kernel_size, "kernel_size")
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv_transpose(x, kernel, self.strides, self.padding, precision=self.precision)
    return y if bias is None else y + bias

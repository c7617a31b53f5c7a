"""Inception-v3 as used for FID (pytorch-fid's ``fid_inception_v3``), in Flax linen.

This is the network of the standard FID: torchvision's Inception3 with pytorch-fid's patched blocks
(FIDInceptionA/C/E_1: average pools that exclude padding; FIDInceptionE_2: a max pool), 1008 output
classes, no auxiliary head. It returns the 2048-d ``pool3`` features (FID, KID) and the 1008-class
logits (Inception Score). Module names equal the PyTorch attribute names, so each PyTorch state-dict
key maps mechanically to one leaf here (see :func:`from_state_dict` and :func:`to_state_dict`).

Weights are never downloaded. Obtain pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` from
:data:`FID_WEIGHTS_URL` yourself and pass its path, or convert it once to ``.npz`` (no torch needed
afterwards)::

  python -c "import torch, numpy as np; sd = torch.load('pt_inception-2015-12-05-6726825d.pth', weights_only=True, map_location='cpu'); np.savez('pt_inception-2015-12-05.npz', **{k: v.numpy() for k, v in sd.items()})"

Example::

  from lth_jax.models import inception
  variables = inception.load_variables('/path/pt_inception-2015-12-05.npz')
  pool3, logits = inception.InceptionV3().apply(variables, images)  # images: [N, 299, 299, 3]
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth")
INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_CLASSES = 1008
_BN_EPSILON = 1e-3

Padding = tuple[int, int]


class WeightsFileError(ValueError):
  """An Inception weights file that lth_jax cannot use (unreadable, or not pytorch-fid's FID
  state dict); the message names the path and the fix. A ``ValueError``, so the binaries print it
  as one line."""


class MissingWeightsKeyError(WeightsFileError, KeyError):
  """The weights lack a key of the FID state dict (a ``KeyError`` too)."""
  __str__ = ValueError.__str__   # KeyError's would quote the message


class TorchNotInstalledError(WeightsFileError, ImportError):
  """A ``.pth`` weights file needs PyTorch, which is not installed (an ``ImportError`` too)."""


class BasicConv2d(nn.Module):
  """Conv (no bias) → BatchNorm (running statistics, eps 1e-3) → ReLU, as torchvision's."""
  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Padding = (0, 0)
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=_BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average pool whose averages ignore the zero padding (TensorFlow's behaviour)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  """Mixed_5b/5c/5d: 35x35 block; output channels 224 + ``pool_features``."""
  pool_features: int
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: 35x35 → 17x17 reduction; output channels 480 + input channels."""
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b..6e: 17x17 block with factorised 7x7 convolutions; 768 output channels."""
  channels_7x7: int
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: 17x17 → 8x8 reduction; output channels 512 + input channels."""
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (``max_pool=False``) and Mixed_7c (``max_pool=True``): 8x8 blocks, 2048 channels.

  pytorch-fid's FIDInceptionE_1 averages without the padding; FIDInceptionE_2 max-pools instead (a
  quirk of the TensorFlow graph that the FID weights were trained with).
  """
  max_pool: bool
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID Inception-v3. Call with images ``[N, H, W, 3]`` scaled to [-1, 1].

  ``H, W`` should be 299 for standard FID (:func:`preprocess` resizes); the network is convolutional
  up to the global average pool, so any size >= 75 runs.

  Returns:
    ``(pool3 [N, 2048], logits [N, 1008])`` in float32.
  """
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    p = self.precision
    x = BasicConv2d(32, (3, 3), strides=(2, 2), precision=p, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
    x = _max_pool_valid(x)
    x = BasicConv2d(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
    x = _max_pool_valid(x)
    x = FIDInceptionA(32, precision=p, name="Mixed_5b")(x)
    x = FIDInceptionA(64, precision=p, name="Mixed_5c")(x)
    x = FIDInceptionA(64, precision=p, name="Mixed_5d")(x)
    x = InceptionB(precision=p, name="Mixed_6a")(x)
    x = FIDInceptionC(128, precision=p, name="Mixed_6b")(x)
    x = FIDInceptionC(160, precision=p, name="Mixed_6c")(x)
    x = FIDInceptionC(160, precision=p, name="Mixed_6d")(x)
    x = FIDInceptionC(192, precision=p, name="Mixed_6e")(x)
    x = InceptionD(precision=p, name="Mixed_7a")(x)
    x = FIDInceptionE(max_pool=False, precision=p, name="Mixed_7b")(x)
    x = FIDInceptionE(max_pool=True, precision=p, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(NUM_CLASSES, precision=p, name="fc")(pool3)
    return pool3, logits


def preprocess(images: jax.Array) -> jax.Array:
  """Images in [-1, 1] ``[N, H, W, C]`` (C = 1 or 3) → ``[N, 299, 299, 3]`` float32.

  Bilinear resize without antialiasing (torch ``F.interpolate(mode='bilinear',
  align_corners=False)``, as pytorch-fid); grayscale is repeated over 3 channels. Resizing is linear,
  so resizing in [-1, 1] equals pytorch-fid's resize in [0, 1] followed by ``2x - 1``.

  Raises:
    ValueError: if ``images`` is not 4-D with 1 or 3 channels.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception expects images [N, H, W, C] with C in (1, 3); got shape "
                     f"{tuple(images.shape)}.")
  images = jnp.asarray(images, jnp.float32)
  n, h, w, c = images.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    images = jax.image.resize(images, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
  if c == 1:
    images = jnp.repeat(images, 3, axis=-1)
  return images


def variable_shapes() -> dict:
  """Shapes/dtypes (``jax.ShapeDtypeStruct``) of ``{'params', 'batch_stats'}``, without computing."""
  model = InceptionV3()
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)


def _torch_key(collection: str, path: Sequence[str]) -> tuple[str, bool]:
  """Flax leaf ``(collection, *path)`` → (PyTorch state-dict key, whether to transpose)."""
  *modules, leaf = path
  prefix = ".".join(modules)
  if collection == "batch_stats":
    return f"{prefix}.running_{leaf}", False
  if leaf == "kernel":
    return f"{prefix}.weight", True
  if leaf == "scale":
    return f"{prefix}.weight", False
  return f"{prefix}.bias", False


def _to_torch_layout(kernel: np.ndarray) -> np.ndarray:
  """Flax conv ``[kh, kw, in, out]`` → torch ``[out, in, kh, kw]``; dense ``[in, out]`` → transposed."""
  return kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T


def _from_torch_layout(weight: np.ndarray) -> np.ndarray:
  return weight.transpose(2, 3, 1, 0) if weight.ndim == 4 else weight.T


def to_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
  """Flax ``{'params', 'batch_stats'}`` → pytorch-fid state dict (PyTorch names and layouts).

  The inverse of :func:`from_state_dict`; useful to write test weights or to export.
  """
  out = {}
  for (collection, *path), value in traverse_util.flatten_dict(dict(variables)).items():
    key, transpose = _torch_key(collection, path)
    value = np.asarray(value, np.float32)
    out[key] = _to_torch_layout(value) if transpose else value
  return out


def from_state_dict(state_dict: Mapping[str, np.ndarray], *, source: str = "state dict") -> dict:
  """pytorch-fid state dict (``Mixed_5b.branch1x1.conv.weight``, ...) → Flax variables.

  Extra keys (e.g. ``num_batches_tracked``) are ignored.

  Args:
    state_dict: PyTorch-named arrays in PyTorch layouts.
    source: where the dict came from, for error messages (e.g. the file path).

  Returns:
    ``{'params': ..., 'batch_stats': ...}`` of float32 numpy arrays for :class:`InceptionV3`.

  Raises:
    MissingWeightsKeyError: naming the first expected key that is missing (a ``KeyError``).
    WeightsFileError: naming the first key whose shape is wrong (a ``ValueError``).
  """
  shapes = variable_shapes()
  flat = {}
  ordered = {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
  for (collection, *path), spec in traverse_util.flatten_dict(ordered).items():
    key, transpose = _torch_key(collection, path)
    if key not in state_dict:
      raise MissingWeightsKeyError(
          f"Inception weights from {source} lack key {key!r} (expected pytorch-fid's FID Inception "
          f"state dict, {FID_WEIGHTS_URL.rsplit('/', 1)[-1]}; found {len(state_dict)} keys).")
    value = np.asarray(state_dict[key], np.float32)
    value = _from_torch_layout(value) if transpose else value
    if value.shape != spec.shape:
      expected = _to_torch_layout(np.empty(spec.shape)).shape if transpose else spec.shape
      raise WeightsFileError(f"Inception weights from {source}: key {key!r} has shape "
                             f"{tuple(np.shape(state_dict[key]))}, expected {tuple(expected)}.")
    flat[(collection, *path)] = value
  return traverse_util.unflatten_dict(flat)


def _read_state_dict(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as e:
      raise WeightsFileError(
          f"Inception weights {path!r} are not a readable .npz of the FID state dict "
          f"({type(e).__name__}: {e}); convert pytorch-fid's .pth again (one line, see "
          "lth_jax/models/inception.py's docstring).") from e
  if path.endswith((".pth", ".pt")):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise TorchNotInstalledError(
          f"Reading {path} needs PyTorch (pip install torch). Alternatively convert it once to .npz "
          "where torch is available (one line, see lth_jax/models/inception.py's docstring) and pass "
          "the .npz path.") from e
    try:
      state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds for a bad file
      raise WeightsFileError(
          f"Inception weights {path!r} are not a readable PyTorch state dict "
          f"({type(e).__name__}: {e}); download pytorch-fid's {FID_WEIGHTS_URL.rsplit('/', 1)[-1]} "
          "again.") from e
    if not isinstance(state, Mapping):
      raise WeightsFileError(f"Inception weights {path!r} hold a {type(state).__name__}, not a "
                             f"state dict; use pytorch-fid's {FID_WEIGHTS_URL.rsplit('/', 1)[-1]}.")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}
  raise WeightsFileError(f"Unknown Inception weights format {path!r}: expected a pytorch-fid .pth "
                         "state dict or an .npz with the same keys.")


def load_variables(path: str | os.PathLike) -> dict:
  """Reads the FID Inception weights (``.pth`` via torch if installed, or ``.npz``).

  Args:
    path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` or its ``.npz`` conversion
      (``~`` is expanded).

  Returns:
    Flax variables ``{'params', 'batch_stats'}`` for :class:`InceptionV3`.

  Raises:
    FileNotFoundError: if ``path`` does not exist (the message says where to get the weights).
    TorchNotInstalledError: for a ``.pth`` file when torch is not installed (an ``ImportError``).
    WeightsFileError: an unknown file format, an unreadable file, or not the FID Inception state
      dict (:class:`MissingWeightsKeyError`, also a ``KeyError``, for a missing key).
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Inception FID weights not found at {path!r}. Nothing is downloaded by lth_jax: download "
        f"{FID_WEIGHTS_URL} yourself and pass its path (or its .npz conversion, see "
        "lth_jax/models/inception.py).")
  return from_state_dict(_read_state_dict(path), source=path)

"""Analytic FLOPs of the models' layers, with unstructured masks and channel-pruned widths.

Each layer's input and output shapes are read by tracing one forward pass of the module with
:func:`jax.eval_shape` (nothing is computed) under :func:`flax.linen.intercept_methods`.
Per sample (batch 1), counting a multiply-add as 2 FLOPs:

* conv (``nn.Conv``): ``2 k_h k_w (C_in / groups) C_out H_out W_out``;
* transposed conv (``lth_jax.layers.ConvTranspose``, ``nn.ConvTranspose``), counted on its
  *input* grid (every input pixel is scattered through the whole kernel):
  ``2 k_h k_w C_in C_out H_in W_in``;
* dense: ``2 in out``;
* a bias adds 1 FLOP per output element; BatchNorm :data:`BN_FLOPS_PER_ELEMENT` (= 3: subtract
  the mean, multiply by ``γ / σ``, add ``β``, as in eval mode);
* activations, reshapes and the latent sampling are not counted (under 1% of these models).

An unstructured mask scales a layer's kernel FLOPs by its kernel's density (only nonzero weights
count; the bias and BatchNorm terms stay). A channel-pruned model is counted as what it
physically is: a model built with smaller ``widths``.

XLA's ``compiled.cost_analysis()['flops']`` also counts 2 per multiply-add (and 1 per bias add),
but skips kernel taps that fall on padding (and on the holes of a transposed conv's dilated
input). The analytic count keeps the border taps (the usual convention), so it is 1.20x XLA's
count on the 32x32 DCGAN, VAE and AE forward passes (tests/test_flops.py checks
1.0 <= analytic / XLA <= 1.25, and equality for unpadded layers). For a whole compiled train
step, XLA's count is 0.84x (VAE) and 0.76x (DCGAN) the convention below at width 32: the border
taps, plus (GAN) the D pass of G's loss, which needs no weight gradients.

Training FLOPs follow the usual convention: a pass that is back-propagated costs
:data:`TRAIN_FACTOR` = 3 forward passes (the forward and a backward of twice its cost). A train
step runs the family's passes per image (``Family.train_passes``, set by its builder):

* GAN (:mod:`lth_jax.families.gan`): D on the real batch and D on the fake batch (D's step), G
  on z (its VJP is reused for G's step), D on the fake batch again (G's loss) —
  ``3 B (3 D + G)`` with one D step per G step; the last D pass only back-propagates to its
  input, so the convention slightly over-counts D, alike for every model;
* AE / VAE (:mod:`lth_jax.families.autoencoding`): encoder and decoder once —
  ``3 B (E + Dec)``.

Example::

  from lth_jax import flops
  per_part = flops.family_forward(family)               # {'generator': 9.1e6, ...} per sample
  step = flops.train_step(family, masks=ticket_masks)   # FLOPs of one train step
  print(flops.table(flops.family_layers(family)))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from lth_jax import layers
from lth_jax import masks as masks_lib

PyTree = Any
BN_FLOPS_PER_ELEMENT = 3
TRAIN_FACTOR = 3


class LayerCount(NamedTuple):
  """One layer's forward FLOPs per sample."""
  path: str                   # module path, e.g. 'generator/convt1' or 'encoder/body/conv0'
  kind: str                   # 'conv' | 'conv_transpose' | 'dense' | 'batch_norm'
  input_shape: tuple          # per sample (batch axis dropped)
  output_shape: tuple
  density: float              # fraction of kernel weights counted (1.0 without a mask)
  flops: float


def _kind(module: nn.Module) -> str | None:
  if isinstance(module, (layers.ConvTranspose, nn.ConvTranspose)):
    return "conv_transpose"
  if isinstance(module, nn.Conv):
    return "conv"
  if isinstance(module, nn.Dense):
    return "dense"
  if isinstance(module, nn.BatchNorm):
    return "batch_norm"
  return None


def _layer_flops(kind: str, module: nn.Module, x_shape: tuple, y_shape: tuple,
                 density: float) -> float:
  """Forward FLOPs per sample from per-sample input/output shapes (channels last)."""
  out_elements = float(np.prod(y_shape))
  if kind == "batch_norm":
    return BN_FLOPS_PER_ELEMENT * out_elements
  c_in, c_out = x_shape[-1], y_shape[-1]
  if kind == "dense":
    macs = c_in * c_out * float(np.prod(y_shape[:-1]))
  else:
    kernel = module.kernel_size
    kernel = (kernel,) * (len(x_shape) - 1) if isinstance(kernel, int) else tuple(kernel)
    taps = float(np.prod(kernel))
    if kind == "conv":
      macs = taps * (c_in / module.feature_group_count) * c_out * float(np.prod(y_shape[:-1]))
    else:
      macs = taps * c_in * c_out * float(np.prod(x_shape[:-1]))
  bias = out_elements if module.use_bias else 0.0
  return 2.0 * macs * density + bias


def _densities(masks: PyTree | None) -> dict[str, float]:
  """``{module path: kernel density}`` from a mask tree (``'a/b/kernel'`` -> ``'a/b'``)."""
  if masks is None:
    return {}
  out = {}
  for path, m in masks_lib.leaves_with_paths(masks):
    if m is not None and path.endswith("/kernel"):
      out[path[:-len("/kernel")]] = float(np.mean(np.asarray(m, dtype=np.float32)))
  return out


def count_layers(module: nn.Module, variables: PyTree, *args, masks: PyTree | None = None,
                 prefix: str = "", method: str | None = None, **kwargs) -> list[LayerCount]:
  """Per-layer forward FLOPs of ``module.apply(variables, *args, **kwargs)``, per sample.

  Args:
    module: a flax.linen module.
    variables: its variables, or their shapes (``jax.ShapeDtypeStruct`` leaves are enough).
    *args, **kwargs: the call's arguments; the first array argument's leading axis is the batch.
    masks: optional mask tree for ``variables['params']``; a kernel's FLOPs scale by its density.
    prefix: prepended to every layer path (e.g. ``'generator'``).
    method: name of the module method to call (default ``__call__``).

  Returns:
    One :class:`LayerCount` per conv / transposed conv / dense / BatchNorm call, in call order.
  """
  densities = _densities(masks)
  records = []

  def interceptor(next_fun, call_args, call_kwargs, context):
    out = next_fun(*call_args, **call_kwargs)
    kind = _kind(context.module)
    if kind is not None and context.method_name == "__call__":
      records.append((kind, context.module, "/".join(context.module.scope.path),
                      tuple(call_args[0].shape), tuple(out.shape)))
    return out

  def forward(v, *a):
    with nn.intercept_methods(interceptor):
      return module.apply(v, *a, method=method, **kwargs)

  jax.eval_shape(forward, variables, *args)
  batch = next(np.shape(a)[0] for a in jax.tree.leaves(args) if np.ndim(a) > 0)
  result = []
  for kind, mod, path, x_shape, y_shape in records:
    if x_shape[0] != batch:
      raise ValueError(f"layer {path!r} sees batch {x_shape[0]}, not the input batch {batch}; "
                       "count_layers needs layers that keep the batch axis first")
    density = 1.0 if kind == "batch_norm" else densities.get(path, 1.0)
    full = f"{prefix}/{path}" if prefix else path
    result.append(LayerCount(full, kind, x_shape[1:], y_shape[1:], density,
                             _layer_flops(kind, mod, x_shape[1:], y_shape[1:], density)))
  return result


def total(counts: list[LayerCount]) -> float:
  """Sum of the layers' FLOPs."""
  return float(sum(c.flops for c in counts))


def family_layers(family, masks: PyTree | None = None) -> list[LayerCount]:
  """Per-layer forward FLOPs per sample of a :class:`lth_jax.steps.Family` (eval mode).

  Args:
    family: the family (its modules carry the widths, so a channel-pruned family counts small).
    masks: optional mask tree shaped like the family's params (``{part: ...}``).

  Returns:
    Layers whose paths start with the part name (``'generator/convt0'``, ``'encoder/body/...'``).
  """
  out = []
  for prefix, module, args, kwargs in family.forward_passes():
    variables = jax.eval_shape(lambda m=module, a=args, k=kwargs: m.init(jax.random.key(0), *a,
                                                                         **k))
    part_masks = masks[prefix] if masks is not None and prefix else masks
    out += count_layers(module, variables, *args, masks=part_masks, prefix=prefix, **kwargs)
  return out


def family_forward(family, masks: PyTree | None = None) -> dict[str, float]:
  """Forward FLOPs per sample of each part: ``{part: flops}``."""
  result = {p: 0.0 for p in family.parts}
  for c in family_layers(family, masks):
    result[c.path.split("/", 1)[0]] += c.flops
  return result


def train_step(family, masks: PyTree | None = None) -> float:
  """FLOPs of one train step of ``family.batch_size`` images (the module docstring's convention)."""
  forward = family_forward(family, masks)
  passes = family.train_passes
  return float(TRAIN_FACTOR * family.batch_size * sum(passes[p] * forward[p] for p in passes))


def sample(family, masks: PyTree | None = None) -> float:
  """Forward FLOPs per generated (GAN, VAE) or decoded (AE) image: the family's sampling part
  (the generator / decoder)."""
  return family_forward(family, masks)[family.sampling_part]


def num_params(params: PyTree, masks: PyTree | None = None) -> int:
  """Number of parameters; with ``masks``, pruned kernel entries are not counted."""
  size = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(params))
  if masks is None:
    return size
  kept, total_prunable = masks_lib.counts(masks)
  return size - total_prunable + int(kept)


def table(counts: list[LayerCount]) -> str:
  """An aligned text table of per-layer FLOPs with a total row."""
  rows = [(c.path, c.kind, "x".join(map(str, c.input_shape)), "x".join(map(str, c.output_shape)),
           f"{c.density:.3f}", f"{c.flops:,.0f}") for c in counts]
  rows.append(("TOTAL", "", "", "", "", f"{total(counts):,.0f}"))
  head = ("layer", "kind", "input", "output", "density", "flops")
  widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.rjust(w) if i >= 4 else c.ljust(w)
                            for i, (c, w) in enumerate(zip(r, widths)))
  return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


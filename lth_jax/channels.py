"""Channel pruning (network slimming, Liu et al. 2017): score, switch off and remove channels.

What a channel group is comes from the model: each model lists its groups beside its definition
(:class:`lth_jax.models.layout.ChannelGroup`: the layer producing the channels, its BatchNorm, the
layer reading them), and a family exposes them as ``steps.Family.channel_groups``
(:func:`family_groups`). Nothing here knows a layer name.

* :func:`channel_masks` scores channels by their BatchNorm's ``|γ|`` with ONE threshold over all
  groups (or per part, or per layer); every layer keeps >= 1 channel. A group without BatchNorm
  (no γ) keeps the kept fraction of the BatchNorm group that reads it, ranked by how much each
  channel feeds that layer's kept, scaled outputs,
  ``sum_{h,w,o} |W_consumer[h, w, c, o]| * keep_o * |γ_o| / sqrt(var_o + eps)``; read by a layer
  without BatchNorm, it stays whole. Layers that are no group (output convs, heads) keep their
  outputs.
* :func:`mask_channels`: a pruned channel in the big model is exactly a removed channel in the
  small one: the producer's kernel slice and bias and the channel's BatchNorm γ *and* β are zero,
  so the post-BN (or post-bias) activation is exactly 0 in eval and train mode, and ReLU /
  LeakyReLU keep it 0.
* :func:`slice_channels`, :func:`slice_opt_state`, :func:`channel_widths`: the kept channels
  copied into a *physically smaller* model (its params, BatchNorm statistics, optimizer state and
  the widths to build it with ``steps.make_family(widths=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import steps as steps_lib
from lth_jax.models import layout
from lth_jax.models.layout import ChannelGroup

PyTree = Any


def family_groups(family: steps_lib.Family, params: PyTree, parts) -> list[ChannelGroup]:
  """The channel groups of ``parts`` in the family's layout, in layer order.

  Raises:
    ValueError: the family lists no channel groups, or ``parts`` names a part it does not have.
  """
  if family.channel_groups is None:
    raise ValueError(f"family {family.name!r} has no channel layout (Family.channel_groups is "
                     "None: no BatchNorm channels to score); channel pruning (structured "
                     "early-bird) needs one: use unstructured pruning")
  unknown = sorted(set(parts) - set(family.parts))
  if unknown:
    raise ValueError(f"parts {unknown} are not parts of {family.name} (parts: {family.parts})")
  return [g for g in family.channel_groups(params) if layout.part(g) in parts]


def _get(tree: PyTree, path: str):
  node = tree
  for key in path.split("/"):
    node = node[key]
  return node


def _top_k(score: jax.Array, k) -> jax.Array:
  """Bool mask of the ``k`` highest scores (ties: the lower index wins); ``k`` may be traced."""
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
  return rank < k


def channel_masks(params: PyTree, batch_stats: PyTree, groups: list[ChannelGroup],
                  sparsity, *, scope: str = "global") -> dict[str, jax.Array]:
  """Network-slimming channel masks: ``{group name: bool [channels]}`` (True = kept).

  BatchNorm groups: the ``round(sparsity * n)`` smallest ``|γ|`` of all their ``n`` channels are
  pruned with one global threshold (``scope='layerwise'``: per layer; ``sparsity`` a mapping
  ``{part: fraction}``: one threshold per part); a layer left empty keeps its largest ``|γ|``.
  A group without BatchNorm keeps the kept fraction of the BatchNorm group it feeds, ranked
  by its BN-scaled outgoing weights (module docstring); with no such group it is
  kept whole. Pure jnp (jit-able; ``sparsity`` may be traced).
  """
  bn_groups = [g for g in groups if g.bn is not None]
  if not bn_groups:
    raise ValueError("no BatchNorm channels to score: structured early-bird needs BatchNorm layers "
                     "in the pruned parts")
  scores = {g.name: jnp.abs(_get(params, g.bn + "/scale")) for g in bn_groups}
  if isinstance(sparsity, Mapping):
    missing = sorted({layout.part(g) for g in bn_groups} - set(sparsity))
    if missing:
      raise ValueError(f"no sparsity for the pruned part(s) {missing} in {dict(sparsity)}")
    pools = [([g for g in bn_groups if layout.part(g) == part], fraction)
             for part, fraction in sparsity.items()]
  else:
    pools = [(bn_groups, sparsity)]
  kept = {}
  for pool, fraction in pools:
    kept.update(pruning.to_sparsity({g.name: scores[g.name] for g in pool},
                                    {g.name: jnp.ones(g.size, bool) for g in pool},
                                    fraction, scope=scope))
  out = {}
  for g in groups:
    if g.bn is not None:
      keep, score = kept[g.name], scores[g.name]
      best = jnp.arange(g.size) == jnp.argmax(score)
      out[g.name] = keep | (best & ~jnp.any(keep))
  by_name = {g.name: g for g in groups}
  for g in groups:
    if g.bn is not None:
      continue
    nxt = by_name.get(g.consumer)
    if nxt is None or nxt.bn is None:
      out[g.name] = jnp.ones(g.size, bool)
      continue
    gain = (out[nxt.name] * jnp.abs(_get(params, nxt.bn + "/scale"))
            * jax.lax.rsqrt(_get(batch_stats, nxt.bn + "/var") + nxt.bn_epsilon))
    score = jnp.einsum("hwco,o->c", jnp.abs(_get(params, g.consumer + "/kernel")), gain)
    k = jnp.maximum(1, jnp.round(jnp.mean(out[nxt.name]) * g.size)).astype(jnp.int32)
    out[g.name] = _top_k(score, k)
  return {g.name: out[g.name] for g in groups}


def mask_channels(params: PyTree, cmasks: dict, groups: list[ChannelGroup]) -> PyTree:
  """The big model with pruned channels switched off: producer kernel slice, bias, γ and β = 0.

  Returns new containers and arrays (``params`` stays valid when the result is donated)."""
  keeps = {}
  for g in groups:
    keep = jnp.asarray(cmasks[g.name])
    keeps.update({f"{g.name}/kernel": keep, f"{g.name}/bias": keep})
    if g.bn is not None:
      keeps.update({f"{g.bn}/scale": keep, f"{g.bn}/bias": keep})

  def switch_off(path, x):
    keep = keeps.get(masks_lib.path_str(path))
    return jnp.copy(x) if keep is None else jnp.where(keep, x, 0.0)

  return jax.tree_util.tree_map_with_path(switch_off, params)


def _channel_takes(cmasks: dict, groups: list[ChannelGroup]) -> dict[str, list]:
  """``{leaf path: [(axis, kept indices), ...]}``: what the smaller model keeps of each leaf.

  The producer's kernel keeps its output axis' kept channels (and its bias), the consumer's kernel
  its input axis', the BatchNorm's scale, bias, mean and var theirs. Paths name params and
  ``batch_stats`` leaves alike.
  """
  takes: dict[str, list] = {}
  for g in groups:
    idx = np.flatnonzero(np.asarray(cmasks[g.name]))
    if idx.size == 0:
      raise ValueError(f"channel mask of {g.name!r} keeps no channel; every layer needs >= 1")
    takes.setdefault(f"{g.name}/kernel", []).append((-1, idx))
    takes.setdefault(f"{g.name}/bias", []).append((0, idx))
    takes.setdefault(f"{g.consumer}/kernel", []).append((-2, idx))
    if g.bn is not None:
      for leaf in ("scale", "bias", "mean", "var"):
        takes.setdefault(f"{g.bn}/{leaf}", []).append((0, idx))
  return takes


def _slice_leaf(leaf: jax.Array, takes) -> jax.Array | np.ndarray:
  """The kept entries of ``leaf``, taken on the host (NumPy): one device-to-host copy instead of
  one compiled ``take`` per leaf shape, which on a GPU is a compilation each."""
  for axis, idx in takes:
    leaf = np.take(np.asarray(leaf), idx, axis=axis)
  return leaf


def _slice_tree(tree: PyTree, takes: dict[str, list]) -> PyTree:
  return jax.tree_util.tree_map_with_path(
      lambda p, x: _slice_leaf(x, takes.get(masks_lib.path_str(p), ())), tree)


def slice_channels(params: PyTree, batch_stats: PyTree, cmasks: dict,
                   groups: list[ChannelGroup]) -> tuple[PyTree, PyTree]:
  """Copies the kept channels into the params and BatchNorm statistics of the smaller model.

  Host-side (the kept indices are concrete). Build the matching family with
  ``widths=channel_widths(...)``.

  Returns:
    ``(params, batch_stats)`` of the small model; sliced leaves are NumPy arrays, the others
    unchanged.
  """
  takes = _channel_takes(cmasks, groups)
  return _slice_tree(params, takes), _slice_tree(batch_stats, takes)


def slice_opt_state(family: steps_lib.Family, opt_state: PyTree, params: PyTree, cmasks: dict,
                    groups: list[ChannelGroup]) -> PyTree:
  """The big model's optimizer state for the smaller model: every per-parameter tree in it
  (Adam's moments, momentum, ...) sliced like :func:`slice_channels` slices ``params`` (the big
  model's); step counts are kept, so the ticket continues the optimizer's trajectory."""
  takes = _channel_takes(cmasks, groups)
  paths = jax.tree_util.tree_map_with_path(lambda p, _: masks_lib.path_str(p), params)
  return steps_lib.map_opt_params(family, opt_state,
                                  lambda x, path: _slice_leaf(x, takes.get(path, ())), paths)


def channel_widths(cmasks: dict, groups: list[ChannelGroup]) -> dict[str, tuple[int, ...]]:
  """``{part: hidden widths in layer order}`` for ``steps.make_family(widths=...)``."""
  widths: dict[str, list[int]] = {}
  for g in groups:
    widths.setdefault(layout.part(g), []).append(int(np.sum(np.asarray(cmasks[g.name]))))
  return {part: tuple(w) for part, w in widths.items()}


def channel_sparsity(cmasks: dict) -> float:
  """Fraction of the hidden channels of the pruned parts that are pruned."""
  leaves = [np.asarray(m) for m in cmasks.values()]
  return 1.0 - sum(int(m.sum()) for m in leaves) / sum(m.size for m in leaves)

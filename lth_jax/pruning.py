"""Pruning rules that turn scores into new masks: magnitude, random, and any score tree.

All functions are pure jnp code (jit- and vmap-friendly): the number of entries to remove may be a
traced value, so tickets stacked on a leading axis can each prune by their own rate.
Ties are broken deterministically: among equal scores, the entry that comes first in the
flattening order (leaf order, then row-major index) is removed first.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import masks as masks_lib

PyTree = Any
SCOPES = ("global", "layerwise")


def _check_scope(scope: str) -> None:
  if scope not in SCOPES:
    raise ValueError(f"unknown pruning scope {scope!r}; expected one of {SCOPES}")


def _check_rate(rate) -> None:
  if isinstance(rate, (int, float)) and not 0.0 <= rate < 1.0:
    raise ValueError(f"pruning rate must be in [0, 1), got {rate}")


def _remove_lowest_flat(score, keep, n_remove):
  """Keeps ``keep`` but drops the ``n_remove`` lowest-scoring kept entries of the flat ``score``."""
  # Pruned entries sort first (-inf), so the first (pruned + n_remove) ranks are removed.
  key = jnp.where(keep, score.astype(jnp.float32), -jnp.inf)
  order = jnp.argsort(key, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
  n_pruned = keep.size - jnp.sum(keep, dtype=jnp.int32)
  return rank >= n_pruned + n_remove


def remove_lowest(scores: PyTree, masks: PyTree, *, rate=None, count=None,
                  scope: str = "global") -> PyTree:
  """Prunes the lowest-scoring still-kept entries (one jit-compiled program per tree structure).

  Args:
    scores: tree shaped like ``masks`` (arrays where masks are arrays; other leaves ignored).
    masks: current mask tree (``None`` for non-prunable leaves). Pruned entries stay pruned.
    rate: fraction of the *remaining* entries to remove: ``round(rate * remaining)`` globally, or
      per leaf with ``scope='layerwise'``.
    count: exact number of entries to remove (global scope only); give ``rate`` or ``count``.
    scope: ``'global'`` (one threshold over all prunable leaves) or ``'layerwise'``.

  Returns:
    The new mask tree (bool leaves).
  """
  _check_scope(scope)
  if (rate is None) == (count is None):
    raise ValueError("give exactly one of rate= or count=")
  if rate is not None:
    _check_rate(rate)
  if scope == "layerwise" and count is not None:
    raise ValueError("count= is only defined for scope='global'; use rate= for layerwise")
  return _remove_lowest_jit(scores, masks, rate, count, scope)


def _remove_lowest(scores: PyTree, masks: PyTree, rate, count, scope: str) -> PyTree:
  pairs = [(s, m) for s, m in zip(jax.tree.leaves(scores, is_leaf=masks_lib.is_none),
                                  jax.tree.leaves(masks, is_leaf=masks_lib.is_none))]
  if len(pairs) != len(jax.tree.leaves(masks, is_leaf=masks_lib.is_none)):
    raise masks_lib.MaskMismatchError("score tree does not match the mask tree")
  prunable = [(s, m) for s, m in pairs if m is not None]
  if not prunable:
    raise ValueError("mask tree has no prunable leaves")
  if scope == "layerwise":
    new = []
    for s, m in prunable:
      m = m.astype(bool)
      n = jnp.round(rate * jnp.sum(m, dtype=jnp.int32)).astype(jnp.int32)
      new.append(_remove_lowest_flat(jnp.ravel(s), jnp.ravel(m), n).reshape(m.shape))
  else:
    flat_s = jnp.concatenate([jnp.ravel(s).astype(jnp.float32) for s, _ in prunable])
    flat_m = jnp.concatenate([jnp.ravel(m).astype(bool) for _, m in prunable])
    if rate is not None:
      n = jnp.round(rate * jnp.sum(flat_m, dtype=jnp.int32)).astype(jnp.int32)
    else:
      n = jnp.asarray(count, jnp.int32)
    kept = _remove_lowest_flat(flat_s, flat_m, n)
    sizes = [m.size for _, m in prunable]
    splits = jnp.split(kept, np.cumsum(sizes)[:-1].tolist())
    new = [k.reshape(m.shape) for k, (_, m) in zip(splits, prunable)]
  it = iter(new)
  return jax.tree.map(lambda m: None if m is None else next(it), masks, is_leaf=masks_lib.is_none)


_remove_lowest_jit = jax.jit(_remove_lowest, static_argnums=4)


def magnitude(params: PyTree, masks: PyTree, rate, scope: str = "global") -> PyTree:
  """Removes ``round(rate * remaining)`` still-kept prunable weights with the smallest ``|w|``."""
  masks_lib.check_compatible(params, masks)
  scores = jax.tree.map(lambda m, p: None if m is None else jnp.abs(p), masks, params,
                        is_leaf=masks_lib.is_none)
  return remove_lowest(scores, masks, rate=rate, scope=scope)


def to_sparsity(scores: PyTree, masks: PyTree, sparsity, *, scope: str = "global") -> PyTree:
  """Prunes lowest scores until the fraction of pruned prunable entries equals ``sparsity``.

  Global scope removes ``round(sparsity * total) - already_pruned`` entries; layerwise applies the
  target to each leaf. Used by SNIP/GraSP/SynFlow, which score a dense network once.
  """
  _check_scope(scope)
  _check_rate(sparsity)
  if scope == "global":
    kept, total = masks_lib.counts(masks)
    n = jnp.round(sparsity * total).astype(jnp.int32) - (total - kept)
    return remove_lowest(scores, masks, count=jnp.maximum(n, 0), scope="global")
  return _to_sparsity_layerwise(scores, masks, sparsity)


@jax.jit
def _to_sparsity_layerwise(scores, masks, sparsity):
  """Per leaf: remove (target - already pruned) entries, rounding per leaf."""
  def leaf(m, s):
    if m is None:
      return None
    n = jnp.round(sparsity * m.size).astype(jnp.int32) - (m.size - jnp.sum(m, dtype=jnp.int32))
    return _remove_lowest_flat(jnp.ravel(s), jnp.ravel(m).astype(bool),
                               jnp.maximum(n, 0)).reshape(m.shape)
  return jax.tree.map(leaf, masks, scores, is_leaf=masks_lib.is_none)


@jax.jit
def _uniform_scores(key: jax.Array, masks: PyTree) -> PyTree:
  """Independent U[0, 1) scores per prunable leaf (one subkey per leaf)."""
  leaves = jax.tree.leaves(masks, is_leaf=masks_lib.is_none)
  keys = iter(jax.random.split(key, max(1, len(leaves))))
  return jax.tree.map(lambda m: None if m is None else jax.random.uniform(next(keys), m.shape),
                      masks, is_leaf=masks_lib.is_none)


@jax.jit
def _match_counts(masks: PyTree, scores: PyTree, like: PyTree) -> PyTree:
  """Per leaf: removes the lowest scores until the kept count equals ``like``'s."""
  def leaf(m, s, target):
    if m is None:
      return None
    n = jnp.sum(m, dtype=jnp.int32) - jnp.sum(target, dtype=jnp.int32)
    return _remove_lowest_flat(jnp.ravel(s), jnp.ravel(m).astype(bool),
                               jnp.maximum(n, 0)).reshape(m.shape)
  return jax.tree.map(leaf, masks, scores, like, is_leaf=masks_lib.is_none)


def random(key: jax.Array, masks: PyTree, rate=None, scope: str = "global",
           like: PyTree | None = None) -> PyTree:
  """Random pruning.

  Args:
    key: PRNG key; the same key gives the same mask.
    masks: current masks; pruned entries stay pruned.
    rate: fraction of the remaining entries to remove (global or layerwise ``scope``).
    like: instead of ``rate``, a mask tree whose per-leaf kept counts the result copies exactly
      (the random-pruning baseline: a random mask with the ticket's layer-wise sparsity).
  """
  scores = _uniform_scores(key, masks)
  if like is None:
    if rate is None:
      raise ValueError("random pruning needs rate= or like=")
    return remove_lowest(scores, masks, rate=rate, scope=scope)
  if rate is not None:
    raise ValueError("give rate= or like=, not both")
  for (path, m), (_, target) in zip(masks_lib.leaves_with_paths(masks),
                                    masks_lib.leaves_with_paths(like)):
    if (m is None) != (target is None) or (m is not None and m.shape != target.shape):
      raise masks_lib.MaskMismatchError(f"like= mask does not fit masks at '{path}'")
  if len(masks_lib.leaves_with_paths(masks)) != len(masks_lib.leaves_with_paths(like)):
    raise masks_lib.MaskMismatchError("like= mask does not have the same leaves as masks")
  return _match_counts(masks, scores, like)

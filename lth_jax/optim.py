"""Masked optimisation: any optax optimizer trained on sparse params inside ``jax.jit``.

``with_masks(inner)`` wraps an optax transformation so that, given the current masks as an extra
argument of ``update``, gradients of pruned entries are zeroed before the inner optimizer sees
them, its per-parameter state (Adam moments, momentum, ...) is kept at zero for pruned entries,
and its updates are zeroed too. Together with :func:`apply_updates` (which re-applies the mask),
pruned params stay exactly 0.0 after any number of steps, with weight decay too.

Masks are traced array arguments, so a new pruning round does not recompile::

  tx = optim.with_masks(optax.adam(2e-4, b1=0.5))
  opt_state = tx.init(params)
  updates, opt_state = tx.update(grads, opt_state, params, masks=m)
  params = optim.apply_updates(params, updates, m)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from lth_jax import masks as masks_lib

PyTree = Any


def _full(masks: PyTree) -> PyTree:
  """Masks with ``None`` leaves replaced by Python ``True`` (keep everything there)."""
  return jax.tree.map(lambda m: True if m is None else m, masks, is_leaf=masks_lib.is_none)


def _keep(x, m):
  return x if m is True else jnp.where(m, x, jnp.zeros((), jnp.result_type(x)))


def mask_state(inner: optax.GradientTransformation, opt_state: optax.OptState,
               masks: PyTree) -> optax.OptState:
  """Zeroes the per-parameter entries of ``opt_state`` (moments, traces) where ``masks`` prunes.

  Use it when the optimizer state is rewound (late resetting restores step k's state, which
  holds non-zero moments for weights the new mask prunes).
  """
  full = _full(masks)
  return optax.tree_utils.tree_map_params(inner, _keep, opt_state, full)


def with_masks(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` so that pruned entries get no gradient, no state and no update.

  The returned transformation's ``update(grads, state, params, *, masks)`` requires ``masks``
  (a mask tree for the params; ``None`` leaves are dense). Its state is exactly ``inner``'s state.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return inner.init(params)

  def update_fn(updates, state, params=None, *, masks=None, **extra_args):
    if masks is None:
      raise ValueError("optim.with_masks(...).update needs the current masks: update(..., masks=m)")
    full = _full(masks)
    updates = jax.tree.map(_keep, updates, full)
    updates, state = inner.update(updates, state, params, **extra_args)
    updates = jax.tree.map(_keep, updates, full)
    state = optax.tree_utils.tree_map_params(inner, _keep, state, full)
    return updates, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def apply_updates(params: PyTree, updates: PyTree, masks: PyTree) -> PyTree:
  """``optax.apply_updates`` followed by the mask: pruned params are exactly 0.0 afterwards."""
  return masks_lib.apply(optax.apply_updates(params, updates), masks)

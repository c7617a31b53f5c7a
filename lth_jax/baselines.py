"""Pruning-at-initialisation baselines: SNIP, GraSP and SynFlow, for any JAX model.

The functions take plain functions of the params pytree, never a model class:

- ``loss_fn(params) -> scalar`` (SNIP, GraSP): the training loss on one batch (or the mean over
  several), with the batch, PRNG keys and any model state (BatchNorm statistics) closed over by the
  caller.
- ``output_fn(params) -> array`` (SynFlow): the network applied to an all-ones input with BatchNorm
  in eval mode (running statistics, so the output is a fixed function of the params), closed over by
  the caller. Return pre-activation outputs: a final ``tanh``/``sigmoid`` saturates and zeroes the
  gradient.

Every score tree is shaped like the masks (``None`` for non-prunable leaves) and **higher means
more important**, so :func:`lth_jax.pruning.to_sparsity` (which removes the lowest scores) turns any
of them into a mask. Scores are computed at the masked params (``masks.apply``): entries that are
already pruned are 0 in the network, score 0, and stay pruned.

Example::

  from lth_jax import baselines, masks
  m = baselines.prune_at_init("snip", params=params, masks=masks.init(params), sparsity=0.9,
                              loss_fn=lambda p: loss(p, batch))
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lth_jax import masks as masks_lib
from lth_jax import pruning

PyTree = Any
METHODS = ("snip", "grasp", "synflow")


def _on_prunable(fn: Callable, masks: PyTree, *trees: PyTree) -> PyTree:
  """``fn(*leaves)`` where ``masks`` has an array, ``None`` where it has ``None``."""
  return jax.tree.map(lambda m, *xs: None if m is None else fn(*xs), masks, *trees,
                      is_leaf=masks_lib.is_none)


def _grad(loss_fn: Callable, params: PyTree) -> PyTree:
  """``∂loss_fn/∂params``, with a clear error if ``loss_fn`` does not return a float scalar."""
  loss, pullback = jax.vjp(loss_fn, params)
  if jnp.shape(loss) != () or not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
    raise ValueError(f"loss_fn must return a float scalar, got shape {jnp.shape(loss)} dtype "
                     f"{jnp.result_type(loss)}; reduce the loss over the batch (e.g. jnp.mean)")
  (grads,) = pullback(jnp.ones_like(loss))
  return grads


def snip_scores(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                masks: PyTree) -> PyTree:
  """SNIP connection sensitivity (Lee et al., ICLR 2019): ``|θ ⊙ ∂loss/∂θ|``.

  The gradient is taken at the masked params, so this is ``|∂loss/∂c|`` for a multiplicative
  mask ``c`` at its current value. Pure and jit-compatible.

  Args:
    loss_fn: ``params -> scalar`` loss on one batch (batch closed over by the caller).
    params: params pytree at initialisation.
    masks: mask tree for ``params`` (``None`` for non-prunable leaves).

  Returns:
    Score tree shaped like ``masks``: arrays of each param's shape and dtype (>= 0, higher = more
    important; already-pruned entries 0), ``None`` for non-prunable leaves.
  """
  masked = masks_lib.apply(params, masks)
  grads = _grad(loss_fn, masked)
  return _on_prunable(lambda p, g: jnp.abs(p * g), masks, masked, grads)


def grasp_scores(loss_fn: Callable[[PyTree], jax.Array], params: PyTree,
                 masks: PyTree) -> PyTree:
  """GraSP (Wang et al., ICLR 2020) scores, sign-flipped so that the lowest are removed.

  GraSP's score is ``S = −θ ⊙ Hg`` and GraSP removes the entries with the **highest** ``S``
  (those whose removal least reduces, or even increases, gradient flow). This function returns
  ``−S = θ ⊙ Hg``, so :func:`lth_jax.pruning.to_sparsity`, which removes the lowest scores,
  removes exactly GraSP's choice. Scores can be negative.

  As in the authors' code, ``g`` and ``H`` are restricted to the prunable weights: ``g`` is the
  gradient w.r.t. the prunable leaves only (zero on non-prunable leaves such as biases and on
  already-pruned entries), and ``Hg`` is its Hessian-vector product (forward-over-reverse double
  backprop, ``jax.jvp`` of ``jax.grad``), evaluated at the masked params. ``loss_fn`` is used as
  given: no temperature. The original applies ``T = 200`` to classification logits and sums over
  several batches; a classification caller divides its logits by ``T`` inside ``loss_fn``, and a
  mean over several batches gives the same ranking as the sum. Generative losses (ours) take no
  temperature.

  Args:
    loss_fn: ``params -> scalar`` loss on one or more batches (closed over by the caller).
    params: params pytree at initialisation.
    masks: mask tree for ``params`` (``None`` for non-prunable leaves).

  Returns:
    Score tree shaped like ``masks``: ``θ ⊙ Hg`` arrays (already-pruned entries 0), ``None`` for
    non-prunable leaves.
  """
  masked = masks_lib.apply(params, masks)
  grads = _grad(loss_fn, masked)
  direction = jax.tree.map(
      lambda m, g: jnp.zeros_like(g) if m is None else jnp.where(m, g, jnp.zeros((), g.dtype)),
      masks, grads, is_leaf=masks_lib.is_none)
  _, hess_grad = jax.jvp(jax.grad(loss_fn), (masked,), (direction,))
  return _on_prunable(lambda p, hg: p * hg, masks, masked, hess_grad)


def _gain(kernel: jax.Array) -> jax.Array:
  """Mean over output units of ``sum |w|`` into the unit: its gain for an all-ones input.

  Uses flax's kernel layout (output features last: Dense ``(in, out)``, Conv and ConvTranspose
  ``(kh, kw, in, out)``); ``kernel`` is already non-negative. 1 for a fully pruned kernel.
  """
  gain = jnp.sum(kernel, dtype=jnp.float32) / kernel.shape[-1]
  return jnp.where(gain > 0, gain, 1.0).astype(kernel.dtype)


def _synflow_scores_and_total(output_fn: Callable, params: PyTree,
                              masks: PyTree) -> tuple[PyTree, jax.Array]:
  """Normalised SynFlow scores and the (rescaled) total score before normalisation."""
  linear = jax.tree.map(jnp.abs, masks_lib.apply(params, masks))
  scaled = jax.tree.map(lambda m, p: p if m is None or p.ndim < 2 else p / _gain(p),
                        masks, linear, is_leaf=masks_lib.is_none)

  def synaptic_flow(p):
    return sum(jnp.sum(x, dtype=jnp.float32) for x in jax.tree.leaves(output_fn(p)))

  grads = jax.grad(synaptic_flow)(scaled)
  raw = _on_prunable(lambda p, g: jnp.abs(p * g), masks, scaled, grads)
  total = sum(jnp.sum(s, dtype=jnp.float32) for s in jax.tree.leaves(raw))
  return jax.tree.map(lambda s: s / total, raw), total


def synflow_scores(output_fn: Callable[[PyTree], jax.Array], params: PyTree,
                   masks: PyTree) -> PyTree:
  """One round of SynFlow scores (Tanaka et al., NeurIPS 2020), normalised to sum to 1.

  The network is linearised: every param leaf (prunable or not) is replaced by ``|θ|`` and
  pruned entries by 0; ``R = sum(output_fn(|θ|))`` (the caller feeds an all-ones input with
  BatchNorm in eval mode) and the score is ``|θ ⊙ ∂R/∂θ|``. BatchNorm running statistics are not
  params and are used as the caller's ``output_fn`` holds them (at init: mean 0, variance 1, as
  the authors' ``|·|`` of them gives).

  Overflow guard (float32): ``R`` grows like the product of the layers' gains and overflows
  float32 for deep nets (the authors use float64); as weights get pruned it can also underflow.
  So before the forward pass each prunable kernel (ndim >= 2) is divided by its gain for an
  all-ones input (mean over output units of ``sum |w|``, flax layout with output features last),
  which keeps activations near 1 at every depth, and the scores are divided by their sum. When
  the network is positively homogeneous in each kernel, as flax nets are at their default init
  (zero biases; BatchNorm with γ=1, β=0 and running mean 0, variance 1), the rescaling multiplies
  every score by one common positive factor, so the normalised scores equal those of the
  unrescaled float64 computation. Nonzero biases break homogeneity (they also make scores depend
  on the scale of the weights); the rescaling then changes the relative weight of bias paths.

  Pure and jit-compatible. If ``R`` has no gradient (e.g. a saturated ``tanh`` output) the sum is 0
  and the scores are NaN; :func:`synflow` detects this and raises.

  Args:
    output_fn: ``params -> array`` (or pytree of arrays): the network on an all-ones input.
    params: params pytree at initialisation.
    masks: mask tree for ``params`` (``None`` for non-prunable leaves).

  Returns:
    Score tree shaped like ``masks``: arrays >= 0 summing to 1 over all prunable entries
    (already-pruned entries 0), ``None`` for non-prunable leaves.
  """
  return _synflow_scores_and_total(output_fn, params, masks)[0]


def _healthy(total: jax.Array) -> jax.Array:
  return jnp.isfinite(total) & (total > 0)


@functools.partial(jax.jit, static_argnames=("output_fn", "iterations", "scope"))
def _synflow_rounds(output_fn, params, masks, sparsity, output_args, *, iterations, scope):
  """Rounds ``k = 1 .. iterations - 1``: keep ``(1 - sparsity) ** (k / iterations)``."""
  density = 1.0 - sparsity
  output = lambda p: output_fn(p, *output_args)

  def round_k(k, carry):
    m, ok = carry
    scores, total = _synflow_scores_and_total(output, params, m)
    target = 1.0 - density ** (k / iterations)
    return pruning.to_sparsity(scores, m, target, scope=scope), ok & _healthy(total)

  return jax.lax.fori_loop(1, iterations, round_k, (masks, jnp.asarray(True)))


@functools.partial(jax.jit, static_argnums=0)
def _synflow_last(output_fn, params, masks, output_args):
  return _synflow_scores_and_total(lambda p: output_fn(p, *output_args), params, masks)


def _check_args(params: PyTree, masks: PyTree, sparsity, scope: str) -> None:
  masks_lib.check_compatible(params, masks)
  if scope not in pruning.SCOPES:
    raise ValueError(f"unknown pruning scope {scope!r}; expected one of {pruning.SCOPES}")
  if isinstance(sparsity, (int, float)) and not 0.0 <= sparsity < 1.0:
    raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")


def synflow(output_fn: Callable[..., jax.Array], params: PyTree, masks: PyTree, sparsity,
            *, iterations: int = 100, scope: str = "global",
            output_args: tuple = ()) -> PyTree:
  """Iterative SynFlow pruning to ``sparsity`` (data-free; Tanaka et al., NeurIPS 2020).

  Round ``k = 1 .. iterations`` rescores the current sparse network with
  :func:`synflow_scores` and prunes to sparsity ``1 - (1 - sparsity) ** (k / iterations)`` (the
  exponential schedule: kept fraction ``ρ^(k/n)``). The last round is exactly
  ``pruning.to_sparsity(scores, masks, sparsity, scope=scope)``, so the result has the same
  counts as a one-shot method. Entries already pruned in ``masks`` stay pruned (rounds whose
  target is below the current sparsity prune nothing).

  Rounds ``1 .. n-1`` run in one ``jax.lax.fori_loop`` under ``jax.jit`` with ``output_fn``,
  ``iterations`` and ``scope`` static: pass the same ``output_fn`` object to reuse the compiled
  loop (a new sparsity or new ``output_args`` values do not recompile; a new closure does).
  Call it from host code (it checks the result).

  Args:
    output_fn: ``(params, *output_args) -> array``: the network on an all-ones input,
      BatchNorm in eval mode, pre-activation output (see :func:`synflow_scores`).
    params: params pytree at initialisation.
    masks: starting mask tree (usually ``masks.init(params)``).
    sparsity: target fraction of prunable entries pruned, in [0, 1).
    iterations: number of prune-rescore rounds (>= 1; 1 is one-shot SynFlow).
    scope: ``'global'`` (one ranking over all prunable leaves) or ``'layerwise'``.
    output_args: arrays ``output_fn`` takes after the params (e.g. BatchNorm statistics),
      traced rather than closed over.

  Returns:
    The new mask tree (bool leaves, ``None`` where ``masks`` has ``None``).

  Raises:
    ValueError: bad ``sparsity``, ``scope`` or ``iterations``, or masks not fitting params.
    FloatingPointError: a round's total score was 0, inf or NaN (``R`` overflowed or has no
      gradient, e.g. a saturating output activation).
  """
  _check_args(params, masks, sparsity, scope)
  if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"SynFlow iterations must be an int >= 1, got {iterations!r}")
  masks = jax.tree.map(lambda m: jnp.asarray(m, bool), masks)
  m, ok = _synflow_rounds(output_fn, params, masks, sparsity, tuple(output_args),
                          iterations=iterations, scope=scope)
  scores, total = _synflow_last(output_fn, params, m, tuple(output_args))
  if not bool(ok & _healthy(total)):
    raise FloatingPointError(
        "SynFlow's total score was 0, inf or NaN in some round: output_fn's output has no usable "
        "gradient w.r.t. the params. Return the pre-activation output (no final tanh/"
        "sigmoid), run BatchNorm in eval mode, and check the params are finite.")
  return pruning.to_sparsity(scores, m, sparsity, scope=scope)


_SCORERS = {"snip": snip_scores, "grasp": grasp_scores}


@functools.partial(jax.jit, static_argnames=("method", "loss_fn"))
def _one_shot_scores(params, masks, loss_args, *, method, loss_fn):
  return _SCORERS[method](lambda p: loss_fn(p, *loss_args), params, masks)


def prune_at_init(method: str, *, params: PyTree, masks: PyTree, sparsity,
                  loss_fn: Callable[..., jax.Array] | None = None,
                  output_fn: Callable[..., jax.Array] | None = None,
                  scope: str = "global", iterations: int = 100,
                  loss_args: tuple = (), output_args: tuple = ()) -> PyTree:
  """Masks at ``sparsity`` from a pruning-at-initialisation method.

  SNIP and GraSP score once and prune with
  ``pruning.to_sparsity(scores, masks, sparsity, scope=scope)``; SynFlow is iterative
  (:func:`synflow`). Scoring is jit-compiled with ``loss_fn``/``output_fn`` static: passing the
  same function object again (another sparsity, scope or mask) reuses the compiled code. A
  closure over a batch is a new object per call and compiles again (minutes for GraSP's
  Hessian-vector product through a conv VAE on CPU); pass the batch, keys and statistics as
  ``loss_args``/``output_args`` to a fixed function instead.

  Args:
    method: ``'snip'``, ``'grasp'`` or ``'synflow'``.
    params: params pytree at initialisation.
    masks: starting mask tree; already-pruned entries stay pruned.
    sparsity: target fraction of prunable entries pruned, in [0, 1): globally exactly
      ``round(sparsity * total)`` entries are pruned; layerwise, per leaf.
    loss_fn: ``(params, *loss_args) -> scalar`` loss on a batch; needed by SNIP and GraSP.
    output_fn: ``(params, *output_args) -> array`` on an all-ones input, BatchNorm in eval
      mode; needed by SynFlow.
    scope: ``'global'`` or ``'layerwise'``.
    iterations: SynFlow rounds (ignored by SNIP and GraSP).
    loss_args, output_args: arrays (pytrees) passed after the params, traced.

  Returns:
    The new mask tree (bool leaves, ``None`` where ``masks`` has ``None``).

  Raises:
    ValueError: unknown ``method``, missing ``loss_fn``/``output_fn``, bad ``sparsity``/``scope``.
  """
  if method not in METHODS:
    raise ValueError(f"unknown pruning-at-init method {method!r}; valid methods are {METHODS}")
  _check_args(params, masks, sparsity, scope)
  if method == "synflow":
    if output_fn is None:
      raise ValueError("method 'synflow' needs output_fn= (params -> network output on an "
                       "all-ones input, BatchNorm in eval mode)")
    return synflow(output_fn, params, masks, sparsity, iterations=iterations, scope=scope,
                   output_args=output_args)
  if loss_fn is None:
    raise ValueError(f"method {method!r} needs loss_fn= (params -> scalar loss on a batch)")
  scores = _one_shot_scores(params, masks, tuple(loss_args), method=method, loss_fn=loss_fn)
  return pruning.to_sparsity(scores, masks, sparsity, scope=scope)

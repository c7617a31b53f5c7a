"""Pure, jit-compiled masked training steps: the pieces every model family shares.

Everything a training loop needs from a family is a :class:`Family` of pure functions over
``(TrainState, masks, images, key)``; masks are traced arguments, so pruning rounds never
recompile. Params of every family are one dict of its parts (``'generator'``/``'discriminator'``
or ``'encoder'``/``'decoder'``); the mask tree is shaped like that dict. The families themselves
are registered in :mod:`lth_jax.families` (:func:`make_family` builds one by name).

Data stays on device as uint8 ``[N, H, W, C]``; each step draws its batch from its own key
(``fold_in(run_key, step)``), so the data stream depends only on the step number: rewinding to
step k and fusing n steps per call both reproduce the same batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lth_jax import layers
from lth_jax import masks as masks_lib
from lth_jax import optim
from lth_jax.models import layout

PyTree = Any
# train.precision -> the compute dtype of the training step's passes (None: the params' fp32).
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}
# train.optimizer.kind: Adam (AdamW with weight_decay) or RMSprop (b2: its squared-gradient decay).
OPTIMIZERS = ("adam", "rmsprop")


class DivergenceError(FloatingPointError):
  """A loss or parameter became NaN/Inf during training (the one error every loop raises)."""


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree; stackable on a leading ticket axis)."""
  step: jax.Array        # int32 scalar: number of steps taken
  params: PyTree         # {part: linen params}
  batch_stats: PyTree    # {part: BatchNorm running statistics}
  opt_state: PyTree      # {part: optax state} (GAN) or one optax state over all params


class Family(NamedTuple):
  """A model family's pure functions. ``images`` are uint8 [N, H, W, C]; batches float [-1, 1]."""
  name: str
  parts: tuple[str, ...]
  modules: dict                     # {part or 'model': linen module}
  optimizers: dict                  # {part: optax transformation} ('all' for AE/VAE)
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[..., tuple[TrainState, dict]]   # (state, masks, images, key) -> ...
  score_loss: Callable[..., jax.Array]                 # (params, batch_stats, batch, key) -> scalar
  synflow_output: Callable[..., jax.Array]             # (params, batch_stats) -> array
  generate: Callable[..., jax.Array] | None            # (params, batch_stats, key, n) -> images
  reconstruct: Callable[..., jax.Array] | None         # (params, batch_stats, batch) -> images
  batch_size: int
  # params -> the prunable channel groups of every part, in ``parts`` order (the model's layout,
  # e.g. lth_jax.models.dcgan.channel_groups); None: no BatchNorm channels to score.
  channel_groups: Callable[[PyTree], list[layout.ChannelGroup]] | None = None
  # {part: back-propagated forward passes per image of one train step} (lth_jax.flops).
  train_passes: Mapping[str, float] | None = None
  sampling_part: str | None = None     # the part that generates (or decodes) an image
  # () -> [(part prefix, or '' for one module over every part; module; example args of batch 1;
  # kwargs)]: the eval-mode forward passes that cover every part (lth_jax.flops).
  forward_passes: Callable[[], list[tuple[str, Any, tuple, dict]]] | None = None
  # (params, batch_stats, batch, key) -> batch_stats after one train-mode forward pass, params
  # unchanged (``key``: the pass's noise, e.g. the generator's codes; lth_jax.stability).
  train_mode_stats: Callable[..., PyTree] | None = None
  # (params, batch_stats, batch, key) -> {metric: batch mean} of test-set losses the evaluator
  # reports (the VAE's 'test_neg_elbo'); None: none.
  test_losses: Callable[..., dict] | None = None


def optimizer(settings: Mapping[str, Any]) -> optax.GradientTransformation:
  """The optax optimizer of one ``train.optimizer`` dict (``kind`` defaults to 'adam').

  'adam': Adam, or AdamW with ``weight_decay`` > 0 (``lr``, ``b1``, ``b2``). 'rmsprop': RMSprop
  with ``lr`` and ``b2`` as its squared-gradient decay (PyTorch's ``alpha``; ``b1`` unused),
  eps 1e-8 outside the square root as PyTorch's, decoupled ``weight_decay`` as AdamW's.

  Raises:
    ValueError: an unknown ``kind``.
  """
  kind = settings.get("kind", "adam")
  decay = settings.get("weight_decay", 0.0)
  if kind == "adam":
    if decay:
      return optax.adamw(settings["lr"], b1=settings["b1"], b2=settings["b2"], weight_decay=decay)
    return optax.adam(settings["lr"], b1=settings["b1"], b2=settings["b2"])
  if kind == "rmsprop":
    scale = optax.scale_by_rms(decay=settings["b2"], eps=1e-8, eps_in_sqrt=False)
    return optax.chain(scale, *([optax.add_decayed_weights(decay)] if decay else []),
                       optax.scale_by_learning_rate(settings["lr"]))
  raise ValueError(f"unknown train.optimizer.kind {kind!r}; expected one of {OPTIMIZERS}")


def init_state(params, batch_stats, optimizers) -> TrainState:
  """Step 0 with a fresh optimizer state (``optimizers``: ``{part: tx}`` or ``{'all': tx}``)."""
  if "all" in optimizers:
    opt_state = optimizers["all"].init(params)
  else:
    opt_state = {k: optimizers[k].init(params[k]) for k in params}
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state)


def mask_opt_state(family: Family, opt_state, masks) -> PyTree:
  """Zeroes optimizer moments of pruned entries (used when late resetting restores step k)."""
  if "all" in family.optimizers:
    return optim.mask_state(family.optimizers["all"], opt_state, masks)
  return {k: optim.mask_state(family.optimizers[k], opt_state[k], masks[k]) for k in opt_state}


def map_opt_params(family: Family, opt_state, f, *rest) -> PyTree:
  """Applies ``f(leaf, *rest_leaves)`` to every params-shaped tree in ``opt_state`` (moments,
  traces; counts untouched); ``rest`` are trees shaped like the whole params."""
  if "all" in family.optimizers:
    return optax.tree_utils.tree_map_params(family.optimizers["all"], f, opt_state, *rest)
  return {k: optax.tree_utils.tree_map_params(family.optimizers[k], f, opt_state[k],
                                              *(r[k] for r in rest)) for k in opt_state}


def fresh_opt_state(family: Family, params) -> PyTree:
  """A new optimizer state for ``params`` (rewinding without the optimizer)."""
  if "all" in family.optimizers:
    return family.optimizers["all"].init(params)
  return {k: family.optimizers[k].init(params[k]) for k in params}


def masked_update(tx, grads, opt_state, params, masks):
  """One masked optax update: ``(params, opt_state)`` with pruned entries exactly 0."""
  updates, opt_state = optim.with_masks(tx).update(grads, opt_state, params, masks=masks)
  return optim.apply_updates(params, updates, masks), opt_state


def to_float32(tree: PyTree) -> PyTree:
  """Every floating leaf of ``tree`` as float32 (a mixed-precision pass's outputs, for losses)."""
  return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def bn_l1_weights(bn_l1: float | Mapping[str, float], parts: tuple[str, str]) -> dict:
  """``{part: λ}`` from one λ for every part or a ``{part: λ}`` mapping (missing parts: 0)."""
  weights = dict(bn_l1) if isinstance(bn_l1, Mapping) else {p: bn_l1 for p in parts}
  unknown = set(weights) - set(parts)
  if unknown:
    raise ValueError(f"bn_l1 names {sorted(unknown)}, which are not parts {parts}")
  if any(float(w) < 0.0 for w in weights.values()):
    raise ValueError(f"bn_l1 must be >= 0, got {bn_l1}")
  return {p: float(weights.get(p, 0.0)) for p in parts}


def bn_l1_penalty(params: PyTree, weight: float) -> jax.Array:
  """Network slimming's sparsity term ``weight * sum |γ|`` over the BatchNorm scales of ``params``
  (every leaf named ``scale``; in these models only BatchNorm has one)."""
  scales = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
            if masks_lib.key_name(path[-1]) == "scale"]
  return weight * sum((jnp.sum(jnp.abs(x)) for x in scales), jnp.zeros((), jnp.float32))


def make_family(name: str, *, channels: int, image_size: int, width: int, z_dim: int,
                optimizer: dict, batch_size: int, loss_kind: str = "bce", beta: float = 4.0,
                widths: dict | None = None, bn_l1: float | Mapping[str, float] = 0.0,
                precision: str = "fp32", n_critic: int = 1, clip: float = 0.0,
                gradient_penalty: float = 0.0) -> Family:
  """Builds the registered family ``name`` (:func:`lth_jax.families.build`, which documents
  every argument); kept here so that ``steps.make_family`` stays the one-line entry point."""
  from lth_jax import families  # pylint: disable=import-outside-toplevel  # registry above steps
  return families.build(name, channels=channels, image_size=image_size, width=width,
                        z_dim=z_dim, optimizer=optimizer, batch_size=batch_size,
                        loss_kind=loss_kind, beta=beta, widths=widths, bn_l1=bn_l1,
                        precision=precision, n_critic=n_critic, clip=clip,
                        gradient_penalty=gradient_penalty)


def __getattr__(name: str):
  """``steps.PARTS`` (``{family: parts}`` of the registered families), read from the registry
  (:mod:`lth_jax.families`) when asked for: the old import path of the parts table."""
  if name == "PARTS":
    from lth_jax import families  # pylint: disable=import-outside-toplevel  # registry above
    return {n: families.get(n).parts for n in families.names()}
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


LOOPS = ("auto", "unrolled", "rolled")


def resolve_loop(loop: str, platform: str | None = None) -> str:
  """'unrolled' or 'rolled' for ``train.loop`` on ``platform`` (default: JAX's backend).

  'auto' is 'unrolled' on CPU, where XLA runs convolutions inside rolled loops
  (``lax.scan``/``fori_loop``) 40-70x slower than the same step alone, and 'rolled' on GPU/TPU,
  where one compiled loop of many steps removes per-step dispatch and host round trips and
  compiles once whatever ``steps_per_call`` is.
  """
  if loop not in LOOPS:
    raise ValueError(f"unknown train.loop {loop!r}; expected one of {LOOPS}")
  if loop != "auto":
    return loop
  return "unrolled" if (platform or jax.default_backend()) == "cpu" else "rolled"


def multi_step(family: Family, steps_per_call: int, loop: str = "unrolled",
               formulation: str | None = None) -> Callable:
  """``steps_per_call`` train steps in one (unjitted) function.

  Args:
    steps_per_call: steps per call.
    loop: 'unrolled' (a Python loop: the steps are inlined one after another) or 'rolled' (one
      ``lax.scan`` over the steps: the program's size does not grow with ``steps_per_call``); see
      :func:`resolve_loop` for which is fast where. Step i uses the key ``fold_in(run_key, step)``
      in both, so both train on the same batches.
    formulation: the convolutions' :func:`lth_jax.layers.conv_formulation` while the steps are
      traced (None: the caller's).

  Returns:
    ``f(state, masks, images, run_key) -> (state, metrics)``; metrics are averaged over the steps
    and include ``finite`` (1.0 when every loss and parameter is finite after the call).
  """
  if steps_per_call < 1:
    raise ValueError(f"train.steps_per_call must be >= 1, got {steps_per_call}")
  if loop not in LOOPS[1:]:
    raise ValueError(f"multi_step needs loop 'unrolled' or 'rolled', got {loop!r}")

  def step(state, masks, images, run_key):
    return family.train_step(state, masks, images, jax.random.fold_in(run_key, state.step))

  def run(state, masks, images, run_key):
    with (layers.conv_formulation(formulation) if formulation else contextlib.nullcontext()):
      return run_steps(state, masks, images, run_key)

  def run_steps(state, masks, images, run_key):
    if loop == "rolled":
      state, history = jax.lax.scan(lambda s, _: step(s, masks, images, run_key), state,
                                    length=steps_per_call)
      metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), history)
    else:
      history = []
      for _ in range(steps_per_call):
        state, m = step(state, masks, images, run_key)
        history.append(m)
      metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *history)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in
                                jax.tree.leaves((metrics, state.params))]))
    metrics["finite"] = finite.astype(jnp.float32)
    return state, metrics

  return run


def jit_multi_step(family: Family, steps_per_call: int, loop: str = "unrolled",
                   formulation: str | None = None) -> Callable:
  """:func:`multi_step`, jitted with the state donated."""
  return jax.jit(multi_step(family, steps_per_call, loop, formulation), donate_argnums=0)


def dense_masks(family: Family, params: PyTree, prune: dict[str, bool],
                exclude: tuple[str, ...] = ()) -> PyTree:
  """All-kept masks over the prunable kernels of the parts switched on in ``prune``.

  Args:
    params: ``{part: params}``.
    prune: ``{part: bool}``: which parts are pruned at all.
    exclude: path prefixes kept dense, e.g. ``('generator/convt0', 'discriminator/head')``.
  """
  unknown = set(prune) - set(family.parts)
  if unknown:
    raise ValueError(f"prune switches {sorted(unknown)} are not parts of {family.name}; "
                     f"its parts are {family.parts}")

  def rule(path: str, leaf) -> bool:
    part = path.split("/", 1)[0]
    if not prune.get(part, False) or getattr(leaf, "ndim", 0) < 2:
      return False
    return not any(path == e or path.startswith(e + "/") for e in exclude)

  result = masks_lib.init(params, prunable=rule)
  if not [m for m in jax.tree.leaves(result) if m is not None]:
    raise ValueError(f"nothing to prune: prune={prune}, exclude={exclude} leave no kernels")
  return result

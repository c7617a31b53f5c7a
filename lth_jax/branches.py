"""Lottery branches: how each run of an IMP level gets its mask and starting state.

A branch is one registered function ``(LevelInputs) -> (state, masks)``; the lottery search
trains every configured branch of a level side by side, with the same budget (steps k..T), data
stream and evaluation. A new baseline is one function::

  @branches.register('magnitude_at_init')
  def magnitude_at_init(x: branches.LevelInputs):
    m = pruning.to_sparsity(jax.tree.map(abs, x.theta_0.params), x.dense, x.sparsity)
    return branches.from_params(x.family, x.theta_0, m), m

Registered here, in this order: ``ticket`` (IMP's mask, rewound to θ_k), ``random_reinit``
(the ticket's mask, a fresh init), ``random_pruning`` (a random mask with the ticket's per-layer
sparsity, θ_k weights), ``snip``, ``grasp`` and ``synflow`` (pruned at θ₀ to the ticket's
global sparsity, trained from θ₀), ``one_shot`` (the dense model's trained weights pruned by
magnitude to the ticket's sparsity in one round, rewound to θ_k: iterative vs one-shot).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from lth_jax import baselines
from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import steps as steps_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LevelInputs:
  """What a branch may use to start its run at one level of one seed.

  ``theta_0`` and ``dense_trained`` are read from disk the first time a branch asks for them
  (most branches never do: a load costs ~0.15 s of Orbax per small state on CPU).
  """
  config: ml_collections.ConfigDict
  family: steps_lib.Family
  level: int
  theta_k: steps_lib.TrainState    # the dense run's state at the rewind step k
  dense: PyTree                    # all-kept masks of the prunable leaves
  ticket: PyTree                   # this level's IMP mask
  sparsity: float                  # the ticket's global sparsity (share of prunable pruned)
  images: jax.Array                # uint8 [N, H, W, C] training images
  key: Callable[[str], jax.Array]  # key(stream): the seed's stream, folded with the level
  load: Callable[[str], steps_lib.TrainState]   # load('theta_0' | 'dense_trained')

  @functools.cached_property
  def theta_0(self) -> steps_lib.TrainState:
    """The dense run's initial state."""
    return self.load("theta_0")

  @functools.cached_property
  def dense_trained(self) -> steps_lib.TrainState:
    """The dense run's trained state (level 0)."""
    return self.load("dense_trained")


Branch = Callable[[LevelInputs], tuple[steps_lib.TrainState, PyTree]]
_REGISTRY: dict[str, Branch] = {}


def register(name: str) -> Callable[[Branch], Branch]:
  """Decorator registering a branch function under ``name`` (a valid ``lottery.branches``)."""
  def wrap(fn: Branch) -> Branch:
    if name in _REGISTRY:
      raise ValueError(f"lottery branch {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn
  return wrap


def names() -> tuple[str, ...]:
  """Every registered branch, in registration order."""
  return tuple(_REGISTRY)


def start(name: str, inputs: LevelInputs) -> tuple[steps_lib.TrainState, PyTree]:
  """The ``(starting state, masks)`` of branch ``name``.

  Raises:
    ValueError: ``name`` is not registered.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown lottery branch {name!r}; registered: {names()}")
  return _REGISTRY[name](inputs)


def rewind(family: steps_lib.Family, theta_k: steps_lib.TrainState, masks: PyTree, *,
           restore_optimizer: bool = True) -> steps_lib.TrainState:
  """Late resetting: surviving weights, BatchNorm statistics and step count back to θ_k.

  Args:
    theta_k: the dense run's state at the rewind step k.
    masks: the new ticket's masks; pruned weights become exactly 0.
    restore_optimizer: restore step k's optimizer state (moments of pruned entries zeroed), as
      the authors do; False starts a fresh optimizer.
  """
  opt = (steps_lib.mask_opt_state(family, theta_k.opt_state, masks) if restore_optimizer
         else steps_lib.fresh_opt_state(family, theta_k.params))
  return steps_lib.TrainState(theta_k.step, masks_lib.apply(theta_k.params, masks),
                              theta_k.batch_stats, opt)


def from_params(family: steps_lib.Family, at: steps_lib.TrainState, params: PyTree,
                batch_stats: PyTree, masks: PyTree) -> steps_lib.TrainState:
  """A run starting at ``at``'s step from ``params`` (masked) with a fresh optimizer."""
  return steps_lib.TrainState(at.step, masks_lib.apply(params, masks), batch_stats,
                              steps_lib.fresh_opt_state(family, params))


@register("ticket")
def ticket(x: LevelInputs):
  rewound = rewind(x.family, x.theta_k, x.ticket,
                   restore_optimizer=x.config.lottery.rewind_optimizer)
  return rewound, x.ticket


@register("random_reinit")
def random_reinit(x: LevelInputs):
  fresh = x.family.init(x.key("reinit"))
  return from_params(x.family, x.theta_k, fresh.params, fresh.batch_stats, x.ticket), x.ticket


@register("random_pruning")
def random_pruning(x: LevelInputs):
  m = pruning.random(x.key("random_pruning"), x.dense, like=x.ticket)
  return rewind(x.family, x.theta_k, m, restore_optimizer=x.config.lottery.rewind_optimizer), m


def _pruned_at_init(method: str, x: LevelInputs):
  """SNIP / GraSP / SynFlow at θ₀ to the ticket's global sparsity; trained from θ₀ at step k."""
  batch_key, loss_key = jax.random.split(x.key("score"))
  batch = data_lib.sample_batch(batch_key, x.images, x.config.train.batch_size)
  stats = x.theta_0.batch_stats
  # The family's own functions, with the arrays as arguments: every seed and level reuses one
  # compiled scorer (a closure per call recompiled: GraSP ~3-10 min per seed for the β-VAE).
  m = baselines.prune_at_init(
      method, params=x.theta_0.params, masks=x.dense, sparsity=x.sparsity,
      loss_fn=x.family.score_loss, loss_args=(stats, batch, loss_key),
      output_fn=x.family.synflow_output, output_args=(stats,),
      scope=x.config.prune.scope, iterations=x.config.lottery.synflow_iterations)
  return from_params(x.family, x.theta_k, x.theta_0.params, stats, m), m


for _method in baselines.METHODS:
  register(_method)(functools.partial(_pruned_at_init, _method))


@register("one_shot")
def one_shot(x: LevelInputs):
  m = pruning.magnitude(x.dense_trained.params, x.dense, x.sparsity, scope=x.config.prune.scope)
  return rewind(x.family, x.theta_k, m, restore_optimizer=x.config.lottery.rewind_optimizer), m

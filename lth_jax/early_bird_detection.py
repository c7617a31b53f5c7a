"""Early-bird detection (You et al., ICLR 2020): when has dense training settled on a ticket?

Every ``interval`` steps of dense training, the mask the target sparsity would give now is
computed; a :class:`Detector` keeps the last ``window`` masks and draws the ticket when every
normalised Hamming distance (:func:`lth_jax.masks.distance`) of the older masks to the newest is
``<= epsilon``. :func:`search` runs the dense training of several tickets in chunks of ``interval``
steps until each one's ticket is drawn or ``max_steps``; the masks stay on the device, and a
check of all tickets brings one scalar per ticket to the host. :func:`magnitude_masks` is the
mask of an unstructured ticket (channel masks: :func:`lth_jax.channels.channel_masks`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from lth_jax import pruning
from lth_jax import report
from lth_jax import steps as steps_lib

PyTree = Any
_ROUNDING = 1e-6    # masks.distance is float32: 2/20 -> 0.10000000149 must still count as <= 0.1


class Detector:
  """The last ``window`` masks of one ticket, kept on the device; draws the ticket when they have
  converged.

  ``ring`` holds the window: the mask tree with leaves ``[window, *leaf shape]`` (device arrays,
  oldest first). A check pushes a mask into it (:func:`_push`, jitted) and brings one int32
  scalar to the host: the most prunable entries in which an older mask of the window differs
  from the newest. The normalised Hamming distance (:func:`lth_jax.masks.distance`) is that count
  over the prunable entries, divided on the host in float32: XLA compiles a division by a
  constant as a multiplication by its reciprocal, which can change the last bit.

  Args:
    window: masks compared (the newest and ``window - 1`` older ones); >= 2.
    epsilon: the ticket is drawn when every normalised Hamming distance of an older mask in the
      window to the newest is ``<= epsilon``.

  Attributes:
    history: one dict per check: ``step`` and ``max_distance`` (None until the window is full).
    drawn_step, drawn_mask: the step and mask of the first draw (None before); the mask as
      checked (device arrays in :func:`search`).
  """

  def __init__(self, *, window: int = 5, epsilon: float = 0.1):
    if window < 2:
      raise ValueError(f"early_bird.window must be >= 2 (masks to compare), got {window}")
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"early_bird.epsilon must be in [0, 1], got {epsilon}")
    self.window = window
    self.epsilon = epsilon
    self.ring: PyTree = None
    self._entries = 0                 # prunable entries of one mask
    self.history: list[dict] = []
    self.drawn_step: int | None = None
    self.drawn_mask: PyTree = None

  @property
  def drawn(self) -> bool:
    return self.drawn_step is not None

  def start(self, shapes: PyTree) -> None:
    """Allocates the ring for masks shaped like ``shapes`` (arrays or ``jax.ShapeDtypeStruct``
    leaves; None leaves are not prunable). Its zeros are never compared: distances start once
    ``window`` masks have been checked."""
    self._entries = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    if not self._entries:
      raise ValueError("mask trees have no prunable leaves; distance is undefined")
    self.ring = jax.tree.map(lambda x: jnp.zeros((self.window, *x.shape), x.dtype), shapes)

  def update(self, step: int, mask: PyTree) -> bool:
    """Adds the mask of ``step`` (host or device arrays); returns True once the ticket has been
    drawn (now or before). One int32 scalar comes to the host."""
    if self.ring is None:
      self.start(mask)
    _, self.ring, differ = _push_jit(mask, self.ring)
    return self.record(step, mask, jax.device_get(differ))

  def record(self, step: int, mask: PyTree, differ: int | np.integer) -> bool:
    """The host half of a check: ``mask`` (of ``step``) was pushed into ``ring`` and ``differ``
    (a host integer) is :func:`_push`'s count. Returns :attr:`drawn`."""
    distance = None
    if len(self.history) + 1 >= self.window:
      distance = float(np.float32(differ) / np.float32(self._entries))
      if distance <= self.epsilon + _ROUNDING and not self.drawn:
        self.drawn_step, self.drawn_mask = int(step), mask
    self.history.append({"step": int(step), "max_distance": distance})
    return self.drawn


def _push(mask: PyTree, ring: PyTree) -> tuple[PyTree, PyTree, jax.Array]:
  """Pushes ``mask`` into ``ring`` (dropping the oldest) and compares the ring with it.

  Args:
    mask: a mask tree (bool leaves; None leaves are not prunable).
    ring: ``mask``'s tree with leaves ``[window, *leaf shape]``, oldest first.

  Returns:
    ``(mask, ring, differ)``: the new ring and ``differ``, an int32 scalar: the most entries in
    which a mask of the new ring differs from ``mask`` (the newest itself counts 0).
  """
  ring = jax.tree.map(lambda r, m: jnp.concatenate([r[1:], m[None]]), ring, mask)
  differ = sum(jnp.sum(r != m[None], axis=tuple(range(1, r.ndim)), dtype=jnp.int32)
               for r, m in zip(jax.tree.leaves(ring), jax.tree.leaves(mask)))
  return mask, ring, jnp.max(differ)


_push_jit = jax.jit(_push)


class SearchResult(NamedTuple):
  state: steps_lib.TrainState   # the search's dense state at ``step``
  step: int                     # the step the ticket was drawn (or the last step checked)
  drawn: bool                   # False: max_steps reached first; ``mask`` is the newest mask
  mask: PyTree                  # device arrays (the caller brings them to the host to save)
  history: list[dict]
  seconds: float                # this ticket's share of the search's wall-clock (compilation
  cpu_seconds: float            # included) and of the process's CPU time (all threads)


TrainGroup = Callable[[list[int], list[steps_lib.TrainState], int], list[steps_lib.TrainState]]


def search(train_group: TrainGroup, states: list[steps_lib.TrainState], *,
           mask_fn: Callable[..., PyTree], detectors: list[Detector], interval: int,
           max_steps: int, writer: report.MetricWriter | None = None,
           names: list[str] | None = None) -> list[SearchResult]:
  """Dense training of T tickets in chunks of ``interval`` steps until each one's ticket is drawn.

  The tickets not drawn yet train together (one group, e.g. through
  :class:`lth_jax.parallel.TicketRunner`); a ticket leaves the group at its draw. Each chunk's
  wall-clock and CPU time are split evenly over the tickets that trained in it.

  A check runs ``mask_fn`` and :func:`_push` in one jitted call per active ticket (compiled once
  for same-shaped tickets) and brings their T distance counts to the host in one
  ``jax.device_get``: the masks stay on the device.

  Args:
    train_group: ``(ticket indices, their states, until_step) -> trained states`` (the states
      may be donated).
    states: one starting state per ticket, all at the same step.
    mask_fn: ``TrainState -> mask tree`` (the mask the target sparsity would give now; jit-able,
      traced once here).
    detectors: one fresh :class:`Detector` per ticket.
    interval: steps between two masks.
    max_steps: absolute step at which the search stops without a draw.
    writer: optional; each window's maximum distance is written (``run=search``, ``ticket=name``).
    names: tags of the tickets for the writer and the log (default: their indices).
  """
  if interval < 1:
    raise ValueError(f"early_bird.interval must be >= 1, got {interval}")
  if len(states) != len(detectors) or not states:
    raise ValueError(f"search needs one detector per state, got {len(detectors)} for "
                     f"{len(states)}")
  names = names or [str(i) for i in range(len(states))]
  step = int(states[0].step)
  if step >= max_steps:
    raise ValueError(f"early-bird search has no step to run: the state is at step {step} and "
                     f"max_steps is {max_steps}")
  shapes = jax.eval_shape(mask_fn, states[0])
  for detector in detectors:
    if detector.ring is None:
      detector.start(shapes)
  check = jax.jit(lambda state, ring: _push(mask_fn(state), ring))
  states = list(states)
  active = list(range(len(states)))
  masks: list = [None] * len(states)
  spent = np.zeros((len(states), 2))          # wall-clock, CPU seconds
  while active and step < max_steps:
    step = min(step + interval, max_steps)
    start = clock()
    trained = train_group(active, [states[i] for i in active], step)
    jax.block_until_ready(trained)
    spent[active] += np.asarray(elapsed(start)) / len(active)
    differs = []
    for i, state in zip(active, trained):
      states[i] = state
      masks[i], detectors[i].ring, differ = check(state, detectors[i].ring)
      differs.append(differ)
    for i, differ in zip(active, jax.device_get(differs)):    # the check's one transfer
      detectors[i].record(step, masks[i], differ)
      distance = detectors[i].history[-1]["max_distance"]
      logging.info("early-bird check of ticket %s at step %d: max mask distance %s", names[i],
                   step, distance)
      if writer is not None and distance is not None:
        writer.write_scalars(step, {"mask_distance": distance}, run="search", ticket=names[i])
    active = [i for i in active if not detectors[i].drawn]
  results = []
  for i, detector in enumerate(detectors):
    drawn_step, mask = ((detector.drawn_step, detector.drawn_mask) if detector.drawn
                        else (step, masks[i]))
    results.append(SearchResult(states[i], drawn_step, detector.drawn, mask,
                                list(detector.history), *spent[i]))
  return results


def clock() -> tuple[float, float]:
  """(wall-clock, process CPU time) in seconds; CPU time is less sensitive to other jobs' load."""
  return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
  """(wall-clock, CPU) seconds since ``start``, a :func:`clock` reading."""
  wall, cpu = clock()
  return wall - start[0], cpu - start[1]


def magnitude_masks(params: PyTree, masks: PyTree, sparsity, *,
                    scope: str = "global") -> PyTree:
  """The mask keeping the largest ``|w|`` of the prunable leaves at ``sparsity`` (pruned share).

  ``sparsity``: one fraction, or ``{part: fraction}`` (each top-level part pruned on its own;
  parts not named keep their masks).
  """
  scores = jax.tree.map(lambda m, p: None if m is None else jnp.abs(p), masks, params,
                        is_leaf=lambda x: x is None)
  if not isinstance(sparsity, Mapping):
    return pruning.to_sparsity(scores, masks, sparsity, scope=scope)
  return {part: (pruning.to_sparsity(scores[part], masks[part], sparsity[part], scope=scope)
                 if part in sparsity else masks[part]) for part in masks}

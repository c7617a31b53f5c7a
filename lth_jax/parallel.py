"""Many tickets at once: independent training runs stacked on a ``ticket`` axis across devices.

T tickets (seeds, branches, sparsities, ...) of one family share the compiled program: their
states, masks and keys are stacked on a leading axis, placed on a mesh with axes
``('ticket', 'data')`` and trained by one ``jax.jit(jax.shard_map(...))`` call. Inside a device,
its block of tickets runs either vmapped or one after another (an unrolled Python loop: never a
rolled loop, which XLA CPU runs 40-70x slower for convolutions). Which is faster depends on
the backend; ``execution='auto'`` picks by the measurement in BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lth_jax import steps as steps_lib

PyTree = Any
EXECUTIONS = ("auto", "sequential", "vmap")


def resolve_execution(execution: str, platform: str | None = None) -> str:
  """'sequential' or 'vmap' for ``execution`` on ``platform`` (default: JAX's backend).

  'auto' is 'sequential' on CPU — measured here: 4 vmapped DCGAN tickets cost 4.8x one ticket
  (per-ticket weights turn convolutions into grouped ones) against 3.9x for 4 separate runs —
  and 'vmap' on GPU/TPU, where batching amortises kernel launches.
  """
  if execution not in EXECUTIONS:
    raise ValueError(f"unknown tickets.execution {execution!r}; expected one of {EXECUTIONS}")
  if execution != "auto":
    return execution
  return "sequential" if (platform or jax.default_backend()) == "cpu" else "vmap"


def make_mesh(*, data_parallel: int = 1, devices: Sequence[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """A ``('ticket', 'data')`` mesh over ``devices`` (default: this process's local devices).

  Args:
    data_parallel: devices per ticket on the ``data`` axis (each ticket's batch is split over
      them); the ``ticket`` axis gets ``len(devices) // data_parallel``.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if data_parallel < 1 or len(devices) % data_parallel:
    raise ValueError(f"tickets.data_parallel={data_parallel} must divide the device count "
                     f"{len(devices)}")
  grid = np.array(devices).reshape(len(devices) // data_parallel, data_parallel)
  return jax.sharding.Mesh(grid, ("ticket", "data"))


def stack(trees: Sequence[PyTree]) -> PyTree:
  """Stacks same-structured trees on a new leading axis (``None`` leaves stay ``None``)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
  """Inverse of :func:`stack`."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


def padded_count(num_tickets: int, num_shards: int) -> int:
  """Tickets after padding to a multiple of the ticket-axis size (padding repeats the last)."""
  return -(-num_tickets // num_shards) * num_shards


class TicketRunner:
  """Trains groups of same-shaped tickets of one family together.

  Args:
    family: the family whose ``train_step`` every ticket runs.
    mesh: a ``('ticket', 'data')`` mesh (see :func:`make_mesh`).
    execution: 'sequential' | 'vmap' | 'auto' (per-device block of tickets).
    steps_per_call: steps fused into one call (unrolled).
  """

  def __init__(self, family: steps_lib.Family, *, mesh: jax.sharding.Mesh,
               execution: str = "auto", steps_per_call: int = 1):
    self.family = family
    self.mesh = mesh
    self.execution = resolve_execution(execution, mesh.devices.flat[0].platform)
    self.steps_per_call = steps_per_call
    self._fns: dict = {}

  @property
  def num_shards(self) -> int:
    return self.mesh.shape["ticket"]

  def _single_device_loop(self) -> bool:
    return self.mesh.devices.size == 1 and self.execution == "sequential"

  def _compiled(self, n: int, block: int) -> Callable:
    """Jitted ``(states, masks, images, keys) -> (states, metrics)`` over stacked tickets."""
    key = (n, block)
    if key in self._fns:
      return self._fns[key]
    single = steps_lib.multi_step(self.family, n)
    one = single

    def block_fn(states, masks, images, keys):
      if self.execution == "vmap":
        return jax.vmap(one, in_axes=(0, 0, None, 0))(states, masks, images, keys)
      outs = [one(jax.tree.map(lambda x, i=i: x[i], states),
                  jax.tree.map(lambda x, i=i: x[i], masks), images, keys[i])
              for i in range(block)]
      return stack([o[0] for o in outs]), stack([o[1] for o in outs])

    sharded = jax.shard_map(block_fn, mesh=self.mesh,
                            in_specs=(P("ticket"), P("ticket"), P(), P("ticket")),
                            out_specs=(P("ticket"), P("ticket")),
                            axis_names={"ticket"}, check_vma=False)
    fn = jax.jit(sharded, donate_argnums=0)
    self._fns[key] = fn
    return fn

  def train(self, states: list[steps_lib.TrainState], masks: list[PyTree], images: jax.Array,
            run_keys: list[jax.Array], *, until_step: int,
            on_boundary: Callable[[int, list[steps_lib.TrainState]], None] | None = None,
            boundary_every: int = 0) -> list[steps_lib.TrainState]:
    """Trains every ticket from their common step to ``until_step``.

    Args:
      states, masks, run_keys: one per ticket; all states at the same step.
      images: uint8 [N, H, W, C] training images (shared by all tickets).
      until_step: absolute step to stop at.
      on_boundary: called as ``on_boundary(step, states)`` at every multiple of
        ``boundary_every`` and at the end (checkpointing); the states are per-ticket trees.

    Raises:
      FloatingPointError: a ticket's loss or params became NaN/Inf (names the ticket and step).
    """
    if not (len(states) == len(masks) == len(run_keys)) or not states:
      raise ValueError("train needs one state, mask tree and key per ticket")
    steps = {int(s.step) for s in states}
    if len(steps) != 1:
      raise ValueError(f"tickets trained together must start at the same step, got {steps}")
    step = steps.pop()
    t = len(states)
    if self._single_device_loop():
      return self._train_loop(states, masks, images, run_keys, step, until_step, on_boundary,
                              boundary_every)
    padded = padded_count(t, self.num_shards)
    pad = lambda xs: list(xs) + [xs[-1]] * (padded - t)
    sharding = NamedSharding(self.mesh, P("ticket"))
    put = lambda tree: jax.device_put(tree, sharding)
    stacked = put(stack(pad(states)))
    stacked_masks = put(stack(pad(masks)))
    keys = put(jnp.stack(pad(run_keys)))
    images = jax.device_put(images, NamedSharding(self.mesh, P()))
    while step < until_step:
      n = min(self.steps_per_call, until_step - step)
      if boundary_every:
        n = min(n, boundary_every - step % boundary_every)
      fn = self._compiled(n, padded // self.num_shards)
      stacked, metrics = fn(stacked, stacked_masks, images, keys)
      finite = np.asarray(jax.device_get(metrics["finite"]))[:t]
      step += n
      if not finite.all():
        raise FloatingPointError(f"ticket(s) {np.flatnonzero(finite < 1).tolist()} diverged: "
                                 f"NaN/Inf loss or params after step {step}")
      if on_boundary is not None and (step == until_step or (
          boundary_every and step % boundary_every == 0)):
        on_boundary(step, unstack(jax.device_get(stacked))[:t])
    return unstack(stacked)[:t]

  def _train_loop(self, states, masks, images, run_keys, step, until_step, on_boundary,
                  boundary_every):
    """One device, sequential: the tickets take turns, one jitted call each (no stacking)."""
    # Tickets may share buffers (e.g. one θ_k) and the jitted step donates its state: copy once.
    # Committing every input to the device keeps one compilation for fresh and restored arrays.
    device = self.mesh.devices.flat[0]
    put = lambda tree: jax.device_put(tree, device)
    states = [put(jax.tree.map(jnp.copy, s)) for s in states]
    masks, images, run_keys = put(list(masks)), put(images), put(list(run_keys))
    while step < until_step:
      n = min(self.steps_per_call, until_step - step)
      if boundary_every:
        n = min(n, boundary_every - step % boundary_every)
      key = (n, "single")
      if key not in self._fns:
        self._fns[key] = steps_lib.jit_multi_step(self.family, n)
      outs = [self._fns[key](s, m, images, k) for s, m, k in zip(states, masks, run_keys)]
      states = [o[0] for o in outs]
      finite = np.array([float(o[1]["finite"]) for o in outs])
      step += n
      if not finite.all():
        raise FloatingPointError(f"ticket(s) {np.flatnonzero(finite < 1).tolist()} diverged: "
                                 f"NaN/Inf loss or params after step {step}")
      if on_boundary is not None and (step == until_step or (
          boundary_every and step % boundary_every == 0)):
        on_boundary(step, states)
    return states

"""Many tickets at once: independent training runs stacked on a ``ticket`` axis across devices.

T tickets (seeds, branches, sparsities, ...) of one family share the compiled program: their
states, masks and keys are stacked on a leading axis, placed on a mesh with axes
``('ticket', 'data')`` and trained by one ``jax.jit(jax.shard_map(...))`` call, manual over
``ticket`` (and over ``data`` when it has size 1). Inside a device, its block of tickets runs in
one of three executions:

* ``'sequential'``: one after another (an unrolled Python loop inside the program);
* ``'vmap'``: vmapped; per-ticket kernels turn each convolution into a grouped one;
* ``'batched'``: vmapped, with every convolution written as patches times kernel
  (:func:`lth_jax.layers.conv_formulation`), so each layer of all T tickets is one batched
  matrix product.

Which is fastest depends on the backend and the model; ``execution='auto'`` is 'sequential' on
CPU and GPU (measured, BENCHMARKS.md) and ``'tune'`` on TPU (not measured): the runner times
each execution on the group's first call and keeps the fastest (:func:`resolve_execution`).
T not divisible by the ``ticket`` axis size is padded with copies of the last ticket, whose
results are dropped.

The host never waits for a call before dispatching the next: each call's metrics are fetched
after the next call has been dispatched (one call behind), and a divergence is reported then;
states are only fetched at checkpoint boundaries and at the end.

One after another, each ticket is bit-identical to the same ticket trained alone by
``steps.jit_multi_step`` in the same process (tested on 2 and 4 devices with XLA's default
threads; with ``PJRT_NPROC=8`` on 4 devices one ticket in three differed in the last bits);
vmapped or with a batch split over ``data``, equal within float tolerance.

Collectives: with ``data`` of size 1 the program has none, and so does everything around it.
Per-ticket results leave a multi-device mesh as host NumPy trees (``jax.device_get`` copies each
device's block): slicing ticket i out of a ticket-sharded device array would compile to an
all-reduce over every device, which XLA's CPU client can deadlock (see
:func:`lth_jax.meshes.cpu_collective_deadlock_risk`). A ``data`` axis > 1 needs all-reduces
inside the step; where XLA's CPU thread pool is too small for them, :class:`TicketRunner`
refuses to start.

The ``data`` axis splits each ticket's batch over ``data_parallel`` devices: the batch drawn by
``data.sample_batch`` is constrained to the ambient mesh's ``data`` axis (``data.shard_batch``)
and the compiler turns batch reductions (BatchNorm statistics, losses) into all-reduces, so the
math is the unsharded step's (equal within float tolerance). The DCGAN's noise ``z`` is constrained
the same way, so the generator's passes are data parallel too.

Multi-process (``jax.distributed``): the default mesh spans every process's devices, so the
``ticket`` axis is split across processes. Every process calls :meth:`TicketRunner.train` with
the same arguments (the same starting states, built deterministically); each process only reads
and trains the tickets of its own mesh rows (:meth:`TicketRunner.owners`), and all processes run
the one SPMD program together. Per-ticket results come back to every process as host NumPy trees,
so every process can take part in collective Orbax saves of any ticket.

Example::

  mesh = meshes.make_mesh(data_parallel=1)
  runner = parallel.TicketRunner(family, mesh=mesh, execution='auto')
  states = runner.train(states, masks, images, run_keys, until_step=1000)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lth_jax import layers
from lth_jax import meshes
from lth_jax import preemption
from lth_jax import steps as steps_lib

PyTree = Any
EXECUTIONS = ("auto", "sequential", "vmap", "batched", "tune")
CANDIDATES = ("sequential", "vmap", "batched")     # what 'tune' chooses from


def resolve_execution(execution: str, platform: str | None = None) -> str:
  """The execution of ``execution`` on ``platform`` (default: JAX's backend).

  'auto' is 'sequential' on CPU and GPU, measured (benchmarks/accelerator.py, BENCHMARKS.md):
  on 2 CPU cores vmapped DCGAN tickets cost 2.3x the same tickets one after another, as
  patches ~2x; on an H200 (width 64, T = 1..16) 'vmap' reached 0.36-0.78x and 'batched'
  0.63-1.01x of the tickets/hour of one at a time, 'sequential' 0.94-1.05x. On TPU, where nothing
  was measured, it is 'tune' (the runner measures).
  """
  if execution not in EXECUTIONS:
    raise ValueError(f"unknown tickets.execution {execution!r}; expected one of {EXECUTIONS}")
  if execution != "auto":
    return execution
  return "sequential" if (platform or jax.default_backend()) in ("cpu", "gpu") else "tune"


def stack(trees: Sequence[PyTree]) -> PyTree:
  """Stacks same-structured trees on a new leading axis (``None`` leaves stay ``None``)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: PyTree) -> list[PyTree]:
  """Inverse of :func:`stack` (NumPy leaves stay NumPy)."""
  n = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(n)]


class TicketRunner:
  """Trains groups of same-shaped tickets of one family together.

  Args:
    family: the family whose ``train_step`` every ticket runs.
    mesh: a ``('ticket', 'data')`` mesh (see :func:`lth_jax.meshes.make_mesh`).
    execution: 'sequential' | 'vmap' | 'batched' | 'tune' | 'auto' (per-device block of
      tickets). 'tune' times each of :data:`CANDIDATES` for two calls on the first group of
      each size and keeps the fastest (logged; :attr:`tuned`); the timing calls' results are
      discarded, so the run's results are those of the chosen execution. In a multi-process
      run process 0's choice is used everywhere.
    steps_per_call: steps fused into one call.
    loop: how a call's steps run: 'unrolled' | 'rolled' | 'auto' (per backend,
      :func:`lth_jax.steps.resolve_loop`).
    formulation: the convolutions of 'sequential' and 'vmap' (:data:`lth_jax.layers.FORMULATIONS`;
      'batched' is 'vmap' with 'patches').

  Raises:
    ValueError: the mesh's axes are not ``('ticket', 'data')``, the family's batch size is
      not divisible by the ``data`` axis size, or XLA's CPU client could deadlock the mesh's
      collectives (:func:`lth_jax.meshes.cpu_collective_deadlock_risk`; the message says how to
      start Python).
  """

  def __init__(self, family: steps_lib.Family, *, mesh: jax.sharding.Mesh,
               execution: str = "auto", steps_per_call: int = 1, loop: str = "auto",
               formulation: str = "xla"):
    if tuple(mesh.axis_names) != meshes.AXES:
      raise ValueError(f"TicketRunner needs a mesh with axes {meshes.AXES}, got {mesh.axis_names}")
    if family.batch_size % mesh.shape["data"]:
      raise ValueError(f"train.batch_size={family.batch_size} must be divisible by "
                       f"tickets.data_parallel={mesh.shape['data']}")
    self.family = family
    self.mesh = mesh
    self.execution = resolve_execution(execution, mesh.devices.flat[0].platform)
    self.tuned: dict[int, dict] = {}     # tickets -> {'choice': ..., execution: s per step}
    self.steps_per_call = steps_per_call
    self.loop = steps_lib.resolve_loop(loop, mesh.devices.flat[0].platform)
    if formulation not in layers.FORMULATIONS:
      raise ValueError(f"unknown convolution formulation {formulation!r}; expected one of "
                       f"{layers.FORMULATIONS}")
    self.formulation = formulation
    self.multiprocess = len({d.process_index for d in mesh.devices.flat}) > 1
    self._fns: dict = {}
    risk = meshes.cpu_collective_deadlock_risk(mesh)
    if risk:
      raise ValueError(risk)

  @property
  def num_shards(self) -> int:
    """Size of the mesh's ``ticket`` axis."""
    return self.mesh.shape["ticket"]

  def owners(self, num_tickets: int) -> list[int]:
    """The process that trains each of ``num_tickets`` tickets (see :func:`owners`)."""
    return meshes.owners(self.mesh, num_tickets)

  def _calls(self, execution, states, masks, images, run_keys):
    """``(call, fetch, carry)`` of ``execution`` for this group (see :meth:`_stacked_calls`)."""
    if self.mesh.devices.size == 1 and execution == "sequential":
      return self._one_device_calls(states, masks, images, run_keys)
    return self._stacked_calls(execution, states, masks, images, run_keys)

  def _execution_for(self, states, masks, images, run_keys) -> str:
    """The execution for a group of ``len(states)`` tickets ('tune': measured once per size)."""
    if self.execution != "tune":
      return self.execution
    t = len(states)
    if t not in self.tuned:
      timings = {}
      for execution in CANDIDATES:
        call, fetch, carry = self._calls(execution, states, masks, images, run_keys)
        carry, metrics = call(self.steps_per_call, carry)      # compiles
        fetch(metrics)
        start = time.perf_counter()
        carry, metrics = call(self.steps_per_call, carry)
        fetch(metrics)
        timings[execution] = (time.perf_counter() - start) / self.steps_per_call
      choice = min(timings, key=timings.get)
      if self.multiprocess:      # every process must run the same program
        index = multihost_utils.broadcast_one_to_all(np.int32(CANDIDATES.index(choice)))
        choice = CANDIDATES[int(index)]
      self.tuned[t] = {"choice": choice, **timings}
      logging.info("tickets.execution='tune' for %d tickets: %s (s per step: %s)", t, choice,
                   ", ".join(f"{k} {v:.4f}" for k, v in timings.items()))
    return self.tuned[t]["choice"]

  def _compiled(self, n: int, block: int, impl, execution: str) -> Callable:
    """Jitted ``(states, masks, images, key_data) -> (states, metrics)`` over stacked tickets.

    With ``data`` of size 1 the program has no collective at all: tickets are independent (and
    clear of XLA CPU's collective deadlock, see
    :func:`lth_jax.meshes.cpu_collective_deadlock_risk`).
    """
    key = (n, block, str(impl), execution)
    if key in self._fns:
      return self._fns[key]
    one = steps_lib.multi_step(self.family, n, self.loop,
                               "patches" if execution == "batched" else self.formulation)

    def block_fn(states, masks, images, key_data):
      keys = jax.random.wrap_key_data(key_data, impl=impl)
      if execution in ("vmap", "batched"):
        states, metrics = jax.vmap(one, in_axes=(0, 0, None, 0))(states, masks, images, keys)
      else:
        # Barriers around each ticket keep slicing and stacking out of its fusions: XLA then
        # compiles each ticket exactly as a single-ticket program (bit-identical results; a
        # slice fused into an update can change FMA contraction, i.e. the last bit).
        fence = jax.lax.optimization_barrier
        outs = [fence(one(fence(jax.tree.map(lambda x, i=i: x[i], states)),
                          fence(jax.tree.map(lambda x, i=i: x[i], masks)), images, keys[i]))
                for i in range(block)]
        states, metrics = stack([o[0] for o in outs]), stack([o[1] for o in outs])
      return states, metrics

    # 'data' is left to the compiler only when it splits batches: a size-1 automatic axis
    # still runs the SPMD partitioner, which reorders BatchNorm reductions (last-bit changes).
    manual = {"ticket"} if self.mesh.shape["data"] > 1 else set(meshes.AXES)
    sharded = jax.shard_map(block_fn, mesh=self.mesh,
                            in_specs=(P("ticket"), P("ticket"), P(), P("ticket")),
                            out_specs=(P("ticket"), P("ticket")), axis_names=manual,
                            check_vma=False)
    fn = jax.jit(sharded, donate_argnums=0)
    self._fns[key] = fn
    return fn

  def _stack(self, trees: Sequence[PyTree]) -> PyTree:
    """:func:`stack`, on the host in a multi-process run (every process holds every ticket)."""
    if not self.multiprocess:
      return stack(trees)
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)

  def _place(self, tree: PyTree, spec: P) -> PyTree:
    """Places ``tree`` with ``spec`` on the mesh (a global mesh: from each process's copy)."""
    sharding = NamedSharding(self.mesh, spec)
    if not self.multiprocess:
      return jax.device_put(tree, sharding)

    def global_array(x):
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(global_array, tree)

  def _to_host(self, stacked: PyTree) -> PyTree:
    """A ticket-sharded tree as host (NumPy) arrays of every ticket, on every process.

    One process: ``jax.device_get`` copies each device's block (no program, no collective).
    """
    if self.multiprocess:
      if "replicate" not in self._fns:
        self._fns["replicate"] = jax.jit(lambda tree: tree,
                                         out_shardings=NamedSharding(self.mesh, P()))
      stacked = self._fns["replicate"](stacked)
    return jax.device_get(stacked)

  def train(self, states: list[steps_lib.TrainState], masks: list[PyTree], images: jax.Array,
            run_keys: list[jax.Array], *, until_step: int,
            on_boundary: Callable[[int, list[steps_lib.TrainState]], None] | None = None,
            boundary_every: int = 0,
            on_chunk: Callable[[int, list[dict]], None] | None = None
            ) -> list[steps_lib.TrainState]:
    """Trains every ticket from their common step to ``until_step``.

    In a multi-process run every process must call this with the same arguments.

    Args:
      states, masks, run_keys: one per ticket; all states at the same step.
      images: uint8 [N, H, W, C] training images (shared by all tickets).
      until_step: absolute step to stop at.
      on_boundary: called as ``on_boundary(step, states)`` at every multiple of
        ``boundary_every`` and at the end (checkpointing) with every ticket's state: host
        (NumPy) trees on a multi-device mesh or process, device arrays on one device.
      on_chunk: called as ``on_chunk(step, metrics)`` for every call, with one dict of host
        floats per ticket (losses averaged over the call's steps), once the next call has
        been dispatched (at a boundary and at the end: before ``on_boundary``).

    Returns:
      The trained per-ticket states: device arrays on a one-device mesh, host NumPy trees of
      every ticket (on every process) otherwise.

    Raises:
      steps_lib.DivergenceError: a ticket's loss or params became NaN/Inf (names the ticket
        and step).
      preemption.Preempted: a stop was requested (:func:`preemption.reached`): before the first
        call (one process), or after a call, whose step is then passed to ``on_boundary``.
    """
    if not (len(states) == len(masks) == len(run_keys)) or not states:
      raise ValueError("train needs one state, mask tree and key per ticket")
    steps = {int(s.step) for s in states}
    if len(steps) != 1:
      raise ValueError(f"tickets trained together must start at the same step, got {steps}")
    step = steps.pop()
    t = len(states)
    execution = self._execution_for(states, masks, images, run_keys)
    call, fetch, carry = self._calls(execution, states, masks, images, run_keys)
    pending = None      # (step, device metrics) of the last call, fetched after the next dispatch

    def settle():
      done_step, device_metrics = pending
      metrics = fetch(device_metrics)
      finite = np.array([m.pop("finite") for m in metrics])
      if not finite.all():
        raise steps_lib.DivergenceError(
            f"ticket(s) {np.flatnonzero(finite < 1).tolist()} diverged: NaN/Inf loss or "
            f"params after step {done_step}")
      if on_chunk is not None:
        on_chunk(done_step, metrics)

    processes = jax.process_count()
    if processes == 1:
      preemption.check()
    for n in chunk_sizes(step, until_step, self.steps_per_call, boundary_every):
      carry, device_metrics = call(n, carry)
      if pending is not None:
        settle()
      step += n
      pending = (step, device_metrics)
      stop = preemption.reached(processes)
      if on_boundary is not None and (step == until_step or stop or (
          boundary_every and step % boundary_every == 0)):
        settle()                          # never checkpoint a diverged state
        pending = None
        on_boundary(step, self._states(carry, t))
      if stop:
        if pending is not None:
          settle()
        logging.warning("%s: stopping at step %d", stop, step)
        raise preemption.Preempted(stop, step if on_boundary is not None else None)
    if pending is not None:
      settle()
    return self._states(carry, t)

  def _states(self, carry, t: int) -> list[steps_lib.TrainState]:
    """The per-ticket states of a loop's carry (see :meth:`train`'s return value)."""
    if isinstance(carry, list):
      return carry
    if self.mesh.devices.size == 1:      # slicing one device's array needs no collective
      return unstack(carry)[:t]
    return unstack(self._to_host(carry))[:t]

  def _stacked_calls(self, execution, states, masks, images, run_keys):
    """``(call, fetch, carry)``: every ticket stacked, padded, placed on the mesh; one program.

    ``call(n, carry) -> (carry, device metrics)`` dispatches ``n`` steps; ``fetch(device
    metrics)`` waits for them and returns one dict of host floats per ticket."""
    t = len(states)
    padded = meshes.padded_count(t, self.num_shards)
    pad = lambda xs: list(xs) + [xs[-1]] * (padded - t)
    impl = jax.random.key_impl(run_keys[0])
    stacked = self._place(self._stack(pad(states)), P("ticket"))
    stacked_masks = self._place(self._stack(pad(masks)), P("ticket"))
    keys = self._place(self._stack([jax.random.key_data(k) for k in pad(run_keys)]),
                       P("ticket"))
    images = self._place(images, P())

    def call(n, carry):
      fn = self._compiled(n, padded // self.num_shards, impl, execution)
      return fn(carry, stacked_masks, images, keys)

    def fetch(metrics):
      host = self._to_host(metrics)
      return [{k: float(v[i]) for k, v in host.items()} for i in range(t)]

    return call, fetch, stacked

  def _one_device_calls(self, states, masks, images, run_keys):
    """``(call, fetch, carry)`` (as :meth:`_stacked_calls`): one device, sequential: the tickets
    take turns, one call each."""
    # Tickets may share buffers (e.g. one θ_k) and the jitted step donates its state: copy once.
    # Committing every input to the device keeps one compilation for fresh and restored arrays.
    device = self.mesh.devices.flat[0]
    put = lambda tree: jax.device_put(tree, device)
    states = [put(_copy_tree(s)) for s in states]
    masks, images, run_keys = put(list(masks)), put(images), put(list(run_keys))

    def call(n, carry):
      if (n, "single") not in self._fns:
        self._fns[(n, "single")] = steps_lib.jit_multi_step(self.family, n, self.loop,
                                                            self.formulation)
      outs = [self._fns[(n, "single")](s, m, images, k)
              for s, m, k in zip(carry, masks, run_keys)]
      return [o[0] for o in outs], [o[1] for o in outs]

    def fetch(metrics):
      return [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]

    return call, fetch, states


@jax.jit
def _copy_tree(tree: PyTree) -> PyTree:
  """A copy of every leaf in one compiled program (per-leaf ``jnp.copy`` compiles one program per
  leaf shape, each a compilation on a GPU)."""
  return jax.tree.map(jnp.copy, tree)


def chunk_sizes(step: int, until_step: int, steps_per_call: int, boundary_every: int = 0):
  """Yields the steps of each call from ``step`` to ``until_step``: ``steps_per_call`` at most,
  never crossing a multiple of ``boundary_every`` (checkpoints), so a resumed run makes exactly
  the calls of an uninterrupted one."""
  while step < until_step:
    n = min(steps_per_call, until_step - step)
    if boundary_every:
      n = min(n, boundary_every - step % boundary_every)
    yield n
    step += n

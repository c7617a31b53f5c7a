"""The ``('ticket', 'data')`` device mesh that many tickets train on (:mod:`lth_jax.parallel`):
building it, which process owns which ticket, a barrier, and when XLA's CPU client would
deadlock its collectives.

Example::

  mesh = meshes.make_mesh(data_parallel=2)     # tickets x 2 devices per ticket's batch
  meshes.owners(mesh, num_tickets=5)           # [process index of each ticket]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

AXES = ("ticket", "data")


def make_mesh(*, data_parallel: int = 1, devices: Sequence[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """A ``('ticket', 'data')`` mesh, both axes left to the compiler (``AxisType.Auto``).

  Args:
    data_parallel: devices per ticket on the ``data`` axis (each ticket's batch is split over
      them); the ``ticket`` axis gets ``len(devices) // data_parallel``.
    devices: the devices, in mesh order (consecutive devices share a ticket); default: every
      process's devices (``jax.devices()``), laid out by ``jax.make_mesh``.

  Raises:
    ValueError: ``data_parallel`` does not divide the device count.
  """
  count = jax.device_count() if devices is None else len(devices)
  if data_parallel < 1 or count % data_parallel:
    raise ValueError(f"tickets.data_parallel={data_parallel} must divide the device count "
                     f"{count}")
  shape = (count // data_parallel, data_parallel)
  auto = (jax.sharding.AxisType.Auto,) * 2
  if devices is None:
    return jax.make_mesh(shape, AXES, axis_types=auto)
  return jax.sharding.Mesh(np.array(list(devices)).reshape(shape), AXES, axis_types=auto)


def cpu_collective_deadlock_risk(mesh: jax.sharding.Mesh, *,
                                 environ: Mapping[str, str] = os.environ,
                                 cores: int | None = None) -> str | None:
  """Why XLA's CPU client may deadlock this mesh's collectives, or None if it won't.

  XLA's CPU client launches each device's part of a multi-device program on one pool of
  ``max(cores, devices)`` threads (``PJRT_NPROC``, else ``NPROC``, replaces the core count).
  A ``data`` axis > 1 puts all-reduces in the program; with no spare thread, the devices already
  in an all-reduce wait for a device whose launch waits for a free thread, for ever. Seen with
  4 forced host devices on 2 cores (native stacks in BUILD_NOTES.md); ``PJRT_NPROC`` set to
  twice the device count never hung in the same stress loop.

  Args:
    mesh: a ``('ticket', 'data')`` mesh.
    environ: the environment the process started with (XLA reads it once, at start-up).
    cores: CPUs this process may run on (default: ``os.sched_getaffinity``, as XLA counts).
  """
  devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  if len(devices) < 2 or devices[0].platform != "cpu" or mesh.shape["data"] == 1:
    return None
  overrides = [environ.get(name, "") for name in ("PJRT_NPROC", "NPROC")]
  overrides = [int(v) for v in overrides if v.strip().isdigit()]
  if overrides:
    cores = overrides[0]
  elif not cores:
    cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
             else os.cpu_count() or 1)
  threads = max(cores, len(devices))
  if threads >= 2 * len(devices):
    return None
  return (f"tickets.data_parallel={mesh.shape['data']} on {len(devices)} CPU devices with "
          f"{threads} XLA client threads: XLA's CPU collectives can deadlock when the thread "
          f"pool has no spare thread. Start Python with PJRT_NPROC={2 * len(devices)} (or more) "
          "in the environment.")


def barrier(name: str) -> None:
  """Waits until every process has reached the barrier ``name`` (no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def padded_count(num_tickets: int, num_shards: int) -> int:
  """Tickets after padding to a multiple of the ticket-axis size (padding repeats the last)."""
  return -(-num_tickets // num_shards) * num_shards


def owners(mesh: jax.sharding.Mesh, num_tickets: int) -> list[int]:
  """The process that trains each of ``num_tickets`` tickets on ``mesh`` (lowest index if shared).

  Ticket i lives on mesh row ``i // block`` with ``block = padded / rows``; a process should
  evaluate or report exactly the tickets it owns.
  """
  rows = mesh.shape["ticket"]
  block = padded_count(num_tickets, rows) // rows
  return [min(d.process_index for d in mesh.devices[i // block]) for i in range(num_tickets)]

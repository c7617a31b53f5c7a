"""Many tickets at once: ticket throughput of ``parallel.TicketRunner`` by tickets, devices, mode.

For T = 1, 2, 4, 8 tickets of a DCGAN (width 32, batch 64, z_dim 100, 32x32x1 uint8 random
images, Adam; each ticket its own seed, mask of 50% sparsity and data stream) on 1, 2 and 4
devices, with each device's block of tickets run one after another (``sequential``) or vmapped
(``vmap``): the wall time of one training step of the whole group, after warm-up (compilation
and one step), median of ``--repeats`` timings of ``--steps`` steps each. Reported as ticket
throughput relative to one ticket on one device (``T * t(1 ticket, 1 device) / t(T, devices)``;
above 1 means more tickets per hour than training them one by one) and as DCGAN tickets per hour
for a 5000-step run (the default config's ``train.steps``).

1 device + sequential is the runner's host loop (one jitted call per ticket); every other
configuration is one ``jax.jit(jax.shard_map(...))`` program over the ``('ticket', 'data')``
mesh, padded to a multiple of the device count.

Devices are host CPU devices forced with ``XLA_FLAGS=--xla_force_host_platform_device_count``,
one subprocess per device count (the flag must be set before JAX starts). Forced devices share
the machine's cores: on a 2-core machine 4 "devices" are not 4x the compute, they only change
how XLA splits the work into threads. The machine's load average is printed with the results.

Run (15-25 minutes on 2 cores, the vmapped T = 8 rows dominate; ``--quick``: T = 1, 4 on 1, 2
devices, about 5 minutes; ``--devices=4``: one device count)::

  .venv/bin/python benchmarks/tickets.py
  .venv/bin/python benchmarks/tickets.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HORIZON = 5000   # steps of one DCGAN ticket (configs: dcgan train.steps)


def child(tickets: list[int], executions: list[str], steps: int, repeats: int) -> None:
  """Measures every (T, execution) on this process's devices; prints one JSON line each."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from lth_jax import meshes, parallel, pruning  # pylint: disable=g-import-not-at-top
  from lth_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  fam = steps_lib.make_family("dcgan", channels=1, image_size=32, width=32, z_dim=100,
                              optimizer=dict(lr=2e-4, b1=0.5, b2=0.999), batch_size=64)
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2048, 32, 32, 1)), jnp.uint8)
  states, masks, keys = [], [], []
  for i in range(max(tickets)):
    state = fam.init(jax.random.key(i))
    dense = steps_lib.dense_masks(fam, state.params, {"generator": True, "discriminator": True},
                                  ("generator/convt0", "discriminator/head"))
    masks.append(pruning.magnitude(state.params, dense, 0.5))
    states.append(state)
    keys.append(jax.random.key(1000 + i))
  mesh = meshes.make_mesh()
  for execution in executions:
    runner = parallel.TicketRunner(fam, mesh=mesh, execution=execution)
    for t in tickets:
      start = time.perf_counter()
      current = runner.train(states[:t], masks[:t], images, keys[:t], until_step=2)
      compile_s = time.perf_counter() - start
      step, times, cpu = 2, [], []
      for _ in range(repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        current = runner.train(current, masks[:t], images, keys[:t], until_step=step + steps)
        jax.block_until_ready(current)
        times.append((time.perf_counter() - wall0) / steps)
        cpu.append((time.process_time() - cpu0) / steps)
        step += steps
      print(json.dumps({"devices": jax.device_count(), "execution": execution, "tickets": t,
                        "step_s": statistics.median(times), "cpu_s": statistics.median(cpu),
                        "warmup_s": compile_s}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--steps", type=int, default=5, help="steps per timing")
  parser.add_argument("--repeats", type=int, default=3, help="timings per configuration")
  parser.add_argument("--devices", default="",
                      help="comma-separated device counts (default 1,2,4; --quick 1,2)")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args()
  tickets = [1, 4] if args.quick else [1, 2, 4, 8]
  device_counts = [int(n) for n in args.devices.split(",")] if args.devices else (
      [1, 2] if args.quick else [1, 2, 4])
  executions = ["sequential", "vmap"]
  if args.child:
    child(tickets, executions, args.steps, args.repeats)
    return

  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
  rows = []
  for n in device_counts:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
           "JAX_PLATFORMS": "cpu", "JAX_THREEFRY_PARTITIONABLE": "0"}
    command = [sys.executable, os.path.abspath(__file__), "--child=1", f"--steps={args.steps}",
               f"--repeats={args.repeats}"] + (["--quick"] if args.quick else [])
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as proc:
      for line in proc.stdout:
        if line.startswith("{"):
          rows.append(json.loads(line))
          r = rows[-1]
          print(f"  measured: {r['devices']} devices, {r['execution']:10s} T={r['tickets']}: "
                f"{1000 * r['step_s']:.0f} ms/step", flush=True)
    if proc.returncode:
      sys.exit(f"child with {n} devices failed (exit {proc.returncode})")
  base = next((r["step_s"] for r in rows if r["devices"] == 1 and r["tickets"] == 1
               and r["execution"] == "sequential"), float("nan"))   # nan: 1 device not run
  print(f"\nload average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
  print("\n| devices | execution | T | ms / group step | CPU/wall | ticket throughput vs 1 ticket "
        f"on 1 device | DCGAN tickets / hour ({HORIZON} steps) |")
  print("|---:|---|---:|---:|---:|---:|---:|")
  for r in rows:
    ratio = r["tickets"] * base / r["step_s"]
    per_hour = 3600 * r["tickets"] / (r["step_s"] * HORIZON)
    print(f"| {r['devices']} | {r['execution']} | {r['tickets']} | {1000 * r['step_s']:.0f} | "
          f"{r['cpu_s'] / r['step_s']:.2f} | {ratio:.2f}x | {per_hour:.1f} |")


if __name__ == "__main__":
  main()

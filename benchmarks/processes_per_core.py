"""One process on every core vs one process per core: ticket throughput on a CPU machine.

``experiments/reproduce.py`` can run as several processes sharing one workdir. This measures
whether that pays on this machine: the same group of DCGAN tickets (``parallel.TicketRunner``,
``sequential``, 1 step per call; width ``--width``, batch 64, 32x32x1 uint8 random images,
50%-sparse magnitude masks, Adam) trained by

1. one process that may use every core (XLA's own threads), and
2. one process per core, each pinned to its core (``os.sched_setaffinity`` before JAX starts),
   all timing at once: each compiles and warms up, waits until every other is ready, then
   times the same number of steps.

Printed: ticket-steps per second of each setting and their ratio. Linux only (CPU affinity).
Run (about 3 minutes on 2 cores; stop other work first)::

  .venv/bin/python benchmarks/processes_per_core.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def child(core: int | None, width: int, tickets: int, steps: int, barrier: str,
          parties: int) -> None:
  """Trains ``tickets`` tickets for ``steps`` timed steps; prints one JSON line."""
  if core is not None:
    os.sched_setaffinity(0, {core})
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import accelerator  # pylint: disable=g-import-not-at-top  (its DCGAN tickets)
  from lth_jax import meshes, parallel  # pylint: disable=g-import-not-at-top

  fam = accelerator.family(width)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4096, 32, 32, 1), np.uint8))
  states, masks, keys = accelerator.tickets(fam, tickets)
  runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                                 execution="sequential", steps_per_call=1)
  current = runner.train(states, masks, images, keys, until_step=2)
  jax.block_until_ready(current)
  open(os.path.join(barrier, f"ready{core}"), "w").close()
  while len(os.listdir(barrier)) < parties:
    time.sleep(0.05)
  start = time.perf_counter()
  current = runner.train(current, masks, images, keys, until_step=2 + steps)
  jax.block_until_ready(current)
  print(json.dumps({"core": core, "ticket_steps_per_s": tickets * steps /
                    (time.perf_counter() - start)}), flush=True)


def run(cores: list[int | None], args) -> list[dict]:
  """Starts one child per entry of ``cores`` at once; their JSON results."""
  with tempfile.TemporaryDirectory() as barrier:
    procs = [subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", f"--core={c}",
         f"--width={args.width}", f"--tickets={args.tickets}", f"--steps={args.steps}",
         f"--barrier={barrier}", f"--parties={len(cores)}"],
        stdout=subprocess.PIPE, text=True) for c in cores]
    outs = [p.communicate()[0] for p in procs]
  if any(p.returncode for p in procs):
    raise SystemExit("a child failed: " + " | ".join(outs))
  return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--tickets", type=int, default=3)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--child", action="store_true")
  parser.add_argument("--core", default="None")
  parser.add_argument("--barrier", default="")
  parser.add_argument("--parties", type=int, default=1)
  args = parser.parse_args()
  if args.child:
    child(None if args.core == "None" else int(args.core), args.width, args.tickets,
          args.steps, args.barrier, args.parties)
    return
  cores = sorted(os.sched_getaffinity(0))
  print(f"# {platform.machine()}, {len(cores)} cores {cores}; load average "
        f"{os.getloadavg()[0]:.2f}; DCGAN width {args.width}, {args.tickets} tickets, "
        f"{args.steps} timed steps")
  one = run([None], args)[0]["ticket_steps_per_s"]
  print(f"one process on every core: {one:.2f} ticket-steps/s", flush=True)
  each = [r["ticket_steps_per_s"] for r in run(cores, args)]
  print(f"one process per core: {' + '.join(f'{x:.2f}' for x in each)} = {sum(each):.2f} "
        f"ticket-steps/s")
  print(f"ratio (one per core / one on every core): {sum(each) / one:.2f}x")


if __name__ == "__main__":
  main()

"""XLA CPU collective deadlock: hangs of a 4-device ``data``-axis run, with and without PJRT_NPROC.

Each run is a fresh process with 4 forced host CPU devices. It trains 3 DCGAN tickets (width 8,
batch 8, dense) one after another over the ``ticket`` axis for 3 steps, then 2 tickets with each
batch split over a ``data`` axis of 2 (the program then has all-reduces) for 3 steps: the order
that hung CI's test worker (BUILD_NOTES.md, "Many tickets"). Meanwhile ``--hogs`` busy-loop
processes load the cores. A run counts as hung when XLA logs that a collective has waited
``--stuck_seconds`` for its peers (a deadlock never recovers); it is then killed. Reported per
``PJRT_NPROC`` setting: runs, hangs, and the median seconds of the runs that finished.
``--data_only`` skips the sequential tickets, to see whether earlier multi-device work matters.

XLA's CPU client gives multi-device programs ``max(cores, devices)`` threads, ``PJRT_NPROC``
replacing the core count: on 2 cores with 4 devices, 4 threads by default.

Run (about 10 minutes on 2 cores with the defaults)::

  .venv/bin/python benchmarks/collective_deadlock.py
  .venv/bin/python benchmarks/collective_deadlock.py --runs=12 --nproc=default,5,8
  .venv/bin/python benchmarks/collective_deadlock.py --nproc=default --data_only
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

DEVICES = 4


def child(data_only: bool) -> None:
  """The run: sequential tickets over 4 devices (unless data_only), then a data-parallel run."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from lth_jax import parallel  # pylint: disable=g-import-not-at-top
  from lth_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  fam = steps_lib.make_family("dcgan", channels=1, image_size=32, width=8, z_dim=16,
                              optimizer=dict(lr=1e-3, b1=0.5, b2=0.999), batch_size=8)
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (64, 32, 32, 1)), jnp.uint8)
  states = [fam.init(jax.random.key(i)) for i in range(3)]
  masks = [steps_lib.dense_masks(fam, s.params, {p: True for p in fam.parts}) for s in states]
  keys = [jax.random.key(100 + i) for i in range(3)]
  for data_parallel, tickets in ((2, 2),) if data_only else ((1, 3), (2, 2)):
    runner = parallel.TicketRunner(fam, mesh=parallel.make_mesh(data_parallel=data_parallel),
                                   execution="sequential")
    jax.block_until_ready(runner.train(states[:tickets], masks[:tickets], images,
                                       keys[:tickets], until_step=3))
  print("DONE", flush=True)


def one_run(nproc: str, stuck_seconds: int, timeout: float, data_only: bool
            ) -> tuple[bool, float]:
  """(hung, seconds) of one child process with ``PJRT_NPROC=nproc`` ('default': unset)."""
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  env.update({"JAX_PLATFORMS": "cpu", "JAX_THREEFRY_PARTITIONABLE": "0",
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} "
                           f"--xla_cpu_collective_call_warn_stuck_timeout_seconds={stuck_seconds} "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=3600 "
                           "--xla_cpu_collective_timeout_seconds=3600"})
  if nproc != "default":
    env["PJRT_NPROC"] = nproc
  start = time.perf_counter()
  command = [sys.executable, os.path.abspath(__file__), "--child"]
  proc = subprocess.Popen(command + (["--data_only"] if data_only else []), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  watchdog = threading.Timer(timeout, proc.kill)
  watchdog.start()
  hung, tail = False, []
  for line in proc.stdout:
    tail = (tail + [line])[-20:]
    if "may be stuck" in line:
      hung = True
      proc.kill()
      break
  proc.wait()
  watchdog.cancel()
  seconds = time.perf_counter() - start
  if not hung and (proc.returncode or "DONE\n" not in tail):
    sys.exit(f"run with PJRT_NPROC={nproc} failed (exit {proc.returncode}, {seconds:.0f} s):\n"
             + "".join(tail))
  return hung, seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=6, help="runs per PJRT_NPROC setting")
  parser.add_argument("--nproc", default="default,8",
                      help="comma-separated PJRT_NPROC settings ('default': unset)")
  parser.add_argument("--hogs", type=int, default=3, help="busy-loop processes meanwhile")
  parser.add_argument("--stuck_seconds", type=int, default=20,
                      help="a collective waiting this long counts as a hang")
  parser.add_argument("--timeout", type=float, default=600, help="seconds before a run is killed")
  parser.add_argument("--data_only", action="store_true",
                      help="only the data-parallel run, no sequential tickets before it")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args.data_only)
    return

  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"{cores} cores, {DEVICES} forced devices, {args.hogs} busy-loop processes, "
        f"{'data-parallel run only' if args.data_only else 'tickets then data-parallel run'}; "
        "load average "
        f"before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
  hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
  results = {}
  try:
    for nproc in args.nproc.split(","):
      results[nproc] = []
      for i in range(args.runs):
        results[nproc].append(one_run(nproc, args.stuck_seconds, args.timeout, args.data_only))
        hung, seconds = results[nproc][-1]
        print(f"  PJRT_NPROC={nproc} run {i + 1}: {'HUNG' if hung else 'finished'} "
              f"({seconds:.0f} s)", flush=True)
  finally:
    for hog in hogs:
      hog.kill()
      hog.wait()
  print("\n| PJRT_NPROC | XLA client threads | runs | hangs | median s (finished runs) |")
  print("|---|---:|---:|---:|---:|")
  for nproc, runs in results.items():
    threads = max(cores if nproc == "default" else int(nproc), DEVICES)
    done = [s for hung, s in runs if not hung]
    median = f"{statistics.median(done):.0f}" if done else "-"
    print(f"| {nproc} | {threads} | {len(runs)} | {sum(h for h, _ in runs)} | {median} |")


if __name__ == "__main__":
  main()

"""XLA CPU collective deadlock: hangs of 4-device runs, before and after the fix, side by side.

XLA's CPU client runs each device's part of a multi-device program on one pool of
``max(cores, devices)`` threads (``PJRT_NPROC`` replaces the core count): with 4 forced host
devices on 2 cores, 4 threads. A program with a collective can then deadlock: the devices already
in it wait for a device whose launch waits for a free thread (BUILD_NOTES.md, "Many tickets").

Each run is a fresh process with 4 forced host devices, beside ``--hogs`` busy-loop processes.
Settings (interleaved, so load changes hit all of them alike):

* ``tickets/old``: CI's hung test worker (``tests/test_parallel.py devices tickets4``) as the code
  before commit 08af96d ran it. ``--calls`` ``TicketRunner.train`` calls of one step each, 3 DCGAN
  tickets (width 8, batch 8), ``data_parallel=1``, sequential; after each call the states go back
  on the mesh ticket-sharded (``P('ticket')``) and each ticket is sliced out on device
  (``parallel.unstack``), as the old ``train`` returned them, into the next call. Such a slice
  compiles to an all-reduce over every device (printed first, from the compiled HLO).
* ``tickets/library``: the same calls, the library as it is: ``train`` returns host NumPy trees
  (``jax.device_get``: no program), and the step program has no collective.
* ``data/default``: 2 tickets with batches split over a ``data`` axis of 2 (all-reduces in the
  step), default threads: the library refuses at start-up (``TicketRunner`` raises a ValueError
  naming ``PJRT_NPROC``); counted as refused.
* ``data/nproc``: the same with ``PJRT_NPROC=--data_nproc`` (default 8): it runs.

A run counts as hung when XLA logs that a collective has waited ``--stuck_seconds`` for its
peers (a deadlock never recovers), or when it passes ``--timeout``; it is then killed.

Run (16 minutes on 2 cores shared with other work, load average ~6, with the defaults)::

  .venv/bin/python benchmarks/collective_deadlock.py
  .venv/bin/python benchmarks/collective_deadlock.py --runs=8 --settings=tickets/old,tickets/library
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time

DEVICES = 4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIVES = ("all-reduce", "collective-permute", "all-gather", "all-to-all", "reduce-scatter")
REFUSED = 3     # a child's exit status when TicketRunner refuses to start


def child(scenario: str, path: str, calls: int, evidence: bool) -> None:
  """One run of a scenario (see the module docstring); ``evidence``: print HLO collectives only."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  from lth_jax import meshes, parallel  # pylint: disable=g-import-not-at-top
  from lth_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top

  fam = steps_lib.make_family("dcgan", channels=1, image_size=32, width=8, z_dim=16,
                              optimizer=dict(lr=1e-3, b1=0.5, b2=0.999), batch_size=8)
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (64, 32, 32, 1)), jnp.uint8)
  t, data_parallel = (3, 1) if scenario == "tickets" else (2, 2)
  states = [fam.init(jax.random.key(i)) for i in range(t)]
  masks = [steps_lib.dense_masks(fam, s.params, {p: True for p in fam.parts}) for s in states]
  keys = [jax.random.key(100 + i) for i in range(t)]
  try:
    runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(data_parallel=data_parallel),
                                   execution="sequential")
  except ValueError as e:
    print(f"REFUSED: {e}", flush=True)
    sys.exit(REFUSED)
  sharding = NamedSharding(runner.mesh, P("ticket"))
  padded = meshes.padded_count(t, runner.num_shards)

  def on_mesh(trees):  # the states as the old train's program left them: ticket-sharded
    host = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                        *(list(trees) + [trees[-1]] * (padded - t)))
    return jax.device_put(host, sharding)

  if evidence:
    def found(text):
      counts = {c: len(re.findall(rf" {c}(-start)?\(", text)) for c in COLLECTIVES}
      return ", ".join(f"{n} {c}" for c, n in counts.items() if n) or "no collective"
    x = on_mesh(states).params["generator"]
    x = jax.tree.leaves(x)[0]
    old = jax.jit(lambda a: a[1]).lower(x).compile().as_text()
    print(f"EVIDENCE old: slicing ticket 1 of a {x.dtype}{list(x.shape)} array sharded "
          f"P('ticket') (jax.jit(lambda a: a[1])): {found(old)}", flush=True)
    args = (on_mesh(states), on_mesh(masks),
            jax.device_put(images, NamedSharding(runner.mesh, P())),
            on_mesh([jax.random.key_data(k) for k in keys]))
    # pylint: disable-next=protected-access
    step = runner._compiled(1, padded // runner.num_shards, jax.random.key_impl(keys[0]),
                            runner.execution)
    print(f"EVIDENCE library: the train step program (data_parallel=1): "
          f"{found(step.lower(*args).compile().as_text())}; results leave the mesh by "
          "jax.device_get (no program)", flush=True)
    return
  for call in range(calls):
    states = runner.train(states, masks, images, keys, until_step=call + 1)
    if path == "old":
      states = parallel.unstack(on_mesh(states))[:t]
  jax.block_until_ready(states)
  print("DONE", flush=True)


def one_run(setting: dict, args: argparse.Namespace, evidence: bool = False
            ) -> tuple[str, float, str]:
  """(outcome: 'hung' | 'refused' | 'finished', seconds, last output lines) of one child."""
  env = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  env.update({"JAX_PLATFORMS": "cpu", "JAX_THREEFRY_PARTITIONABLE": "0",
              "PYTHONPATH": os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p),
              "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} "
                           "--xla_cpu_collective_call_warn_stuck_timeout_seconds="
                           f"{args.stuck_seconds} "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=3600 "
                           "--xla_cpu_collective_timeout_seconds=3600"})
  if setting["nproc"] != "default":
    env["PJRT_NPROC"] = setting["nproc"]
  command = [sys.executable, os.path.abspath(__file__), "--child", setting["scenario"],
             setting["path"], f"--calls={args.calls}"] + ["--evidence"] * evidence
  start = time.perf_counter()
  proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  timed_out = threading.Event()
  watchdog = threading.Timer(args.timeout, lambda: (timed_out.set(), proc.kill()))
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
  if hung or timed_out.is_set():
    return "hung", seconds, "".join(tail)
  if proc.returncode == REFUSED and any(l.startswith("REFUSED") for l in tail):
    return "refused", seconds, "".join(tail)
  if proc.returncode or not any(l.startswith(("DONE", "EVIDENCE")) for l in tail):
    sys.exit(f"{setting['name']} failed (exit {proc.returncode}, {seconds:.0f} s):\n"
             + "".join(tail))
  return "finished", seconds, "".join(tail)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=4, help="runs per setting")
  parser.add_argument("--calls", type=int, default=20, help="train calls per run")
  parser.add_argument("--settings",
                      default="tickets/old,tickets/library,data/default,data/nproc",
                      help="comma-separated settings (see the module docstring)")
  parser.add_argument("--data_nproc", default="8", help="PJRT_NPROC of the data/nproc setting")
  parser.add_argument("--hogs", type=int, default=3, help="busy-loop processes meanwhile")
  parser.add_argument("--stuck_seconds", type=int, default=20,
                      help="a collective waiting this long counts as a hang")
  parser.add_argument("--timeout", type=float, default=300, help="seconds before a run is killed")
  parser.add_argument("--child", nargs=2, metavar=("SCENARIO", "PATH"), help=argparse.SUPPRESS)
  parser.add_argument("--evidence", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(*args.child, args.calls, args.evidence)
    return

  known = {"tickets/old": ("tickets", "old", "default"),
           "tickets/library": ("tickets", "library", "default"),
           "data/default": ("data", "library", "default"),
           "data/nproc": ("data", "library", args.data_nproc)}
  settings = []
  for name in args.settings.split(","):
    scenario, path, nproc = known[name]
    label = f"PJRT_NPROC={nproc}" if nproc != "default" else "default threads"
    settings.append(dict(name=name, scenario=scenario, path=path, nproc=nproc, label=label))
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"{cores} cores, {DEVICES} forced devices, {args.hogs} busy-loop processes, "
        f"{args.runs} runs x {len(settings)} settings, {args.calls} train calls a run; "
        f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
  hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.hogs)]
  results = {s["name"]: [] for s in settings}
  messages = {}
  started = time.perf_counter()
  try:
    if any(s["scenario"] == "tickets" for s in settings):
      outcome, _, text = one_run(dict(name="evidence", scenario="tickets", path="old",
                                      nproc="default"), args, evidence=True)
      print("".join(l for l in text.splitlines(True) if l.startswith("EVIDENCE"))
            or f"evidence run {outcome}:\n{text}", end="", flush=True)
    for i in range(args.runs):
      for s in settings:
        outcome, seconds, text = one_run(s, args)
        results[s["name"]].append((outcome, seconds))
        first = [l for l in text.splitlines() if l.startswith("REFUSED") or "may be stuck" in l]
        if first and s["name"] not in messages:
          messages[s["name"]] = first[0].strip()[:400]
        print(f"  run {i + 1} {s['name']} ({s['label']}): {outcome} ({seconds:.0f} s)",
              flush=True)
  finally:
    for hog in hogs:
      hog.kill()
      hog.wait()
  print(f"\n{time.perf_counter() - started:.0f} s in all; load average after: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
  for name, message in messages.items():
    print(f"{name}: {message}")
  print("\n| scenario | path / setting | XLA threads | runs | hung | refused | finished "
        "| median s (finished) |")
  print("|---|---|---:|---:|---:|---:|---:|---:|")
  for s in settings:
    runs = results[s["name"]]
    count = lambda o, runs=runs: sum(outcome == o for outcome, _ in runs)
    done = [sec for outcome, sec in runs if outcome == "finished"]
    median = f"{statistics.median(done):.0f}" if done else "-"
    threads = max(cores if s["nproc"] == "default" else int(s["nproc"]), DEVICES)
    print(f"| {s['scenario']} | {s['path']}, {s['label']} | {threads} | {len(runs)} "
          f"| {count('hung')} | {count('refused')} | {count('finished')} | {median} |")


if __name__ == "__main__":
  main()

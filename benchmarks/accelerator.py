"""Tickets at accelerator speed: one run, side-by-side ratios on whatever backend JAX finds.

A masked DCGAN G+D step (batch 64, 32x32x1 uint8 random images, z_dim 100, Adam, ~50% sparse
masks with the paper's exclusions; the model of ``benchmarks/train_step.py``), measured five ways
in one process, after warm-up (compilation and one call), medians of ``--repeats`` timings:

0. **One layer.** Each stride-2 convolution of the model (D's convs, G's transposed convs), its
   forward and both gradients, for one ticket and for T vmapped tickets (own kernels and
   inputs), in each convolution formulation (``layers.FORMULATIONS``): which formulation makes
   T tickets' layer cost least, and which layer is slow.
1. **Stacked tickets.** T = 1, 2, 4, 8, 16 tickets (own seeds, masks, keys) through
   ``parallel.TicketRunner`` on one device, for each execution ('sequential', 'vmap',
   'batched'), 'sequential' in each of ``--formulations`` ('vmap' is 'xla', 'batched' is
   'patches'), with the backend's default loop and ``--steps_per_call``. Ratio: tickets/hour
   over one ticket at a time (``T * t(1 ticket, sequential) / t(T tickets)``); above 1, the
   group beats training its tickets one after another. The mode 'auto' picks is marked.
2. **Fused steps.** One ticket, ``steps.jit_multi_step`` with n steps per call, unrolled and
   rolled (``lax.scan``), in each of ``--formulations``: steps/s over n = 1 ('xla').
3. **Mixed precision.** One ticket, ``train.precision`` 'bf16' vs 'fp32' (steps/s ratio).
5. **Where a stacked step's time goes.** The parts of one train step (``Family`` functions, no
   DCGAN internals): a batch draw, G's eval forward, the gradient of ``score_loss`` (G and D
   forward and backward), the masked optimizer update, and the whole ``train_step``, each
   jitted for one ticket and vmapped over ``--layer_tickets`` in each formulation. A part whose
   T-ticket time is near T times one ticket's is the one that does not batch. Each part also
   gives its compiled program's kernel count (``kernels``: the operations of its entry
   computation that launch work), the same for 1 and T tickets when vmap adds no operations.
4. **PyTorch eager** (the authors' style: ``param.data.mul_(mask)`` after each step), the same
   model and initial weights on the same device, if torch is installed (``.[bench]``; the GPU
   image has it): lth_jax's fastest one-ticket setting over torch's step time.

Defaults follow the backend: width 64, T up to 16, 10 steps per call and fused n = 1, 10, 50 on
GPU/TPU; width 32, T up to 4, 1 step per call and n = 1, 4 on CPU (a CPU run takes ~10-15
minutes on 2 cores). Run::

  .venv/bin/python benchmarks/accelerator.py                 # CPU here
  source .device/env.sh && python benchmarks/accelerator.py  # on the GPU machine
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as bench  # noqa: E402  (the shared DCGAN setup and the PyTorch model)

from lth_jax import data as data_lib  # noqa: E402
from lth_jax import layers  # noqa: E402
from lth_jax import masks as masks_lib  # noqa: E402
from lth_jax import meshes, parallel, pruning, steps  # noqa: E402
from lth_jax.models import dcgan  # noqa: E402

HORIZON = 5000    # steps of one DCGAN ticket, for tickets/hour


def family(width: int, precision: str = "fp32") -> steps.Family:
  return steps.make_family("dcgan", channels=bench.CHANNELS, image_size=bench.IMAGE, width=width,
                           z_dim=bench.Z_DIM, optimizer=bench.OPTIMIZER, batch_size=bench.BATCH,
                           precision=precision)


def tickets(fam: steps.Family, t: int):
  """t tickets: seed i, a 50%-sparse magnitude mask, run key 1000 + i."""
  states, masks, keys = [], [], []
  for i in range(t):
    state = fam.init(jax.random.key(i))
    dense = steps.dense_masks(fam, state.params, {p: True for p in fam.parts}, bench.EXCLUDE)
    m = pruning.magnitude(state.params, dense, bench.SPARSITY)
    states.append(state._replace(params=masks_lib.apply(state.params, m)))
    masks.append(m)
    keys.append(jax.random.key(1000 + i))
  return states, masks, keys


def seconds_per_call(fn, args, repeats, calls):
  """Median over ``repeats`` of the mean seconds of ``calls`` calls ``fn(*args)`` (after one
  warm-up call, which compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times)


def conv_layers(width: int) -> list[tuple[str, tuple[int, ...], tuple[int, ...], bool]]:
  """``(name, input shape, kernel shape, transposed)`` of the DCGAN's stride-2 4x4 layers."""
  d = dcgan.discriminator_widths(width, bench.IMAGE)
  g = dcgan.generator_widths(width, bench.IMAGE) + (bench.CHANNELS,)
  out, size, cin = [], bench.IMAGE, bench.CHANNELS
  for i, cout in enumerate(d):
    out.append((f"D conv{i} {cin}->{cout}", (bench.BATCH, size, size, cin), (4, 4, cin, cout),
                False))
    size, cin = size // 2, cout
  size = 4
  for i, (cin, cout) in enumerate(zip(g[:-1], g[1:])):
    out.append((f"G convt{i + 1} {cin}->{cout}", (bench.BATCH, size, size, cin),
                (4, 4, cin, cout), True))
    size *= 2
  return out


def layer_fn(transposed: bool, formulation: str, t: int):
  """Jitted ``(x, kernel, cotangent) -> (dx, dkernel)`` of one layer (t > 1: vmapped over t)."""
  def layer(x, kernel):
    if transposed:
      return layers.conv_transpose(x, kernel, 2, 1)
    return layers.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def grads(x, kernel, cotangent):
    with layers.conv_formulation(formulation):
      y, pullback = jax.vjp(layer, x, kernel)
    del y
    return pullback(cotangent)

  return jax.jit(grads if t == 1 else jax.vmap(grads))


def time_layers(width, formulations, t, repeats, calls=20):
  """Prints, per layer, ms of forward + gradients for 1 and t tickets in each formulation."""
  print(f"| layer | " + " | ".join(f"{f} T=1" for f in formulations) + " | "
        + " | ".join(f"{f} T={t}" for f in formulations) + f" | best T={t} vs {t}x best T=1 |")
  print("|---|" + "---:|" * (2 * len(formulations) + 1))
  rng = np.random.default_rng(0)
  for name, x_shape, k_shape, transposed in conv_layers(width):
    row = {}
    for count in (1, t):
      lead = () if count == 1 else (count,)
      x = jnp.asarray(rng.normal(size=lead + x_shape), jnp.float32)
      kernel = jnp.asarray(rng.normal(size=lead + k_shape), jnp.float32) * 0.05
      out_size = x_shape[1] * 2 if transposed else x_shape[1] // 2
      cotangent = jnp.asarray(rng.normal(size=lead + (x_shape[0], out_size, out_size,
                                                      k_shape[3])), jnp.float32)
      for formulation in formulations:
        row[formulation, count] = seconds_per_call(layer_fn(transposed, formulation, count),
                                                   (x, kernel, cotangent), repeats, calls)
    best_one = min(row[f, 1] for f in formulations)
    best_t = min(row[f, t] for f in formulations)
    print(f"| {name} | " + " | ".join(f"{1e3 * row[f, 1]:.3f}" for f in formulations) + " | "
          + " | ".join(f"{1e3 * row[f, t]:.3f}" for f in formulations)
          + f" | {best_t / (t * best_one):.2f}x |", flush=True)


def step_parts(fam: steps.Family, images) -> dict:
  """``{part name: f(state, masks, key)}``: the pieces of one train step (see section 5)."""
  def optimizer(state, masks, key):
    del key
    return {part: steps.masked_update(fam.optimizers[part], state.params[part],
                                      state.opt_state[part], state.params[part], masks[part])
            for part in fam.parts}
  batch = lambda key: data_lib.sample_batch(key, images, fam.batch_size)
  return {
      "batch draw": lambda state, masks, key: batch(key),
      "G forward (eval)": lambda state, masks, key: fam.generate(
          state.params, state.batch_stats, key, fam.batch_size),
      "score_loss gradient": lambda state, masks, key: jax.grad(fam.score_loss)(
          state.params, state.batch_stats, batch(key), key),
      "masked optimizer update": optimizer,
      "train_step": lambda state, masks, key: fam.train_step(state, masks, images, key),
  }


_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def kernel_count(fn, args) -> int:
  """Operations of ``jax.jit(fn)``'s compiled entry computation that launch work on the device
  (fusions, library calls, copies; not parameters, constants, tuples or bitcasts)."""
  text = fn.lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):].split("\n}")[0]
  ops = re.findall(r"^\s*(?:ROOT )?\S+ = .*? ([a-z][a-z-]*)\(", entry, re.M)
  return sum(op not in _NOT_KERNELS for op in ops)


def time_step_parts(fam, states, masks, keys, images, formulations, t, repeats, calls=10):
  """Prints, per part of a train step, ms and kernels for 1 and t vmapped tickets in each
  formulation."""
  print(f"| part | " + " | ".join(f"{f} T=1 | {f} T={t} | {f} ratio | {f} kernels"
                                   for f in formulations) + " |")
  print("|---|" + "---:|" * (4 * len(formulations)))
  one = (states[0], masks[0], keys[0])
  stacked = tuple(parallel.stack(x[:t]) for x in (states, masks, keys))
  for name, fn in step_parts(fam, images).items():
    cells = []
    for formulation in formulations:
      def traced(*args, fn=fn, formulation=formulation):
        with layers.conv_formulation(formulation):
          return fn(*args)
      programs = ((jax.jit(traced), one), (jax.jit(jax.vmap(traced)), stacked))
      row = [seconds_per_call(jitted, args, repeats, calls) for jitted, args in programs]
      kernels = " / ".join(str(kernel_count(jitted, args)) for jitted, args in programs)
      cells.append(f"{1e3 * row[0]:.3f} | {1e3 * row[1]:.3f} | {row[1] / (t * row[0]):.2f}x | "
                   f"{kernels}")
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def time_runner(runner, states, masks, images, keys, steps_per_timing, repeats):
  """(median seconds per group step, seconds of the warm-up call incl. compilation)."""
  start = time.perf_counter()
  current = runner.train(states, masks, images, keys, until_step=runner.steps_per_call)
  jax.block_until_ready(current)
  warmup = time.perf_counter() - start
  step, times = runner.steps_per_call, []
  for _ in range(repeats):
    start = time.perf_counter()
    current = runner.train(current, masks, images, keys, until_step=step + steps_per_timing)
    jax.block_until_ready(current)
    times.append((time.perf_counter() - start) / steps_per_timing)
    step += steps_per_timing
  return statistics.median(times), warmup


def time_fn(fn, state, masks, images, n, steps_per_timing, repeats):
  """Median seconds per step of a jitted ``multi_step`` of n steps (state donated)."""
  key = jax.random.key(1)
  state = jax.tree.map(jnp.copy, state)
  state, metrics = fn(state, masks, images, key)
  jax.block_until_ready((state, metrics))
  calls = max(1, steps_per_timing // n)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      state, metrics = fn(state, masks, images, key)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / (calls * n))
  return statistics.median(times)


def main(argv=None) -> None:
  backend = jax.default_backend()
  accel = backend != "cpu"
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=int, default=64 if accel else 32)
  parser.add_argument("--tickets", default="1,2,4,8,16" if accel else "1,2,4")
  parser.add_argument("--executions", default="sequential,vmap,batched")
  parser.add_argument("--formulations", default="xla,patches" if accel else "xla",
                      help="convolution formulations of 'sequential' and of sections 2 and 3 "
                      "('vmap' is 'xla', 'batched' 'patches'; section 0 runs both)")
  parser.add_argument("--steps_per_call", type=int, default=10 if accel else 1)
  parser.add_argument("--fused", default="1,10,50" if accel else "1,4")
  parser.add_argument("--max_unrolled", type=int, default=10,
                      help="largest unrolled n in section 2 (its compile time grows with n)")
  parser.add_argument("--layer_tickets", type=int, default=8 if accel else 4)
  parser.add_argument("--sections", default="0,1,2,3,4,5",
                      help="sections to run (they run in the order 0, 5, 1, 2, 3, 4)")
  parser.add_argument("--steps", type=int, default=100 if accel else 4,
                      help="steps per timing")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args(argv)
  counts = [int(t) for t in args.tickets.split(",")]
  executions = args.executions.split(",")
  formulations = args.formulations.split(",")
  sections = {int(x) for x in args.sections.split(",")}
  device = jax.devices()[0]
  print(f"# lth_jax on {backend}: {device.device_kind} ({jax.device_count()} device(s)); "
        f"jax {jax.__version__}; {platform.machine()}, {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.2f}")
  print(f"DCGAN width {args.width}, batch {bench.BATCH}, sparsity {bench.SPARSITY}; "
        f"{args.steps} steps per timing, median of {args.repeats}")
  fam = family(args.width)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (bench.N_IMAGES, bench.IMAGE, bench.IMAGE,
                                             bench.CHANNELS), np.uint8))
  states, masks, keys = tickets(fam, max(counts + [args.layer_tickets]))
  mesh = meshes.make_mesh(devices=jax.devices()[:1])
  auto = parallel.resolve_execution("auto", backend)
  loop = steps.resolve_loop("auto", backend)

  if 0 in sections:
    print(f"\n## 0. One layer: forward + both gradients, ms (T = {args.layer_tickets} vmapped)")
    time_layers(args.width, list(layers.FORMULATIONS), args.layer_tickets, args.repeats)

  if 5 in sections:
    print(f"\n## 5. Where a stacked step's time goes (ms; ratio = T={args.layer_tickets} over "
          f"{args.layer_tickets} x T=1)")
    time_step_parts(fam, states, masks, keys, images, list(layers.FORMULATIONS),
                    args.layer_tickets, args.repeats)

  group: dict[tuple[str, int], float] = {}
  variants = [(e, f) for e in executions
              for f in {"batched": ["patches"], "vmap": ["xla"]}.get(e, formulations)]
  if 1 in sections:
    print(f"\n## 1. Stacked tickets (one device; loop '{loop}', {args.steps_per_call} steps per "
          f"call; 'auto' = '{auto}'); baseline: 'sequential', '{formulations[0]}', T = 1")
    print("| execution | formulation | T | ms / group step | tickets / hour | vs one at a time "
          "| warm-up s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for execution, formulation in variants:
      runner = parallel.TicketRunner(fam, mesh=mesh, execution=execution,
                                     steps_per_call=args.steps_per_call,
                                     formulation=formulation)
      for t in counts:
        per_step, warmup = time_runner(runner, states[:t], masks[:t], images, keys[:t],
                                       args.steps, args.repeats)
        group[f"{execution}/{formulation}", t] = per_step
        one = group.get((f"sequential/{formulations[0]}", 1), per_step / t)
        mark = " (auto)" if execution == auto else ""
        print(f"| {execution}{mark} | {formulation} | {t} | {1e3 * per_step:.2f} | "
              f"{3600 * t / (per_step * HORIZON):.0f} | {t * one / per_step:.2f}x | "
              f"{warmup:.0f} |", flush=True)

  single, best, t16 = {}, (float("inf"), ""), {}
  if 2 in sections:
    print("\n## 2. Fused steps (one ticket, jit_multi_step)")
    print("| formulation | loop | steps per call | ms / step | vs 1 step per call |")
    print("|---|---|---:|---:|---:|")
    fused = [int(n) for n in args.fused.split(",")]
    for formulation in formulations:
      for loop_kind in ("unrolled", "rolled"):
        for n in fused:
          if (n == 1 and loop_kind == "rolled") or (loop_kind == "unrolled"
                                                    and n > args.max_unrolled):
            continue
          fn = steps.jit_multi_step(fam, n, loop_kind, formulation)
          per_step = time_fn(fn, states[0], masks[0], images, n, args.steps, args.repeats)
          single.setdefault(formulation, per_step)
          best = min(best, (per_step, f"{formulation}, {loop_kind}, {n} per call"))
          print(f"| {formulation} | {loop_kind} | {n} | {1e3 * per_step:.3f} | "
                f"{single[formulations[0]] / per_step:.2f}x |", flush=True)

  if 3 in sections and single:
    print("\n## 3. Mixed precision (one ticket, 1 step per call)")
    half = family(args.width, "bf16")
    for formulation in formulations:
      t16[formulation] = time_fn(steps.jit_multi_step(half, 1, "unrolled", formulation),
                                 states[0], masks[0], images, 1, args.steps, args.repeats)
      print(f"{formulation}: fp32 {1e3 * single[formulation]:.3f} ms/step, bf16 "
            f"{1e3 * t16[formulation]:.3f} ms/step: bf16 is "
            f"{single[formulation] / t16[formulation]:.2f}x the steps/s of fp32", flush=True)

  if 4 in sections and single:
    print("\n## 4. PyTorch eager, same model and device")
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      torch = None
    if args.no_torch or torch is None:
      print("skipped (torch not installed: pip install -e '.[bench]')" if torch is None
            else "skipped (--no_torch)")
    else:
      torch_device = "cuda" if backend == "gpu" and torch.cuda.is_available() else "cpu"
      runner = bench.TorchRunner(torch, args.width, jax.device_get(states[0].params),
                                 jax.device_get(masks[0]), jax.device_get(images), masked=True,
                                 compile_models=False, device=torch_device)
      torch_step = statistics.median(runner.run(args.steps)[0] for _ in range(args.repeats))
      print(f"torch {torch.__version__} eager on {torch_device}: {1e3 * torch_step:.2f} ms/step; "
            f"lth_jax's fastest one-ticket setting ({best[1]}) {1e3 * best[0]:.3f} ms/step: "
            f"{torch_step / best[0]:.2f}x torch's steps/s")

  print("\n## Ratios")
  base = group.get((f"sequential/{formulations[0]}", 1))
  for name in dict.fromkeys(k for k, _ in group):
    if base:
      ratios = ", ".join(f"T={t} {t * base / group[name, t]:.2f}x" for t in counts)
      print(f"tickets/hour vs one at a time, {name}: {ratios}")
  if single:
    print(f"fused steps: best ({best[1]}) {single[formulations[0]] / best[0]:.2f}x the steps/s "
          f"of 1 step per call ('{formulations[0]}')")
  for formulation, value in t16.items():
    print(f"bf16 vs fp32 ({formulation}): {single[formulation] / value:.2f}x")


if __name__ == "__main__":
  main()

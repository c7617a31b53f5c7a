"""Masked GAN G+D train step: lth_jax (jit) vs PyTorch (eager and torch.compile), same CPU.

``--family`` picks the GAN: ``dcgan`` (default; what follows), ``sngan`` or ``resnet_dcgan``
(the family's registered loss, optimizer, z_dim and exclusions; the PyTorch twins in
``torch_zoo.py``: PyTorch's own initialisation and a random mask of the same density).

One process, same data shape (batch 64 of 32x32x1 uint8 images, Fashion-MNIST-like random
data), same architecture (the authors' DCGAN: ConvTranspose2d/Conv2d/BatchNorm2d, z_dim 100) and
the same ~50%-sparse mask (``pruning.magnitude`` over ``steps.dense_masks`` with the paper's
exclusions ``generator/convt0`` and ``discriminator/head``), copied into PyTorch together with
the initial weights. Per step: one D step (real + fake.detach()), then one G step on the same
fake; non-saturating BCE loss; Adam(2e-4, betas (0.5, 0.999)).

lth_jax runs ``steps.jit_multi_step`` (masks are traced arguments: grads, Adam moments, updates
and params all masked). PyTorch masks the authors' way: ``param.data.mul_(mask)`` after each
optimizer step.

Variants (medians of interleaved repetitions after warm-up; wall and process CPU time):

* ``jax masked``: the 50%-sparse mask, ``steps_per_call`` 1 and 4.
* ``jax ones``: all-kept masks (``dense_masks``) through the same compiled program.
* ``jax unmasked``: a mask tree of ``None`` leaves, i.e. no masking ops at all; the cost of
  masking is ``masked / unmasked``.
* ``torch eager masked`` (``torch.set_num_threads(os.cpu_count())``), the same with 1 thread
  (shows OpenMP's behaviour on a shared machine), and ``torch.compile masked`` (G and D
  modules compiled; skipped with ``--no-compile`` and ``--quick``).
* a 2048x2048 float32 ``jnp`` matmul, the machine's reachable FLOP/s in the same run.

FLOPs per step come from XLA's ``cost_analysis()`` of the compiled lth_jax step (it counts
only multiply-adds that touch real data, not the zero padding); the same count is used for
PyTorch (same architecture). The analytic count printed beside it
(``2 * k^2 * C_in * C_out * H_out * W_out`` per convolution pass, padding included) is ~20%
higher.

PyTorch's OpenMP threads spin-wait; on a machine shared with other jobs this makes its
2-thread runs very slow. ``OMP_WAIT_POLICY=PASSIVE`` (set in the environment, before the
run) is the fair setting there.

Run (3-10 minutes on 2 cores, depending on load; ``--quick``: 0.5-2 minutes)::

  .venv/bin/python benchmarks/train_step.py
  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_step.py
  .venv/bin/python benchmarks/train_step.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import torch_zoo
from lth_jax import configs
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import steps
from lth_jax.models import dcgan

BATCH = 64
IMAGE = 32
CHANNELS = 1
Z_DIM = 100
N_IMAGES = 4096
OPTIMIZER = {"lr": 2e-4, "b1": 0.5, "b2": 0.999}
EXCLUDE = ("generator/convt0", "discriminator/head")
SPARSITY = 0.5


# ------------------------------------------------------------------------------ FLOP counts
def analytic_flops(width: int) -> float:
  """FLOPs (multiply-add = 2) of one G+D step, counting only the convolutions.

  Per layer with forward cost F: G: forward, kernel gradient, input gradient (none for z).
  D step, for the real and the fake batch each: forward, kernel gradient, input gradient
  (none for the image). G step: D forward on the fake batch and the input gradient down to the
  image (no D kernel gradient).
  """
  g_hidden = dcgan.generator_widths(width, IMAGE)
  d_hidden = dcgan.discriminator_widths(width, IMAGE)

  def conv(k, cin, cout, hout):
    return 2.0 * k * k * cin * cout * hout * hout * BATCH

  # The transposed conv in scatter form: every input pixel meets every kernel tap.
  g_layers, cin, size = [], Z_DIM, 1
  for i, cout in enumerate(g_hidden + (CHANNELS,)):
    g_layers.append(conv(4, cin, cout, size))
    cin, size = cout, (4 if i == 0 else size * 2)
  d_layers, cin, size = [], CHANNELS, IMAGE
  for cout in d_hidden:
    size //= 2
    d_layers.append(conv(4, cin, cout, size))
    cin = cout
  d_layers.append(conv(4, cin, 1, 1))
  g = 3 * sum(g_layers) - g_layers[0]
  d_step = 2 * (3 * sum(d_layers) - d_layers[0])
  g_step_d = 2 * sum(d_layers)
  return g + d_step + g_step_d


def xla_flops(compiled) -> float:
  """The ``flops`` entry of a compiled program's cost analysis (a dict, or a list of dicts)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    return float(sum(c.get("flops", 0.0) for c in cost))
  return float(cost.get("flops", 0.0))


# ------------------------------------------------------------------------------------ lth_jax
def compile_step(family, state, masks, images, steps_per_call: int):
  """``jit_multi_step`` lowered and compiled for these argument shapes (masks' tree included)."""
  return steps.jit_multi_step(family, steps_per_call).lower(
      state, masks, images, jax.random.key(1)).compile()


class JaxRunner:
  """One compiled ``jit_multi_step`` program with its own (donated) state and masks."""

  def __init__(self, fn, state, masks, images, steps_per_call: int):
    self.fn, self.masks, self.images, self.spc = fn, masks, images, steps_per_call
    self.state = jax.tree.map(jnp.copy, state)
    self.key = jax.random.key(1)
    self.flops = xla_flops(fn) / steps_per_call
    self.run(2 * steps_per_call)

  def run(self, n_steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over ``n_steps`` (whole calls), after a warm call."""
    self.state, metrics = self.fn(self.state, self.masks, self.images, self.key)
    jax.block_until_ready((self.state, metrics))
    calls = -(-n_steps // self.spc)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
      self.state, metrics = self.fn(self.state, self.masks, self.images, self.key)
    jax.block_until_ready((self.state, metrics))
    n = calls * self.spc
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


class MatmulRunner:
  """A 2048x2048 float32 matmul, jitted."""

  def __init__(self, size: int = 2048):
    keys = jax.random.split(jax.random.key(2))
    self.a = jax.random.normal(keys[0], (size, size), jnp.float32)
    self.b = jax.random.normal(keys[1], (size, size), jnp.float32)
    self.fn = jax.jit(jnp.matmul)
    self.flops = 2.0 * size ** 3
    self.run(2)

  def run(self, n: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per matmul."""
    self.fn(self.a, self.b).block_until_ready()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
      self.fn(self.a, self.b).block_until_ready()
    return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n


# ------------------------------------------------------------------------------------ PyTorch
def torch_models(torch, width: int):
  """The authors' DCGAN in PyTorch (NCHW), param layout matching lth_jax's for copying."""
  nn = torch.nn
  g_hidden = dcgan.generator_widths(width, IMAGE)
  d_hidden = dcgan.discriminator_widths(width, IMAGE)

  class Generator(nn.Module):
    def __init__(self):
      super().__init__()
      cins = (Z_DIM,) + g_hidden
      couts = g_hidden + (CHANNELS,)
      self.convt = nn.ModuleList(
          nn.ConvTranspose2d(ci, co, 4, 1 if i == 0 else 2, 0 if i == 0 else 1,
                             bias=i == len(g_hidden))
          for i, (ci, co) in enumerate(zip(cins, couts)))
      self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in g_hidden)

    def forward(self, z):
      x = z.view(z.shape[0], Z_DIM, 1, 1)
      for conv, bn in zip(self.convt, self.bn):
        x = torch.relu(bn(conv(x)))
      return torch.tanh(self.convt[-1](x))

  class Discriminator(nn.Module):
    def __init__(self):
      super().__init__()
      cins = (CHANNELS,) + d_hidden[:-1]
      self.conv = nn.ModuleList(nn.Conv2d(ci, co, 4, 2, 1, bias=i == 0)
                                for i, (ci, co) in enumerate(zip(cins, d_hidden)))
      self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in d_hidden[1:])
      self.head = nn.Conv2d(d_hidden[-1], 1, 4, 1, 0)

    def forward(self, x):
      x = nn.functional.leaky_relu(self.conv[0](x), 0.2)
      for conv, bn in zip(self.conv[1:], self.bn):
        x = nn.functional.leaky_relu(bn(conv(x)), 0.2)
      return self.head(x).view(-1)

  return Generator(), Discriminator()


def jax_to_torch(torch, params, masks, gen, disc):
  """Copies lth_jax params into the PyTorch modules; returns ``[(param, float mask)]``."""
  pairs = []

  def put(tparam, value, mask, perm):
    value = np.array(value)   # a writable host copy
    tparam.data.copy_(torch.from_numpy(np.ascontiguousarray(value.transpose(perm)
                                                            if perm else value)))
    if mask is not None:
      m = np.asarray(mask, np.float32)
      pairs.append((tparam, torch.from_numpy(np.ascontiguousarray(m.transpose(perm)))))

  pg, mg = params["generator"], masks["generator"]
  for i, conv in enumerate(gen.convt):
    put(conv.weight, pg[f"convt{i}"]["kernel"], mg[f"convt{i}"]["kernel"], (2, 3, 0, 1))
    if conv.bias is not None:
      put(conv.bias, pg[f"convt{i}"]["bias"], None, None)
  for i, bn in enumerate(gen.bn):
    put(bn.weight, pg[f"bn{i}"]["scale"], None, None)
    put(bn.bias, pg[f"bn{i}"]["bias"], None, None)
  pd, md = params["discriminator"]["body"], masks["discriminator"]["body"]
  for i, conv in enumerate(disc.conv):
    put(conv.weight, pd[f"conv{i}"]["kernel"], md[f"conv{i}"]["kernel"], (3, 2, 0, 1))
    if conv.bias is not None:
      put(conv.bias, pd[f"conv{i}"]["bias"], None, None)
  for i, bn in enumerate(disc.bn):
    put(bn.weight, pd[f"bn{i + 1}"]["scale"], None, None)
    put(bn.bias, pd[f"bn{i + 1}"]["bias"], None, None)
  head = params["discriminator"]["head"]
  put(disc.head.weight, head["kernel"], masks["discriminator"]["head"]["kernel"], (3, 2, 0, 1))
  put(disc.head.bias, head["bias"], None, None)
  return pairs


class TorchRunner:
  """The PyTorch step (authors' style); ``masked`` re-masks after each optimizer step.

  ``device``: a torch device name ('cpu', 'cuda'); models, masks, data and random numbers live
  there, and timings wait for the device (``torch.cuda.synchronize``).
  """

  def __init__(self, torch, width, params, masks, images_nhwc, *, masked: bool,
               compile_models: bool, threads: int | None = None, device: str = "cpu",
               models=None, loss: str = "bce", z_dim: int = Z_DIM):
    """``models``: ``(gen, disc, [(param, mask)])`` of another GAN (default: the DCGAN with
    ``params`` and ``masks`` copied in); ``loss``: 'bce' or 'hinge'."""
    self.torch, self.threads, self.device, self.z_dim = torch, threads, device, z_dim
    if models is None:
      gen, disc = torch_models(torch, width)
      pairs = jax_to_torch(torch, params, masks, gen, disc)
    else:
      gen, disc, pairs = models
    gen, disc = gen.to(device), disc.to(device)
    pairs = [(p, m.to(device)) for p, m in pairs]
    self.g_masks = [(p, m) for p, m in pairs if any(p is q for q in gen.parameters())]
    self.d_masks = [(p, m) for p, m in pairs if any(p is q for q in disc.parameters())]
    if not masked:
      self.g_masks, self.d_masks = [], []
    self.opt_g = torch.optim.Adam(gen.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.opt_d = torch.optim.Adam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    self.gen, self.disc = ((torch.compile(gen), torch.compile(disc)) if compile_models
                           else (gen, disc))
    self.images = torch.from_numpy(np.ascontiguousarray(np.array(images_nhwc)
                                                        .transpose(0, 3, 1, 2))).to(device)
    self.hinge = loss == "hinge"
    self.loss = torch.nn.BCEWithLogitsLoss()
    self.ones = torch.ones(BATCH, device=device)
    self.zeros = torch.zeros(BATCH, device=device)
    self.generator = torch.Generator(device=device).manual_seed(0)
    self.run(2)

  def step(self):
    torch = self.torch
    idx = torch.randint(self.images.shape[0], (BATCH,), generator=self.generator,
                        device=self.device)
    real = self.images[idx].float() * (2.0 / 255.0) - 1.0
    z = torch.randn(BATCH, self.z_dim, generator=self.generator, device=self.device)
    fake = self.gen(z)
    self.opt_d.zero_grad(set_to_none=True)
    if self.hinge:
      d_loss = (torch.relu(1 - self.disc(real)).mean()
                + torch.relu(1 + self.disc(fake.detach())).mean())
    else:
      d_loss = (self.loss(self.disc(real), self.ones)
                + self.loss(self.disc(fake.detach()), self.zeros))
    d_loss.backward()
    self.opt_d.step()
    with torch.no_grad():
      for p, m in self.d_masks:
        p.data.mul_(m)
    self.opt_g.zero_grad(set_to_none=True)
    g_loss = -self.disc(fake).mean() if self.hinge else self.loss(self.disc(fake), self.ones)
    g_loss.backward()
    self.opt_g.step()
    with torch.no_grad():
      for p, m in self.g_masks:
        p.data.mul_(m)

  def run(self, n_steps: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per step, after one untimed step."""
    default_threads = self.torch.get_num_threads()
    self.torch.set_num_threads(self.threads or default_threads)
    sync = self.torch.cuda.synchronize if self.device.startswith("cuda") else lambda: None
    try:
      self.step()
      sync()
      start, cpu = time.perf_counter(), time.process_time()
      for _ in range(n_steps):
        self.step()
      sync()
      return (time.perf_counter() - start) / n_steps, (time.process_time() - cpu) / n_steps
    finally:
      self.torch.set_num_threads(default_threads)


# -------------------------------------------------------------------------------- the bench
def build(width: int, torch, *, spcs, compile_torch: bool, name: str = "dcgan"
          ) -> tuple[dict, dict]:
  """All runners of family ``name`` at one width: ``({name: runner}, info)``."""
  config = configs.get_config(name)   # dcgan: Z_DIM, OPTIMIZER, EXCLUDE and its BCE loss
  z_dim, loss = config.model.z_dim, config.loss.kind
  family = steps.make_family(name, channels=CHANNELS, image_size=IMAGE, width=width, z_dim=z_dim,
                             optimizer=dict(config.train.optimizer), batch_size=BATCH,
                             loss_kind=loss)
  state = family.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (N_IMAGES, IMAGE, IMAGE, CHANNELS), np.uint8))
  ones = steps.dense_masks(family, state.params, {"generator": True, "discriminator": True},
                           exclude=tuple(config.prune.exclude))
  sparse = pruning.magnitude(state.params, ones, SPARSITY)
  none = jax.tree.map(lambda _: None, state.params)
  sparse_params = masks_lib.apply(state.params, sparse)
  sparse_state = state._replace(params=sparse_params,
                                opt_state=steps.fresh_opt_state(family, sparse_params))
  info = {"sparsity": float(masks_lib.sparsity(sparse)),
          "analytic_flops": analytic_flops(width) if name == "dcgan" else float("nan")}
  runners: dict[str, Callable] = {}
  for spc in spcs:
    t0 = time.perf_counter()
    fn = compile_step(family, sparse_state, sparse, images, spc)
    info[f"compile_s spc{spc}"] = time.perf_counter() - t0
    runners[f"jax masked spc{spc}"] = JaxRunner(fn, sparse_state, sparse, images, spc)
    if spc == spcs[0]:   # the same compiled program with all-kept masks
      runners[f"jax ones spc{spc}"] = JaxRunner(fn, state, ones, images, spc)
    runners[f"jax unmasked spc{spc}"] = JaxRunner(
        compile_step(family, state, none, images, spc), state, none, images, spc)
  src = runners[f"jax masked spc{spcs[0]}"]
  info["xla_flops"] = src.flops
  host_params = jax.device_get(sparse_params)
  host_masks = jax.device_get(sparse)

  def twin(**kwargs):
    models = None
    if name != "dcgan":
      gen, disc = torch_zoo.MODELS[name](torch, width, CHANNELS, IMAGE, z_dim)
      models = (gen, disc, torch_zoo.masked_pairs(torch, gen, disc, 1 - info["sparsity"]))
    return TorchRunner(torch, width, host_params, host_masks, images, masked=True,
                       models=models, loss=loss, z_dim=z_dim, **kwargs)

  runners["torch eager masked"] = twin(compile_models=False)
  runners["torch eager masked 1 thread"] = twin(compile_models=False, threads=1)
  if compile_torch:
    t0 = time.perf_counter()
    try:
      runners["torch.compile masked"] = twin(compile_models=True)
      info["torch_compile_s"] = time.perf_counter() - t0
    except Exception as e:  # a missing compiler toolchain etc.: report, keep benchmarking
      info["torch_compile_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  return runners, info


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="~1 minute: width 32 only, steps_per_call 1, fewer repetitions, "
                           "no torch.compile")
  parser.add_argument("--widths", type=int, nargs="+", default=None)
  parser.add_argument("--reps", type=int, default=None, help="timed repetitions per variant")
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--family", default="dcgan", choices=("dcgan", *torch_zoo.MODELS))
  args = parser.parse_args(argv)
  widths = args.widths or ([32] if args.quick else [32, 64])
  reps = args.reps or (3 if args.quick else 5)
  spcs = (1,) if args.quick else (1, 4)
  compile_torch = not (args.quick or args.no_compile)

  import torch  # the `bench` extra: pip install -e '.[bench]'
  torch.set_num_threads(os.cpu_count())
  torch.set_flush_denormal(True)   # XLA CPU flushes denormals too
  load_start = os.getloadavg()
  t_start = time.perf_counter()
  print(f"# lth_jax vs PyTorch: {args.family} G+D step, batch {BATCH}, {IMAGE}x{IMAGE}x{CHANNELS}, "
        f"sparsity {SPARSITY}")
  print(f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device), "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
        f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
  print(f"loadavg at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
  matmul = MatmulRunner()
  results = {}
  for width in widths:
    runners, info = build(width, torch, spcs=spcs, compile_torch=compile_torch, name=args.family)
    block = (4 if args.quick else 8) if width <= 32 else 4
    names = list(runners)
    wall: dict[str, list[float]] = {name: [] for name in names + ["matmul"]}
    cpu: dict[str, list[float]] = {name: [] for name in names + ["matmul"]}
    for rep in range(reps):   # interleaved; the order alternates to cancel drift
      for name in (names if rep % 2 == 0 else names[::-1]):
        w, c = runners[name].run(block)
        wall[name].append(w)
        cpu[name].append(c)
      w, c = matmul.run(4)
      wall["matmul"].append(w)
      cpu["matmul"].append(c)
    med = {name: statistics.median(ts) for name, ts in wall.items()}
    med_cpu = {name: statistics.median(ts) for name, ts in cpu.items()}
    spread = {name: (max(ts) - min(ts)) / statistics.median(ts) for name, ts in wall.items()}
    results[width] = (med, med_cpu, info)
    flops = info["xla_flops"]
    print(f"\n## width {width}: sparsity {info['sparsity']:.3f}; step FLOPs: XLA "
          f"{flops / 1e9:.2f} G, analytic (convs only) {info['analytic_flops'] / 1e9:.2f} G; "
          f"compile s: " + ", ".join(f"{k.removeprefix('compile_s ')} {v:.1f}"
                                    for k, v in info.items() if "compile" in k
                                    and isinstance(v, float)))
    if "torch_compile_error" in info:
      print(f"torch.compile failed: {info['torch_compile_error']}")
    print(f"{reps} interleaved repetitions of {block} steps; medians. Wall spread = (max - min) "
          "/ median. CPU = process CPU time per step (both threads).")
    print("| variant | ms/step | steps/s | GFLOP/s | % of matmul | spread | CPU ms/step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    mm = matmul.flops / med["matmul"]
    for name in names:
      t = med[name]
      print(f"| {name} | {1e3 * t:.1f} | {1 / t:.2f} | {flops / t / 1e9:.0f} | "
            f"{100 * flops / t / mm:.0f}% | {100 * spread[name]:.0f}% | "
            f"{1e3 * med_cpu[name]:.0f} |")
    t = med["matmul"]
    print(f"| matmul 2048^2 f32 (jnp) | {1e3 * t:.1f} | - | {mm / 1e9:.0f} | 100% | "
          f"{100 * spread['matmul']:.0f}% | {1e3 * med_cpu['matmul']:.0f} |")
  load_end = os.getloadavg()
  print(f"\nloadavg at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
        f"wall {time.perf_counter() - t_start:.0f} s")
  print("\n## ratios (of medians; 'vs torch' > 1 means lth_jax is faster)")
  for width, (med, med_cpu, _) in results.items():
    for spc in spcs:
      jm, jc = med[f"jax masked spc{spc}"], med_cpu[f"jax masked spc{spc}"]
      parts = [f"vs {label} {med[name] / jm:.2f}x wall, {med_cpu[name] / jc:.2f}x CPU"
               for name, label in (("torch eager masked", "torch eager"),
                                   ("torch eager masked 1 thread", "torch eager 1 thread"),
                                   ("torch.compile masked", "torch.compile")) if name in med]
      print(f"width {width} spc {spc}: lth_jax " + "; ".join(parts))
      line = f"width {width} spc {spc}: masked/unmasked {jm / med[f'jax unmasked spc{spc}']:.3f}"
      line += f" wall, {jc / med_cpu[f'jax unmasked spc{spc}']:.3f} CPU"
      if f"jax ones spc{spc}" in med:
        line += (f"; masked/all-ones {jm / med[f'jax ones spc{spc}']:.3f} wall, "
                 f"{jc / med_cpu[f'jax ones spc{spc}']:.3f} CPU")
      print(line)
  print("targets: lth_jax >= 1.5x torch eager at every width; masked/dense <= 1.03")


if __name__ == "__main__":
  main()

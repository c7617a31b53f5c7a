"""Many tickets at once: sharded and stacked tickets equal each ticket trained alone.

XLA_FLAGS must be set before JAX starts, so the multi-device cases run this file as a worker in
subprocesses (``python tests/test_parallel.py <scenario> ...``) with 4 forced host devices;
the multi-process case starts two workers joined by ``jax.distributed`` on 127.0.0.1, and its
lottery search is compared with a one-process search in a worker of the same flags. Workers
save each ticket's final state as one flat vector, next to the same tickets trained alone with
``steps.jit_multi_step`` in the same process (XLA CPU splits work by the process's device count,
so a ticket alone on a 4-device process differs in the last bits from one on a 1-device
process). Sequential execution must match bit for bit; vmapped convolutions and a batch split
over the ``data`` axis reorder float sums and match within tolerance. The two processes compile
with the suite's fast emitters (LEGACY_EMITTERS), with which a ticket in the runner is only close
to the ticket alone, but a resumed run equals the uninterrupted one, and their search the
one-process search, bit for bit.
"""
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import checkpointing, configs, experiment_main, lottery, masks, meshes, parallel
from lth_jax import preemption, pruning, steps
from tests.conftest import LEGACY_EMITTERS, built_once, fmnist_available, needs_fmnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT = dict(lr=1e-3, b1=0.5, b2=0.999)
STEPS = 3
PREEMPTED_UNTIL = 1000   # far past the call the processes agree to stop after (a few calls)


@functools.cache
def family(name="dcgan"):
  return steps.make_family(name, channels=1, image_size=32, width=8, z_dim=16, optimizer=OPT,
                           batch_size=8)


def images():
  return jnp.asarray(np.random.RandomState(0).randint(0, 256, (64, 32, 32, 1)), jnp.uint8)


@functools.cache
def tickets(name, t):
  """t tickets of ``family(name)``: seed i, sparsity 1 - 0.8**i (0 dense), run key 100 + i."""
  fam = family(name)
  states, tree, keys = [], [], []
  for i in range(t):
    state = fam.init(jax.random.key(i))
    m = steps.dense_masks(fam, state.params, {p: True for p in fam.parts})
    if i:
      m = pruning.magnitude(state.params, m, 1 - 0.8 ** i)
    states.append(state._replace(params=masks.apply(state.params, m)))
    tree.append(m)
    keys.append(jax.random.key(100 + i))
  return states, tree, keys


def flat(state) -> np.ndarray:
  """Every leaf of a state (params, BatchNorm statistics, optimizer state, step), as one vector."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(state)])


def run_alone(fam, t, until=STEPS):
  """Reference: each ticket alone on one device, one jitted step at a time."""
  step_fn = steps.jit_multi_step(fam, 1)
  states, tree, keys = tickets(fam.name, t)
  out = []
  for s, m, k in zip(states, tree, keys):
    s = jax.tree.map(jnp.copy, s)
    for _ in range(until):
      s, _ = step_fn(s, m, images(), k)
    out.append(flat(s))
  return out


# ------------------------------------------------------------------------------ workers
def _train(name, t, *, execution, data_parallel=1, **kwargs):
  fam = family(name)
  runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(data_parallel=data_parallel),
                                 execution=execution)
  states, tree, keys = tickets(fam.name, t)
  return runner, runner.train(states, tree, images(), keys, until_step=STEPS, **kwargs)


def _batch_shapes(runner, t):
  """Shapes of every f32 [*, 32, 32, 1] array (image batches) in the compiled program."""
  fam = runner.family
  states, tree, keys = tickets(fam.name, t)
  padded = meshes.padded_count(t, runner.num_shards)
  pad = lambda xs: list(xs) + [xs[-1]] * (padded - t)
  args = (runner._place(runner._stack(pad(states)), parallel.P("ticket")),
          runner._place(runner._stack(pad(tree)), parallel.P("ticket")),
          runner._place(images(), parallel.P()),
          runner._place(runner._stack([jax.random.key_data(k) for k in pad(keys)]),
                        parallel.P("ticket")))
  fn = runner._compiled(1, padded // runner.num_shards, jax.random.key_impl(keys[0]),
                        runner.execution)
  text = fn.lower(*args).compile().as_text()
  return sorted({int(b) for b in re.findall(r"f32\[(\d+),32,32,1\]", text)})


# Device workers: name -> (forced host devices, environment, family, [(case, tickets, execution,
# data_parallel)]). The ticket axis is family-agnostic, so it uses the AE (the cheapest to
# compile); the data axis uses the DCGAN, whose generator's codes are split too. The data axis's
# all-reduce deadlocked with as many XLA client threads as devices (2 cores, 4 devices;
# meshes.cpu_collective_deadlock_risk), so its worker gets twice as many. It is a worker of its
# own: with 8 XLA threads a ticket is no longer bit-identical to itself alone (last bits), so it
# is compared within a tolerance and keeps the suite's fast-compiling emitters (measured: 23 vs 36
# CPU-s for the worker).
SCENARIOS = {"tickets4": (4, {}, "ae", [("seq5", 5, "sequential", 1), ("vmap5", 5, "vmap", 1)]),
             "data4": (4, {"PJRT_NPROC": "8"}, "dcgan", [("data2", 2, "sequential", 2)])}
BIT_IDENTICAL = {"tickets4"}   # scenarios that compare a ticket with itself alone bit for bit


def worker_devices(scenario, out_path):
  """One of SCENARIOS on this process's forced host devices; writes flat states to ``out_path``.
  """
  _, _, fam_name, cases = SCENARIOS[scenario]
  results, info = {}, {"devices": jax.device_count()}
  for name, t, execution, dp in cases:
    runner, out = _train(fam_name, t, execution=execution, data_parallel=dp)
    info[name] = {"returned": len(out), "owners": runner.owners(t)}
    for i, s in enumerate(out):
      results[f"{name}/{i}"] = flat(s)
    if dp > 1:
      info[name]["batch_shapes"] = _batch_shapes(runner, t)
      info[name]["risk"] = meshes.cpu_collective_deadlock_risk(runner.mesh)
    if name == "seq5":   # the same program again, with ticket 1 blown up
      states, tree, keys = tickets(fam_name, t)
      bad = states[1]._replace(params=jax.tree.map(lambda x: x * np.nan, states[1].params))
      try:
        runner.train([states[0], bad, *states[2:]], tree, images(), keys, until_step=1)
      except steps.DivergenceError as e:
        info[name]["divergence"] = str(e)
  for i, alone in enumerate(run_alone(family(fam_name), max(t for _, t, _, _ in cases))):
    results[f"alone/{i}"] = alone
  np.savez(out_path, **results)
  with open(out_path + ".json", "w") as f:
    json.dump(info, f)


def lottery_config():
  """A tiny search: AE smoke preset, 2 seeds, the ticket branch, one level."""
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  config.lottery.levels = 1
  config.lottery.branches = ("ticket",)
  config.tickets.seeds = (0, 1)
  return config


def worker_processes(workdir, with_lottery):
  """One of two processes (``LTH_JAX_*`` set by the test) with one device each.

  3 AE tickets over a mesh spanning both processes, checkpointed with Orbax and resumed;
  then, with ``with_lottery``, the tiny lottery search in ``workdir/two``; last, the tickets
  trained again until a SIGTERM to process 1 stops both.
  """
  experiment_main.maybe_initialize_distributed()
  fam = family("ae")
  runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(), execution="sequential")
  states, tree, keys = tickets(fam.name, 3)
  ckpt = os.path.join(workdir, "ckpt")
  with checkpointing.Manager(ckpt) as manager:
    out = runner.train(states, tree, images(), keys, until_step=STEPS, boundary_every=2,
                       on_boundary=lambda step, s: manager.save(step, {"tickets": s}))
  with checkpointing.Manager(ckpt) as manager:
    like = {"tickets": jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), states)}
    restored = manager.restore(2, like=like)[0]["tickets"]
    steps_seen = manager.all_steps()
  resumed = runner.train(restored, tree, images(), keys, until_step=STEPS)
  process = jax.process_index()
  results = {f"trained/{i}": flat(s) for i, s in enumerate(out)}
  results.update({f"resumed/{i}": flat(s) for i, s in enumerate(resumed)})
  results.update({f"alone/{i}": alone for i, alone in enumerate(run_alone(fam, 3))})
  np.savez(os.path.join(workdir, f"process{process}.npz"), **results)
  with open(os.path.join(workdir, f"process{process}.json"), "w") as f:
    json.dump({"owners": runner.owners(3), "local_devices": jax.local_device_count(),
               "global_devices": jax.device_count(), "steps": steps_seen,
               "restored_step": int(restored[0].step)}, f)
  if with_lottery:
    lottery.run(lottery_config(), os.path.join(workdir, "two"))
  # Preemption: a SIGTERM to process 1 (caught by JAX's preemption service: a multi-process run
  # installs no Python handler) stops both processes after one agreed call, each saving there.
  saved = []

  def on_chunk(step, metrics):
    if step == 2 and process == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  try:
    runner.train(states, tree, images(), keys, until_step=PREEMPTED_UNTIL,
                 on_boundary=lambda step, s: saved.append(step), on_chunk=on_chunk)
    stop = {"step": None}
  except preemption.Preempted as e:
    stop = {"step": e.step, "reason": e.reason}
  with open(os.path.join(workdir, f"preempted{process}.json"), "w") as f:
    json.dump({**stop, "saved": saved}, f)


# ------------------------------------------------------------------------- test helpers
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# A collective that hangs aborts its worker after 5 min, with XLA's message in the output.
_COLLECTIVE_TIMEOUTS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=60 "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=300 "
                        "--xla_cpu_collective_timeout_seconds=300")


def _worker(*args, devices, bit_identical=False, **env):
  """A worker process with ``devices`` forced host devices and the suite's ``XLA_FLAGS``
  (conftest.py; measured ~30% less CPU than XLA's defaults) but, if ``bit_identical``, XLA's
  default fusion emitters, with which a ticket in the runner is bit-identical to the ticket alone
  (LEGACY_EMITTERS)."""
  # XLA's thread count changes the last bits (SCENARIOS): only a scenario sets PJRT_NPROC.
  inherited = {k: v for k, v in os.environ.items() if k not in ("PJRT_NPROC", "NPROC")}
  flags = os.environ.get("XLA_FLAGS", "")
  if bit_identical:
    flags = flags.replace(LEGACY_EMITTERS, "")
  env = {**inherited, "JAX_THREEFRY_PARTITIONABLE": "0", "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices} "
                      f"{_COLLECTIVE_TIMEOUTS}".strip(),
         "PYTHONPATH": ROOT, **env}
  return subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)], env=env,
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600) -> str:
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-4000:]
  return out


def _start_workers(tmp) -> dict[str, subprocess.Popen]:
  """Every worker process, writing into ``tmp``."""
  port = _free_port()
  procs = {name: _worker("devices", name, tmp / f"{name}.npz", devices=n,
                        bit_identical=name in BIT_IDENTICAL, **env)
           for name, (n, env, _, _) in SCENARIOS.items()}
  with_lottery = fmnist_available()
  # The two processes' search is compared with a one-process search in a worker of the same
  # flags (the classifier of the feature space may be trained by either, concurrently, before
  # it is cached).
  if with_lottery:
    procs["one"] = _worker("search", tmp / "one", devices=1)
  procs.update({f"p{pid}": _worker("processes", tmp, int(with_lottery), devices=1,
                                   LTH_JAX_COORDINATOR=f"127.0.0.1:{port}",
                                   LTH_JAX_NUM_PROCESSES="2", LTH_JAX_PROCESS_ID=str(pid))
                for pid in (0, 1)})
  return procs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The workers' results, computed once per test run (conftest.built_once)."""

  def build(tmp):
    procs = _start_workers(tmp)
    try:
      outputs = {name: _finish(proc) for name, proc in procs.items()}
    finally:
      for proc in procs.values():
        if proc.poll() is None:
          proc.kill()
          proc.communicate()
    (tmp / "outputs.json").write_text(json.dumps(outputs))

  tmp = built_once(tmp_path_factory, "parallel", build)
  outputs = json.loads((tmp / "outputs.json").read_text())
  results = {"dir": tmp, **{f"out_{name}": out for name, out in outputs.items()}}
  for name in SCENARIOS:
    with np.load(tmp / f"{name}.npz") as f:
      results[name] = dict(f)
    with open(tmp / f"{name}.npz.json") as f:
      results[name]["info"] = json.load(f)
  return results


# ------------------------------------------------------------------------ in-process tests
@functools.cache
def ae_runner():
  """One device, sequential (one jitted program per ticket), 2 steps per call."""
  return parallel.TicketRunner(family("ae"), mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                               execution="sequential", steps_per_call=2)


def test_boundaries_and_padding_bookkeeping():
  states, tree, keys = tickets("ae", 2)
  seen = []
  out = ae_runner().train(states, tree, images(), keys, until_step=6, boundary_every=4,
                          on_boundary=lambda step, s: seen.append((step, len(s), int(s[0].step))))
  assert seen == [(4, 2, 4), (6, 2, 6)]    # calls of 2 steps; every 4th step and the end
  assert [int(s.step) for s in out] == [6, 6]
  # Inputs are not donated away: a ticket's starting state is still usable.
  chex.assert_trees_all_equal(states[0].params, tickets("ae", 1)[0][0].params)
  assert meshes.padded_count(5, 4) == 8 and meshes.padded_count(4, 4) == 4
  assert ae_runner().owners(3) == [0, 0, 0]
  tree_ = {"a": jnp.arange(3), "b": None}
  chex.assert_trees_all_equal(parallel.unstack(parallel.stack([tree_, tree_]))[1], tree_)


def test_a_requested_stop_saves_the_step_it_reached_and_resumes_bit_identical():
  """A stop asked for (SIGTERM in a binary) ends training after the call in flight, which is
  checkpointed first (here step 6, between the cadence's 4 and the end); training on from that
  state makes the calls of the uninterrupted run, so it ends with the same bits. A stop asked
  for before the first call trains nothing; without ``on_boundary`` nothing is saved."""
  states, tree, keys = tickets("ae", 2)
  runner = ae_runner()
  whole = runner.train(states, tree, images(), keys, until_step=7, boundary_every=4)
  saved = {}

  def on_boundary(step, s):
    saved[step] = jax.device_get(s)
    if step == 4:
      preemption.request("test")

  try:
    with pytest.raises(preemption.Preempted, match=r"stopped by test \(saved at step 6\)") as e:
      runner.train(states, tree, images(), keys, until_step=7, boundary_every=4,
                   on_boundary=on_boundary)
    assert e.value.step == 6 and sorted(saved) == [4, 6]
    seen = []
    with pytest.raises(preemption.Preempted, match="stopped by test; run the same") as e:
      runner.train(saved[6], tree, images(), keys, until_step=7, on_chunk=lambda *a: seen.append(a))
    assert e.value.step is None and not seen
  finally:
    preemption.clear()
  resumed = runner.train(saved[6], tree, images(), keys, until_step=7, boundary_every=4)
  for a, b in zip(resumed, whole):
    np.testing.assert_array_equal(flat(a), flat(b))


def test_divergence_names_the_ticket():
  states, tree, keys = tickets("ae", 2)
  bad = states[1]._replace(params=jax.tree.map(lambda x: x * jnp.nan, states[1].params))
  with pytest.raises(steps.DivergenceError, match=r"ticket\(s\) \[1\] diverged"):
    ae_runner().train([states[0], bad], tree, images(), keys, until_step=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(data_parallel=2), "must divide the device count"),
    (dict(data_parallel=0), "must divide the device count"),
])
def test_bad_mesh(kwargs, message):
  with pytest.raises(ValueError, match=message):
    meshes.make_mesh(devices=jax.devices()[:1], **kwargs)


def test_bad_runner_settings():
  mesh = meshes.make_mesh(devices=jax.devices()[:1])
  with pytest.raises(ValueError, match="unknown tickets.execution 'warp'"):
    parallel.TicketRunner(family("ae"), mesh=mesh, execution="warp")
  odd = steps.make_family("ae", channels=1, image_size=32, width=8, z_dim=16, optimizer=OPT,
                          batch_size=7)
  two = jax.sharding.Mesh(np.array(jax.devices()[:1] * 2).reshape(1, 2), meshes.AXES)
  with pytest.raises(ValueError, match="train.batch_size=7 must be divisible by "
                                       "tickets.data_parallel=2"):
    parallel.TicketRunner(odd, mesh=two)
  with pytest.raises(ValueError, match="needs a mesh with axes"):
    parallel.TicketRunner(family("ae"), mesh=jax.sharding.Mesh(np.array(jax.devices()[:1]),
                                                               ("x",)))


def test_cpu_collective_deadlock_risk():
  one = jax.devices()[:1]      # a mesh may repeat a device: 4 'CPU devices' in this process
  risk = functools.partial(meshes.cpu_collective_deadlock_risk,
                           jax.sharding.Mesh(np.array(one * 4).reshape(2, 2), meshes.AXES))
  assert "Start Python with PJRT_NPROC=8" in risk(environ={}, cores=2)
  assert "with 7 XLA client threads" in risk(environ={"PJRT_NPROC": "7", "NPROC": "64"}, cores=2)
  assert risk(environ={"PJRT_NPROC": "8"}, cores=2) is None
  assert risk(environ={"NPROC": "8"}, cores=2) is None
  assert "with 4 XLA client threads" in risk(environ={"PJRT_NPROC": "eight"}, cores=2)
  assert risk(environ={}, cores=8) is None
  tickets_only = jax.sharding.Mesh(np.array(one * 4).reshape(4, 1), meshes.AXES)
  assert meshes.cpu_collective_deadlock_risk(tickets_only, environ={}, cores=1) is None


@pytest.mark.parametrize("execution,platform,expected", [
    ("auto", "cpu", "sequential"), ("auto", "gpu", "sequential"), ("auto", "tpu", "tune"),
    ("vmap", "cpu", "vmap"), ("sequential", "tpu", "sequential")])
def test_resolve_execution(execution, platform, expected):
  assert parallel.resolve_execution(execution, platform) == expected


def test_batched_rolled_tickets_match_each_alone_and_report_every_call():
  """The accelerator variants on one device: tickets vmapped with convolutions as batched matrix
  products, each call's steps in a rolled loop. Equal to each ticket alone within float
  tolerance (other summation orders); every call's metrics arrive, in order, although fetched
  one call late. (The AE: batched convolutions are XLA CPU's slow path, ~20x.)"""
  fam = family("ae")
  runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                                 execution="batched", steps_per_call=1, loop="rolled")
  states, tree, keys = tickets(fam.name, 2)
  chunks = []
  out = runner.train(states, tree, images(), keys, until_step=2,
                     on_chunk=lambda step, metrics: chunks.append((step, len(metrics))))
  assert chunks == [(1, 2), (2, 2)]
  for i, alone in enumerate(run_alone(fam, 2, until=2)):
    np.testing.assert_allclose(flat(out[i]), alone, rtol=1e-4, atol=1e-5)


def test_sequential_tickets_in_the_patches_formulation():
  """``formulation='patches'`` reaches the one-device sequential path: each ticket equals
  ``jit_multi_step(..., formulation='patches')`` alone exactly, and XLA's convolutions within
  float tolerance (other summation orders)."""
  fam = family("ae")
  runner = parallel.TicketRunner(fam, mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                                 execution="sequential", formulation="patches")
  states, tree, keys = tickets(fam.name, 2)
  out = runner.train(states, tree, images(), keys, until_step=2)
  step_fn = steps.jit_multi_step(fam, 1, formulation="patches")
  for i, (state, alone) in enumerate(zip(states, run_alone(fam, 2, until=2))):
    state = jax.tree.map(jnp.copy, state)
    for _ in range(2):
      state, _ = step_fn(state, tree[i], images(), keys[i])
    np.testing.assert_array_equal(flat(out[i]), flat(state))
    np.testing.assert_allclose(flat(out[i]), alone, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="unknown convolution formulation 'fft'"):
    parallel.TicketRunner(fam, mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                          formulation="fft")


def test_tune_measures_every_execution_and_keeps_the_fastest(monkeypatch):
  """'tune' (the TPU default) times the candidates once per group size; the group's results
  are those of the chosen execution (the timing calls are thrown away). The candidates here are
  the two that compile fast on XLA CPU ('batched' has its own test above)."""
  monkeypatch.setattr(parallel, "CANDIDATES", ("sequential", "vmap"))
  runner = parallel.TicketRunner(family("ae"),
                                 mesh=meshes.make_mesh(devices=jax.devices()[:1]),
                                 execution="tune")
  states, tree, keys = tickets("ae", 2)
  out = runner.train(states, tree, images(), keys, until_step=2)
  tuned = runner.tuned[2]
  assert set(tuned) == {"choice", *parallel.CANDIDATES}
  assert tuned["choice"] == min(parallel.CANDIDATES, key=tuned.get)
  assert [int(s.step) for s in out] == [2, 2]
  for i, alone in enumerate(run_alone(family("ae"), 2, until=2)):
    np.testing.assert_allclose(flat(out[i]), alone, rtol=1e-4, atol=1e-5)
  runner.train(states, tree, images(), keys, until_step=1)
  assert list(runner.tuned) == [2]          # measured once per size


# ------------------------------------------------------------- tests on the workers' results
def test_sequential_tickets_are_bit_identical_to_each_alone(runs):
  # 5 tickets padded to 8: blocks of 2 on 4 devices, the last block all padding.
  run = runs["tickets4"]
  info = run["info"]["seq5"]
  assert info["returned"] == 5 and info["owners"] == [0] * 5
  assert info["divergence"] == "ticket(s) [1] diverged: NaN/Inf loss or params after step 1"
  for i in range(5):
    np.testing.assert_array_equal(run[f"seq5/{i}"], run[f"alone/{i}"], f"ticket {i}")


def test_vmapped_tickets_match_each_alone(runs):
  for i in range(5):
    np.testing.assert_allclose(runs["tickets4"][f"vmap5/{i}"], runs["tickets4"][f"alone/{i}"],
                               rtol=1e-4, atol=1e-5)


def test_data_axis_splits_each_batch_and_matches(runs):
  # 4 devices = 2 tickets x 2 data shards: the real batch of 8 is split into 4 + 4.
  run = runs["data4"]
  assert 4 in run["info"]["data2"]["batch_shapes"]
  for i in range(2):
    np.testing.assert_allclose(run[f"data2/{i}"], run[f"alone/{i}"], rtol=1e-4, atol=1e-5)
  assert run["info"]["data2"]["risk"] is None     # the worker runs with PJRT_NPROC=8


def test_two_processes_split_tickets_checkpoint_resume_and_stop_together(runs):
  infos = []
  for pid in (0, 1):
    with open(runs["dir"] / f"process{pid}.json") as f:
      infos.append(json.load(f))
    with np.load(runs["dir"] / f"process{pid}.npz") as f:
      for i in range(3):   # every process gets every ticket back, as trained alone
        np.testing.assert_allclose(f[f"trained/{i}"], f[f"alone/{i}"], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(f[f"resumed/{i}"], f[f"trained/{i}"])
  assert infos[0]["owners"] == infos[1]["owners"] == [0, 0, 1]
  assert infos[0]["global_devices"] == 2 and infos[0]["local_devices"] == 1
  assert infos[0]["steps"] == [2, 3] and infos[0]["restored_step"] == 2
  stops = []
  for pid in (0, 1):
    with open(runs["dir"] / f"preempted{pid}.json") as f:
      stops.append(json.load(f))
  assert stops[0] == stops[1], stops            # the same call on both processes
  assert stops[0]["reason"] == "SIGTERM" and 2 <= stops[0]["step"] < PREEMPTED_UNTIL
  assert stops[0]["saved"] == [stops[0]["step"]]


@needs_fmnist
def test_two_process_lottery_search_equals_one_process(runs):
  one, two = runs["dir"] / "one", runs["dir"] / "two"
  # Only process 0 writes the reports (and prints the summary).
  assert "Lottery ticket search" in runs["out_p0"]
  assert "Lottery ticket search" not in runs["out_p1"]
  assert (two / "summary.md").exists()
  names = sorted(os.path.relpath(d, one) for d in one.glob("level_*/*_seed*"))
  assert len(names) == 2 + 2
  for name in names:   # same masks and metrics, though trained and evaluated by two processes
    with open(one / name / "metrics.json") as f:
      a = json.load(f)
    with open(two / name / "metrics.json") as f:
      b = json.load(f)
    del a["group_train_seconds"], b["group_train_seconds"]
    assert a == b, name
    chex.assert_trees_all_equal(masks.load(one / name / "masks.npz"),
                                masks.load(two / name / "masks.npz"))


if __name__ == "__main__":
  jax.config.update("jax_threefry_partitionable", False)
  if sys.argv[1] == "devices":
    worker_devices(sys.argv[2], sys.argv[3])
  elif sys.argv[1] == "search":
    lottery.run(lottery_config(), sys.argv[2])
  else:
    worker_processes(sys.argv[2], bool(int(sys.argv[3])))

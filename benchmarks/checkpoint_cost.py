"""What Orbax costs per save and load, by how a state is laid out (the run machinery's choices).

Process CPU milliseconds (all threads: Orbax writes from background threads), median of
``--repeats`` after one warm-up, for the smoke AutoEncoder's training state (75 arrays):

* ``save_tree`` of the same floats as 1 array and as 75 arrays (Orbax's cost per array);
* ``save_tree`` of the state as device arrays vs NumPy arrays (``Context.save_state`` saves from
  the host);
* ``load_tree`` with a restore target without shardings as Orbax gets it vs with the default
  device filled in (``checkpointing._restore_target``);
* a group checkpoint of ``--tickets`` states: one tree per ticket (the layout before 2026-11-29,
  states only) vs ``groups.save``'s stacked trees (states and masks, since 2026-11-29),
  and the two restores (``groups.restore_states``, ``groups.load``);
* with ``--search``: the process CPU seconds of the suite's AE smoke search (2 seeds, 3 branches,
  2 levels: 14 trainings; real Fashion-MNIST) with Orbax and with Orbax replaced by an in-memory
  dict, each in a fresh process after one warm-up search fills a shared compilation cache.

Run (about a minute on 2 cores; two more with ``--search``)::

  .venv/bin/python benchmarks/checkpoint_cost.py --tickets=6 --search
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lth_jax import checkpointing, groups, masks, steps

_TICKETS = flags.DEFINE_integer("tickets", 6, "Tickets in the group checkpoint.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats after one warm-up.")
_SEARCH = flags.DEFINE_bool("search", False, "Also time a smoke search with and without Orbax.")
_SEARCH_CHILD = flags.DEFINE_enum("search_child", None, ["orbax", "memory"],
                                  "Internal: run one timed search in this process.")


def cpu_ms(fn, repeats: int) -> float:
  """Median process CPU milliseconds of ``fn(i)`` over ``repeats`` calls, after ``fn(-1)``."""
  fn(-1)
  times = []
  for i in range(repeats):
    start = time.process_time()
    fn(i)
    times.append((time.process_time() - start) * 1000)
  return statistics.median(times)


def orbax_load(path, like):
  """``load_tree`` as Orbax does it without the default-device fill-in."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path, like)


def in_memory_checkpointing():
  """Replaces ``checkpointing``'s writers and readers by a dict (a fresh search reads back only
  what it wrote in this process)."""
  store = {}

  def save_tree(path, tree, overwrite=False):
    del overwrite
    os.makedirs(path, exist_ok=True)
    store[os.path.abspath(path)] = jax.device_get(tree)
    return str(path)

  def load_tree(path, like=None):
    saved = store[os.path.abspath(path)]
    return saved if like is None else jax.tree.map(lambda x, l: jnp.asarray(x, l.dtype), saved,
                                                   like)

  class Manager:
    def __init__(self, directory, **kwargs):
      del directory, kwargs
      self.steps = {}

    def __enter__(self):
      return self

    def __exit__(self, *exc_info):
      pass

    def latest_step(self):
      return max(self.steps, default=None)

    def all_steps(self):
      return sorted(self.steps)

    def save(self, step, tree, **kwargs):
      del kwargs
      self.steps[step] = jax.device_get(tree)

  checkpointing.save_tree, checkpointing.load_tree = save_tree, load_tree
  checkpointing.Manager = Manager


def search_child(mode: str) -> None:
  """One AE smoke search in this process; prints its process CPU seconds."""
  from lth_jax import configs, lottery  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_threefry_partitionable", False)
  if mode == "memory":
    in_memory_checkpointing()
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  config.lottery.branches = ("ticket", "random_reinit", "random_pruning")
  config.tickets.seeds = (0, 1)
  start = time.process_time()
  lottery.run(config, tempfile.mkdtemp())
  print(f"SEARCH_CPU_S {time.process_time() - start:.1f}")


def time_searches() -> None:
  """Warm-up search, then one with Orbax and one in memory, each in a fresh process."""
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "LTH_JAX_CACHE_DIR": tempfile.mkdtemp()}
  for mode, label in [("orbax", None), ("orbax", "with Orbax"), ("memory", "Orbax in memory")]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), f"--search_child={mode}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    seconds = float(out.split("SEARCH_CPU_S ")[1].split()[0])
    if label:
      print(f"{seconds * 1000:8.0f} ms  AE smoke search (14 trainings), {label}", flush=True)


def main(argv):
  del argv
  if _SEARCH_CHILD.value:
    search_child(_SEARCH_CHILD.value)
    return
  n, repeats = _TICKETS.value, _REPEATS.value
  fam = steps.make_family("ae", channels=1, image_size=32, width=8, z_dim=16,
                          optimizer=dict(lr=1e-3, b1=0.5, b2=0.999), batch_size=16)
  state = fam.init(jax.random.key(0))
  shapes = jax.eval_shape(fam.init, jax.random.key(0))
  arrays = len(jax.tree.leaves(state))
  size = sum(x.size for x in jax.tree.leaves(state))
  root = tempfile.mkdtemp()
  where = lambda name, i: f"{root}/{name}_{i}"
  rows = []

  def row(label, ms):
    rows.append((label, ms))
    print(f"{ms:8.0f} ms  {label}", flush=True)

  one = {"a": jnp.ones((size,), jnp.float32)}
  row(f"save_tree: {size:,} floats as 1 array",
      cpu_ms(lambda i: checkpointing.save_tree(where("one", i), one), repeats))
  row(f"save_tree: the state as {arrays} device arrays",
      cpu_ms(lambda i: checkpointing.save_tree(where("device", i), state), repeats))
  host = jax.device_get(state)
  row(f"save_tree: the state as {arrays} NumPy arrays",
      cpu_ms(lambda i: checkpointing.save_tree(where("host", i), host), repeats))
  for saved in ("device", "host"):
    row(f"load_tree of {saved}-saved arrays: target without shardings, as Orbax gets it",
        cpu_ms(lambda i, s=saved: orbax_load(where(s, i), shapes), repeats))
    row(f"load_tree of {saved}-saved arrays: target with the default device filled in",
        cpu_ms(lambda i, s=saved: checkpointing.load_tree(where(s, i), like=shapes), repeats))
  print("  (types back from Orbax without shardings, host-saved:",
        type(jax.tree.leaves(orbax_load(where("host", 0), shapes))[0]).__name__, ")")

  group = [state] * n
  tickets = [groups.Ticket(f"t{i}", state, masks.init(state.params), jax.random.key(i), {"seed": i})
             for i in range(n)]

  def per_ticket_save(i):
    with checkpointing.Manager(where("per_ticket", i)) as manager:
      manager.save(1, {"tickets": group})

  def stacked_save(i):
    with checkpointing.Manager(where("stacked", i)) as manager:
      groups.save(manager, 1, tickets, group)

  row(f"group of {n}: one tree per ticket, save ({n * arrays} arrays)",
      cpu_ms(per_ticket_save, repeats))
  masked = len(jax.tree.leaves(tickets[0].masks))
  row(f"group of {n}: groups.save, stacked states and masks ({arrays + masked} arrays)",
      cpu_ms(stacked_save, repeats))

  def restore(name, fn):
    def timed(i):
      with checkpointing.Manager(where(name, i)) as manager:
        fn(manager)
    return timed

  row(f"group of {n}: groups.restore_states of the per-ticket layout (after a failed try)",
      cpu_ms(restore("per_ticket", lambda m: groups.restore_states(m, [shapes] * n)), repeats))
  row(f"group of {n}: groups.load of groups.save's layout (states, masks, tickets)",
      cpu_ms(restore("stacked", lambda m: groups.load(m, shapes)), repeats))
  print(f"\nper-array save cost ~{(rows[1][1] - rows[0][1]) / (arrays - 1):.1f} ms; "
        f"group save ratio (per ticket / stacked) {rows[7][1] / rows[8][1]:.1f}x; "
        f"NumPy vs device save {rows[2][1] / rows[1][1]:.2f}x; default-device load "
        f"{rows[4][1] / rows[3][1]:.2f}x (device-saved), {rows[6][1] / rows[5][1]:.2f}x "
        "(host-saved) of Orbax's")
  if _SEARCH.value:
    time_searches()


if __name__ == "__main__":
  app.run(main)

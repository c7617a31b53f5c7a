"""The one run machinery: a group of tickets through a stage.

Every driver (``training``, ``lottery``, ``early_bird``, ``transfer``) does the same things to a
group of same-architecture tickets, and does them here:

* **set-up** (:class:`Context`): the config's family, data, ``('ticket', 'data')`` mesh, one
  :class:`parallel.TicketRunner` per architecture, the evaluator (built on process 0 first, which
  trains and caches the feature classifier, then on the others after a barrier) and the metric
  writer; :func:`prepare_workdir` refuses a workdir of another config;
* **train** (:meth:`Context.train`): the group advances together to a step, with in-stage Orbax
  checkpoints of the whole group (:mod:`lth_jax.groups`) every ``train.checkpoint_every`` steps,
  resumed after any interruption without building a ticket again (:meth:`Context.resume`;
  fused calls are aligned to checkpoints, so a resumed run makes the same calls:
  bit-identical), loss logs every ``train.log_every`` steps and a progress bar or lines
  (:mod:`lth_jax.progress`);
* **evaluate and write** (:meth:`Context.finish`): each ticket is evaluated by the process that
  trained it, which writes ``<name>/metrics.json`` (and ``masks.npz``); weights worth keeping are
  saved collectively; a barrier, then every process reads every row;
* **a stage** (:meth:`Context.run_stage`): the tickets whose ``metrics.json`` is missing are built,
  trained, evaluated and written; the rows of all of them are returned (and written to a done
  file): a finished stage costs nothing, and a ticket added to it later trains alone;
* **seed keys** (:func:`seed_keys`) and **atomic JSON** (:func:`write_json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from lth_jax import checkpointing
from lth_jax import data as data_lib
from lth_jax import evaluation
from lth_jax import families
from lth_jax import feature_spaces
from lth_jax import groups
from lth_jax import masks as masks_lib
from lth_jax import meshes
from lth_jax import parallel
from lth_jax import progress
from lth_jax import report
from lth_jax import steps as steps_lib

PyTree = Any
# Independent random streams of one seed (split once); 'scratch' is folded from 'init'.
SEED_STREAMS = ("init", "run", "reinit", "random_pruning", "score")


def run_output(stage_dir: str, name: str) -> str:
  """The file that marks run ``name`` of the stage in ``stage_dir`` finished: its row."""
  return os.path.join(stage_dir, name, "metrics.json")


def seed_keys(seed: int) -> dict[str, jax.Array]:
  """The named keys of one seed: ``init`` (θ₀), ``run`` (data and noise of every step),
  ``reinit``, ``random_pruning`` and ``score`` (baselines), ``scratch`` (a second init)."""
  keys = dict(zip(SEED_STREAMS, jax.random.split(jax.random.key(seed), len(SEED_STREAMS))))
  keys["scratch"] = jax.random.fold_in(keys["init"], 1)
  return keys


def param_summary(params: PyTree) -> str:
  """``'6,740,612 parameters (generator 3,804,739, discriminator 2,935,873)'``: the total and
  per top-level part of ``params`` (arrays or ``jax.ShapeDtypeStruct``)."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  parts = ", ".join(f"{part} {count(p):,}" for part, p in params.items())
  return f"{count(params):,} parameters ({parts})"


def write_json(path: str, value: Any) -> None:
  """Writes ``value`` as JSON atomically (a temp file renamed over ``path``)."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2, sort_keys=False)
  os.replace(path + ".tmp", path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------- config and set-up
class WorkdirConflictError(ValueError):
  """The workdir holds a run of a different config."""


# Fields that change how often a run is saved or logged, never what it trains: a resumed run
# may change them (its later calls then follow the new checkpoint cadence).
CADENCE_FIELDS = ("train.checkpoint_every", "train.log_every")


def without_cadence(config: dict) -> dict:
  """A ``config_to_dict`` dict without :data:`CADENCE_FIELDS` (for comparing what trains)."""
  config = json.loads(json.dumps(config))
  for field in CADENCE_FIELDS:
    section, name = field.split(".")
    config.get(section, {}).pop(name, None)
  return config


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _diff_keys(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in set(a) | set(b):
      yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix.rstrip(".")


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, *,
                    extendable: Sequence[str] = ()) -> None:
  """Creates ``workdir`` and saves ``config.json``; refuses a workdir of a different config.

  Args:
    extendable: fields (e.g. ``'lottery.levels'``) that may differ from the saved config: the
      run extends the finished work, and ``config.json`` becomes the new config. The
      :data:`CADENCE_FIELDS` may always differ.

  Raises:
    WorkdirConflictError: naming the fields that differ.
  """
  path = os.path.join(workdir, "config.json")
  current = config_to_dict(config)
  if os.path.exists(path):
    diff = sorted(_diff_keys(read_json(path), current))
    conflicts = [d for d in diff if d not in extendable and d not in CADENCE_FIELDS]
    if conflicts:
      raise WorkdirConflictError(
          f"workdir {workdir!r} holds a run of a different config (differs in: "
          f"{', '.join(conflicts[:8])}); use a new --workdir or delete the old one")
    if not diff:
      return
    logging.info("extending the run in %s: %s changed", workdir, ", ".join(diff))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    write_json(path, current)


FEATURE_SPACE_FILE = "feature_space.json"


def pin_feature_space(workdir: str, extractor: feature_spaces.FeatureExtractor | None) -> None:
  """Records in ``workdir/feature_space.json`` the feature space its metrics are measured in
  (name, weights fingerprint, classifier accuracy), or refuses to go on in another one.

  FID and KID move with the feature network's weights: the same classifier config trained on
  another machine gave FIDs ~5% apart (BUILD_NOTES.md), so a run resumed where the classifier
  cache holds other weights would mix two scales in one table. Extractors without a weights
  fingerprint (none: the AE) are not recorded.

  Raises:
    WorkdirConflictError: the workdir's metrics were measured with other weights.
  """
  if extractor is None or "weights_sha256" not in extractor.info:
    return
  record = {"name": extractor.name, "weights_sha256": extractor.info["weights_sha256"],
            "test_accuracy": extractor.info.get("test_accuracy")}
  path = os.path.join(workdir, FEATURE_SPACE_FILE)
  if os.path.exists(path):
    pinned = read_json(path)
    if (pinned["name"], pinned["weights_sha256"]) != (record["name"], record["weights_sha256"]):
      raise WorkdirConflictError(
          f"workdir {workdir!r} was evaluated in feature space {pinned['name']} with weights "
          f"{pinned['weights_sha256']}, this run's are {record['weights_sha256']} "
          f"({extractor.info.get('weights')}): their metrics would not compare; evaluate with "
          f"the same weights file, or use a new --workdir")
  elif jax.process_index() == 0:
    write_json(path, record)


def family_from_config(config: ml_collections.ConfigDict, *, widths: dict | None = None,
                       bn_l1: float | dict = 0.0) -> steps_lib.Family:
  """The config's model family (:func:`lth_jax.families.from_config`)."""
  return families.from_config(config, widths=widths, bn_l1=bn_l1)


def load_data(config: ml_collections.ConfigDict) -> tuple[data_lib.Split, data_lib.Split]:
  """(train split on device, test split on host) for the config's data set."""
  kwargs = dict(image_size=config.data.image_size, data_dir=config.data.data_dir or None,
                source=config.data.source, download=config.data.download,
                limit=config.data.limit or None)
  train = data_lib.device_put(data_lib.load(config.data.name, "train", **kwargs))
  return train, data_lib.load(config.data.name, "test", **kwargs)


def dense_masks(config: ml_collections.ConfigDict, family: steps_lib.Family,
                params: PyTree) -> PyTree:
  """All-kept masks over the parts and layers the config's ``prune`` section selects."""
  return steps_lib.dense_masks(family, params, dict(config.prune.parts),
                               tuple(config.prune.exclude))


# ---------------------------------------------------------------------------------- stages
class Timing(NamedTuple):
  """Wall-clock and process CPU seconds of a group (building and compilation included; a
  resumed group adds the time saved in its checkpoint, :meth:`Context.spent`), and its size."""
  seconds: float
  cpu_seconds: float
  tickets: int


def _trained(tickets: Sequence[groups.Ticket]) -> str:
  """What a group trains, for its progress label: ``'ticket, random_reinit (4 tickets)'``."""
  kinds = list(dict.fromkeys(str(t.tags.get("branch", t.tags.get("run", t.name)))
                             for t in tickets))
  more = f" ({len(tickets)} tickets)" if len(tickets) > len(kinds) else ""
  return ", ".join(kinds) + more


def _group_id(names: Sequence[str]) -> str:
  """A directory name for one group's checkpoints (a stage may train several groups)."""
  return hashlib.sha1(",".join(names).encode()).hexdigest()[:12]


class Context:
  """What the stages of one run share (host-side bookkeeping only).

  Args:
    config: the run's config (``tickets.data_parallel`` sets the mesh; without a ``tickets``
      section, one local device).
    workdir: where the metric writer writes (``metrics.jsonl``, TensorBoard).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.family = family_from_config(config)
    self.train_split, self.test_split = load_data(config)
    self.is_main = jax.process_index() == 0
    self.multiprocess = jax.process_count() > 1
    if "tickets" in config:
      self.mesh = meshes.make_mesh(data_parallel=config.tickets.data_parallel)
      self.execution = config.tickets.execution
    else:
      self.mesh = meshes.make_mesh(devices=jax.local_devices()[:1])
      self.execution = "sequential"
    self._runners: dict = {}
    self._clocks: dict[str, tuple] = {}   # checkpoint dir -> (Spent before, wall, CPU at start)
    self.writer = report.MetricWriter(workdir, enabled=self.is_main)
    # Process 0 trains (and caches) the feature classifier first; the others then load it.
    if self.is_main:
      self.evaluator = evaluation.Evaluator.from_config(config, self.train_split,
                                                        self.test_split)
    meshes.barrier("runs-evaluator")
    if not self.is_main:
      self.evaluator = evaluation.Evaluator.from_config(config, self.train_split,
                                                        self.test_split)
    extractor = self.evaluator.extractor
    pin_feature_space(workdir, extractor)
    self.metric = evaluation.primary_metric_key(config.family, extractor.name if extractor else "")
    self.state_shape = jax.eval_shape(self.family.init, jax.random.key(0))
    logging.info("model %s: %s", config.family, param_summary(self.state_shape.params))

  def runner(self, family: steps_lib.Family | None = None, key: str = ""
             ) -> parallel.TicketRunner:
    """One runner (and its compiled programs) per architecture ``key``."""
    if key not in self._runners:
      self._runners[key] = parallel.TicketRunner(
          family or self.family, mesh=self.mesh, execution=self.execution,
          steps_per_call=self.config.train.steps_per_call, loop=self.config.train.loop)
    return self._runners[key]

  def dense_masks(self, params: PyTree, family: steps_lib.Family | None = None) -> PyTree:
    return dense_masks(self.config, family or self.family, params)

  # ------------------------------------------------------------------------------ states
  def _like(self, tree: PyTree) -> PyTree:
    """``tree`` as a restore target: itself, or NumPy arrays in a multi-process run (Orbax
    refuses process-local device arrays there)."""
    if not self.multiprocess:
      return tree
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)

  def load_state(self, path: str, like: PyTree | None = None) -> steps_lib.TrainState:
    return checkpointing.load_tree(path, like=self._like(like or self.state_shape))

  def save_state(self, path: str, state: PyTree, *, overwrite: bool = False) -> None:
    """Saves one state, from the host: Orbax writes NumPy arrays in half the time of device
    arrays (``benchmarks/checkpoint_cost.py``), and refuses process-local ones. Collective in a
    multi-process run: every process calls it with the same state; process 0 writes."""
    checkpointing.save_tree(path, jax.device_get(state), overwrite=overwrite)

  # ------------------------------------------------------------------------------- train
  def resume(self, checkpoint_dir: str, make_tickets: Callable[[], list[groups.Ticket]], *,
             family: steps_lib.Family | None = None, label: str = "") -> list[groups.Ticket]:
    """:func:`groups.resume` for a group of ``family`` (default: the config's), logged. Starts
    the group's clock (:meth:`spent`), from the time a resumed group had already taken."""
    start = time.perf_counter(), time.process_time()
    shape = lambda: (self.state_shape if family is None
                     else jax.eval_shape(family.init, jax.random.key(0)))
    tickets, spent = groups.resume(checkpoint_dir, shape, make_tickets)
    if spent is not None:
      logging.info("%sresuming %d tickets at step %d", label, len(tickets),
                   int(tickets[0].state.step))
    self._clocks[checkpoint_dir] = (spent or groups.Spent(), *start)
    return tickets

  def spent(self, checkpoint_dir: str) -> groups.Spent:
    """The time the group of ``checkpoint_dir`` has taken since :meth:`resume` built it, over
    every process that trained it: a stage resumed after a kill or a stop reports the time of
    its steps once, not only its last process's (early-bird's wall-clock ratios read it)."""
    before, wall, cpu = self._clocks.setdefault(
        checkpoint_dir, (groups.Spent(), time.perf_counter(), time.process_time()))
    return groups.Spent(before.seconds + time.perf_counter() - wall,
                        before.cpu_seconds + time.process_time() - cpu)

  def train(self, tickets: Sequence[groups.Ticket], *, until_step: int, checkpoint_dir: str,
            family: steps_lib.Family | None = None, key: str = "", label: str = ""
            ) -> list[steps_lib.TrainState]:
    """Trains the group from its tickets' states to ``until_step``, checkpointing the group
    (:func:`groups.save`) every ``train.checkpoint_every`` steps in ``checkpoint_dir``; a killed
    run continues from :meth:`resume`'s tickets.

    Args:
      family, key: the group's architecture (default: the config's) and its runner's key.
      label: the stage, e.g. ``'level 3: '``; the progress bar or lines (:mod:`lth_jax.progress`)
        are labelled with it and the group's ``branch`` (or ``run``) tags, else ticket names.
    """
    cfg = self.config.train
    with checkpointing.Manager(checkpoint_dir, max_to_keep=2) as manager:
      def save(step, current):
        if step not in manager.all_steps():
          groups.save(manager, step, tickets, current, self.spent(checkpoint_dir))

      first = int(tickets[0].state.step)
      last_log = [first]
      shown = progress.Progress(first, until_step, label=label + _trained(tickets))

      def on_chunk(step, metrics):
        shown.update(step)
        if self.is_main and cfg.log_every and (step - last_log[0] >= cfg.log_every
                                               or step == until_step):
          for ticket, values in zip(tickets, metrics):
            self.writer.write_scalars(step, values, **ticket.tags)
          last_log[0] = step

      with shown:
        return self.runner(family, key).train(
            [t.state for t in tickets], [t.masks for t in tickets], self.train_split.images,
            [t.run_key for t in tickets], until_step=until_step, on_boundary=save,
            boundary_every=cfg.checkpoint_every, on_chunk=on_chunk)

  # ------------------------------------------------------------------------------ finish
  def finish(self, stage_dir: str, tickets: Sequence[groups.Ticket], states: Sequence, *,
             columns: Callable[[groups.Ticket, Any], dict], family: steps_lib.Family | None = None,
             keep: Callable[[groups.Ticket], str | None] = lambda t: None,
             scalar_step: Callable[[groups.Ticket, Any], int] = lambda t, s: int(s.step),
             save_masks: bool = True) -> list[dict]:
    """Saves and evaluates a trained group; returns every ticket's row, on every process.

    Row: ``{**ticket.tags, **columns(ticket, state), **metrics}``, written to
    ``stage_dir/<name>/metrics.json`` by the process that trained the ticket (which evaluates
    it), with its ``masks.npz`` when ``save_masks``. ``keep(ticket)`` names a file under the
    ticket's directory to save its trained state to (collective), or None. Ends with a barrier.
    """
    family = family or self.family
    owners = meshes.owners(self.mesh, len(tickets))
    me = jax.process_index()
    rows = []
    for ticket, state, owner in zip(tickets, states, owners):
      directory = os.path.join(stage_dir, ticket.name)
      os.makedirs(directory, exist_ok=True)
      kept = keep(ticket)
      if kept and not os.path.exists(os.path.join(directory, kept)):
        self.save_state(os.path.join(directory, kept), state)
      if owner != me:
        rows.append(None)
        continue
      metrics = self.evaluator(family, state)
      row = {**ticket.tags, **columns(ticket, state), **metrics}
      if save_masks:
        masks_lib.save(os.path.join(directory, "masks.npz"), ticket.masks, overwrite=True)
      write_json(run_output(stage_dir, ticket.name), row)
      self.writer.write_scalars(scalar_step(ticket, state), metrics, **ticket.tags)
      rows.append(row)
    meshes.barrier(f"runs-finished-{stage_dir}")
    return [row if row is not None else read_json(run_output(stage_dir, ticket.name))
            for ticket, row in zip(tickets, rows)]

  # ------------------------------------------------------------------------------- stage
  def pending(self, stage_dir: str, names: Sequence[str]) -> list[str]:
    """The names of ``names`` whose ``stage_dir/<name>/metrics.json`` does not exist yet."""
    return [n for n in names if not os.path.exists(run_output(stage_dir, n))]

  def run_stage(self, stage_dir: str, names: Sequence[str],
                make_tickets: Callable[[list[str]], list[groups.Ticket]], *, until_step: int,
                columns: Callable[[groups.Ticket, Any, Timing], dict],
                family: steps_lib.Family | None = None, key: str = "",
                done_file: str | None = None, grid: str | None = None, label: str = "",
                **finish_kwargs) -> list[dict]:
    """Builds, trains, evaluates and writes the tickets of ``names`` not finished yet.

    Args:
      stage_dir: the stage's directory (tickets in ``<name>/``, checkpoints in
        ``checkpoints/<group>/``, the group's runs and target step in
        ``checkpoints/<group>.json`` while it trains).
      names: every ticket of the stage; the finished ones are read back, not built.
      make_tickets: builds the pending tickets (same architecture, same starting step); not
        called when the group resumes from a checkpoint that holds it (:meth:`resume`).
      until_step: the step the group trains to.
      columns: ``(ticket, state, timing) -> extra row columns``; ``timing`` covers building
        and training the group.
      done_file: written (process 0) with every row once the stage is complete.
      grid: a PNG path for the first trained ticket's samples (process 0).
      finish_kwargs: passed to :meth:`finish`.

    Returns:
      The rows of every ticket of ``names``, in order.

    A group's in-stage checkpoints are deleted once its runs' outputs are written (at paper
    widths they are GBs per search level, and nothing reads them again).
    """
    todo = self.pending(stage_dir, names)
    if todo:
      checkpoints = os.path.join(stage_dir, "checkpoints", _group_id(todo))
      if self.is_main and not os.path.exists(checkpoints + ".json"):   # what the group trains
        write_json(checkpoints + ".json", {"runs": todo, "until_step": int(until_step)})
      tickets = self.resume(checkpoints, lambda: make_tickets(todo), family=family, label=label)
      states = self.train(tickets, until_step=until_step, checkpoint_dir=checkpoints,
                          family=family, key=key, label=label)
      jax.block_until_ready(states)
      spent = self.spent(checkpoints)
      del self._clocks[checkpoints]
      timing = Timing(spent.seconds, spent.cpu_seconds, len(tickets))
      self.finish(stage_dir, tickets, states, family=family,
                  columns=lambda t, s: columns(t, s, timing), **finish_kwargs)
      if grid and self.is_main:
        self.evaluator.save_grid(family or self.family, states[0], grid)
      if self.is_main:   # every run's outputs are written: the group never resumes again
        shutil.rmtree(checkpoints, ignore_errors=True)
        if os.path.exists(checkpoints + ".json"):
          os.remove(checkpoints + ".json")
    rows = [read_json(run_output(stage_dir, n)) for n in names]
    if done_file and self.is_main:
      write_json(done_file, rows)
    return rows

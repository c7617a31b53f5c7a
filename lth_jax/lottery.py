"""Lottery ticket search: iterative magnitude pruning (IMP) with late resetting, plus baselines.

``run(config, workdir)``:

* Level 0 trains each seed densely from θ₀ to T steps, saving θ_k (weights, BatchNorm
  statistics and optimizer state at the rewind step k; k = 0 is the original LTH).
* Level L = 1..N prunes ``rate`` of the remaining prunable weights by magnitude of the level L−1
  ticket's trained weights, resets the survivors to θ_k (optimizer state of step k, or fresh),
  trains to T and evaluates. At the same sparsity it trains the configured baselines, all with
  the same budget (steps k..T on the same data stream) and evaluation:
  ``random_reinit`` (ticket mask, fresh init), ``random_pruning`` (random mask with the ticket's
  per-layer sparsity, θ_k weights), ``snip``/``grasp``/``synflow`` (pruned at θ₀ to the ticket's
  global sparsity, trained from θ₀).
* Every (branch, seed) of a level is one ticket of a :class:`parallel.TicketRunner` group, so a
  level is one compiled program across all devices.

Multi-process (``jax.distributed``, see ``experiment_main``): the mesh spans every process's
devices and the workdir must be shared (NFS, GCS). Every process runs the same code on the same
runs: each builds every run's starting state (deterministic), trains its own share of the tickets
inside the one SPMD program and evaluates the tickets it trained (``TicketRunner.owners``), writing
their ``masks.npz`` and ``metrics.json``. Orbax saves (θ₀, θ_k, trained weights, in-level
checkpoints) are collective: every process calls them with the same host (NumPy) trees and process
0 writes them. A barrier closes each level; process 0 alone writes ``done.json``, the sample grids,
the scalars and the reports.

Each stage writes its outputs under ``level_LL/`` and skips itself when they exist; in-level
checkpoints every ``train.checkpoint_every`` steps make a killed run continue where it stopped.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from lth_jax import baselines
from lth_jax import checkpointing
from lth_jax import configs
from lth_jax import data as data_lib
from lth_jax import evaluation
from lth_jax import masks as masks_lib
from lth_jax import parallel
from lth_jax import pruning
from lth_jax import report
from lth_jax import steps as steps_lib
from lth_jax import training

PyTree = Any
_STEPS_RE = re.compile(r"^\s*(\d+)\s*(it|ep)?\s*$")
# Fields of a result row that are not evaluation metrics.
_ROW_KEYS = ("level", "branch", "seed", "sparsity", "steps", "group_train_seconds")


def parse_steps(spec, steps_per_epoch: int) -> int:
  """``'500it'``, ``'2ep'`` or an int → a step count.

  Raises:
    ValueError: the spec is not of that form.
  """
  match = _STEPS_RE.match(str(spec))
  if not match:
    raise ValueError(f"lottery.rewind_step={spec!r} is not a step count like '500it', '2ep' or 500")
  value, unit = int(match.group(1)), match.group(2) or "it"
  return value * steps_per_epoch if unit == "ep" else value


def validate(config: ml_collections.ConfigDict, *, num_train: int) -> int:
  """Checks the lottery config before any training; returns the rewind step k.

  Raises:
    ValueError: one message naming the bad field and the valid values.
  """
  lot = config.lottery
  if not 0.0 < lot.rate < 1.0:
    raise ValueError(f"lottery.rate must be in (0, 1), got {lot.rate}")
  if lot.levels < 0:
    raise ValueError(f"lottery.levels must be >= 0, got {lot.levels}")
  unknown = [b for b in lot.branches if b not in configs.BRANCHES]
  if unknown:
    raise ValueError(f"unknown lottery.branches {unknown}; valid: {configs.BRANCHES}")
  if "ticket" not in lot.branches:
    raise ValueError("lottery.branches must contain 'ticket' (every baseline is defined by the "
                     "ticket's sparsity)")
  if config.prune.scope not in pruning.SCOPES:
    raise ValueError(f"unknown prune.scope {config.prune.scope!r}; expected {pruning.SCOPES}")
  if not config.tickets.seeds:
    raise ValueError("tickets.seeds is empty")
  if len(set(config.tickets.seeds)) != len(config.tickets.seeds):
    raise ValueError(f"tickets.seeds has repeats: {config.tickets.seeds}")
  parallel.resolve_execution(config.tickets.execution)
  steps_per_epoch = -(-num_train // config.train.batch_size)
  k = parse_steps(lot.rewind_step, steps_per_epoch)
  if k >= config.train.steps:
    raise ValueError(f"lottery.rewind_step={lot.rewind_step!r} is step {k}, not before the end of "
                     f"training (train.steps={config.train.steps})")
  return k


def rewind(family: steps_lib.Family, theta_k: steps_lib.TrainState, masks: PyTree, *,
           restore_optimizer: bool = True) -> steps_lib.TrainState:
  """Late resetting: surviving weights, BatchNorm statistics and step count back to θ_k.

  Args:
    theta_k: the dense run's state at the rewind step k.
    masks: the new ticket's masks; pruned weights become exactly 0.
    restore_optimizer: restore step k's optimizer state (moments of pruned entries zeroed), as
      the authors do; False starts a fresh optimizer.
  """
  opt = (steps_lib.mask_opt_state(family, theta_k.opt_state, masks) if restore_optimizer
         else steps_lib.fresh_opt_state(family, theta_k.params))
  return steps_lib.TrainState(theta_k.step, masks_lib.apply(theta_k.params, masks),
                              theta_k.batch_stats, opt)


def _seed_keys(seed: int) -> dict[str, jax.Array]:
  base = jax.random.key(seed)
  names = ("init", "run", "reinit", "random_pruning", "score")
  return dict(zip(names, jax.random.split(base, len(names))))


class _Search:
  """State shared by the stages of one search (host-side bookkeeping only)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config = config
    self.workdir = workdir
    self.family = training.family_from_config(config)
    self.train_split, self.test_split = training.load_data(config)
    self.rewind_step = validate(config, num_train=len(self.train_split.labels))
    training.prepare_workdir(workdir, config)
    self.seeds = [int(s) for s in config.tickets.seeds]
    self.keys = {s: _seed_keys(s) for s in self.seeds}
    mesh = parallel.make_mesh(data_parallel=config.tickets.data_parallel)
    self.runner = parallel.TicketRunner(self.family, mesh=mesh,
                                        execution=config.tickets.execution,
                                        steps_per_call=config.train.steps_per_call)
    self.is_main = jax.process_index() == 0
    self.multiprocess = jax.process_count() > 1
    self.writer = report.MetricWriter(workdir, enabled=self.is_main)
    # Process 0 trains (and caches) the feature classifier first; the others then load it.
    if self.is_main:
      self.evaluator = evaluation.Evaluator.from_config(config, self.train_split, self.test_split)
    parallel.barrier("lottery-evaluator")
    if not self.is_main:
      self.evaluator = evaluation.Evaluator.from_config(config, self.train_split, self.test_split)
    self.metric = evaluation.primary_metric_key(config.family, self.evaluator.extractor.name)
    self.state_shape = jax.eval_shape(self.family.init, jax.random.key(0))

  # ------------------------------------------------------------------ paths and small I/O
  def level_dir(self, level: int) -> str:
    return os.path.join(self.workdir, f"level_{level:02d}")

  def run_dir(self, level: int, branch: str, seed: int) -> str:
    return os.path.join(self.level_dir(level), f"{branch}_seed{seed}")

  def init_state(self, seed: int) -> steps_lib.TrainState:
    return self.family.init(self.keys[seed]["init"])

  def dense_masks(self, params) -> PyTree:
    return training.masks_from_config(self.config, self.family, params)

  def load_state(self, path: str) -> steps_lib.TrainState:
    return checkpointing.load_tree(path, like=self._like(self.state_shape))

  def _like(self, tree: PyTree) -> PyTree:
    """``tree`` as a restore target: itself, or NumPy arrays in a multi-process run (Orbax
    refuses process-local device arrays there)."""
    if not self.multiprocess:
      return tree
    return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)

  def save_state(self, path: str, state: steps_lib.TrainState) -> None:
    """Saves one state (collective in a multi-process run: every process calls it with the same
    state; process 0 writes)."""
    checkpointing.save_tree(path, jax.device_get(state) if self.multiprocess else state)

  # ------------------------------------------------------------------------ training a group
  def train_group(self, level: int, runs: list[dict]) -> list[steps_lib.TrainState]:
    """Trains runs (dicts with state, masks, seed) together to train.steps; resumable."""
    ckpt_dir = os.path.join(self.level_dir(level), "checkpoints")
    states = [r["state"] for r in runs]
    with checkpointing.Manager(ckpt_dir, max_to_keep=2) as manager:
      if manager.latest_step() is not None:
        restored, _ = manager.restore(like=self._like({"tickets": states}))
        states = restored["tickets"]
        logging.info("level %d: resuming %d tickets at step %d", level, len(states),
                     int(states[0].step))

      def save(step, current):
        if step not in manager.all_steps():
          manager.save(step, {"tickets": current}, force=True)

      states = self.runner.train(
          states, [r["masks"] for r in runs], self.train_split.images,
          [self.keys[r["seed"]]["run"] for r in runs], until_step=self.config.train.steps,
          on_boundary=save, boundary_every=self.config.train.checkpoint_every)
    return states

  def finish_level(self, level: int, runs: list[dict], states: list, seconds: float
                   ) -> list[dict]:
    """Saves and evaluates a trained group; returns every run's row (on every process).

    Each run is evaluated by the process that trained it, which writes its ``masks.npz`` and
    ``metrics.json``; ticket and dense weights are saved collectively. Ends with a barrier, so
    every process then sees every file of the level.
    """
    owners = self.runner.owners(len(runs))
    me = jax.process_index()
    rows = []
    for run, state, owner in zip(runs, states, owners):
      directory = self.run_dir(level, run["branch"], run["seed"])
      os.makedirs(directory, exist_ok=True)
      trained = os.path.join(directory, "trained")
      if run["branch"] in ("ticket", "dense") and not os.path.exists(trained):
        self.save_state(trained, state)
      if owner != me:
        rows.append(None)
        continue
      metrics = self.evaluator(self.family, state)
      row = {"level": level, "branch": run["branch"], "seed": run["seed"],
             "sparsity": float(masks_lib.sparsity(run["masks"])),
             "steps": int(state.step), "group_train_seconds": seconds, **metrics}
      masks_lib.save(os.path.join(directory, "masks.npz"), run["masks"], overwrite=True)
      with open(os.path.join(directory, "metrics.json"), "w") as f:
        json.dump(row, f, indent=2)
      rows.append(row)
    parallel.barrier(f"lottery-level{level}-finished")
    for i, run in enumerate(runs):
      if rows[i] is None:
        with open(os.path.join(self.run_dir(level, run["branch"], run["seed"]),
                               "metrics.json")) as f:
          rows[i] = json.load(f)
    if self.is_main:
      for row in rows:
        self.writer.write_scalars(level, {k: v for k, v in row.items() if k not in _ROW_KEYS},
                                  branch=row["branch"], seed=row["seed"])
    return rows

  # ----------------------------------------------------------------------------- level 0
  def dense_level(self) -> list[dict]:
    done = os.path.join(self.level_dir(0), "done.json")
    if os.path.exists(done):
      with open(done) as f:
        return json.load(f)
    os.makedirs(self.level_dir(0), exist_ok=True)
    runs = []
    for seed in self.seeds:
      state = self.init_state(seed)
      d = self.run_dir(0, "dense", seed)
      if not os.path.exists(os.path.join(d, "theta_0")):
        self.save_state(os.path.join(d, "theta_0"), state)
      runs.append({"branch": "dense", "seed": seed, "state": state,
                   "masks": self.dense_masks(state.params)})
    start = time.perf_counter()
    if not all(os.path.exists(os.path.join(self.run_dir(0, "dense", s), "theta_k"))
               for s in self.seeds):
      # Train to the rewind step first, save θ_k, then continue (both resumable).
      states = self._train_until(0, runs, self.rewind_step, tag="rewind")
      for run, state in zip(runs, states):
        path = os.path.join(self.run_dir(0, "dense", run["seed"]), "theta_k")
        if not os.path.exists(path):
          self.save_state(path, state)
    for run in runs:
      run["state"] = self.load_state(os.path.join(self.run_dir(0, "dense", run["seed"]),
                                                  "theta_k"))
    states = self.train_group(0, runs)
    seconds = time.perf_counter() - start
    rows = self.finish_level(0, runs, states, seconds)
    self._save_grid(0, self.family, states[0])
    self._mark_done(0, rows)
    return rows

  def _train_until(self, level, runs, until, tag):
    """Trains a group to an intermediate step (the rewind point), resumable."""
    if until == 0:
      return [r["state"] for r in runs]
    ckpt_dir = os.path.join(self.level_dir(level), f"checkpoints_{tag}")
    states = [r["state"] for r in runs]
    with checkpointing.Manager(ckpt_dir, max_to_keep=2) as manager:
      if manager.latest_step() is not None:
        states = manager.restore(like=self._like({"tickets": states}))[0]["tickets"]

      def save(step, current):
        if step not in manager.all_steps():
          manager.save(step, {"tickets": current}, force=True)

      return self.runner.train(states, [r["masks"] for r in runs], self.train_split.images,
                               [self.keys[r["seed"]]["run"] for r in runs], until_step=until,
                               on_boundary=save,
                               boundary_every=self.config.train.checkpoint_every)

  # -------------------------------------------------------------------------- level L >= 1
  def level(self, level: int) -> list[dict]:
    done = os.path.join(self.level_dir(level), "done.json")
    if os.path.exists(done):
      with open(done) as f:
        return json.load(f)
    os.makedirs(self.level_dir(level), exist_ok=True)
    runs = []
    for seed in self.seeds:
      runs.extend(self._level_runs(level, seed))
    start = time.perf_counter()
    states = self.train_group(level, runs)
    seconds = time.perf_counter() - start
    rows = self.finish_level(level, runs, states, seconds)
    self._save_grid(level, self.family, states[0])
    self._mark_done(level, rows)
    return rows

  def _level_runs(self, level: int, seed: int) -> list[dict]:
    """The (branch, seed) runs of one level: starting states and masks, deterministic."""
    cfg = self.config
    prev_branch = "dense" if level == 1 else "ticket"
    prev_dir = self.run_dir(level - 1, prev_branch, seed)
    prev_trained = self.load_state(os.path.join(prev_dir, "trained"))
    dense_dir = self.run_dir(0, "dense", seed)
    theta_0 = self.load_state(os.path.join(dense_dir, "theta_0"))
    theta_k = self.load_state(os.path.join(dense_dir, "theta_k"))
    dense = self.dense_masks(theta_0.params)
    prev_masks = masks_lib.load(os.path.join(prev_dir, "masks.npz"), like=dense)
    ticket = pruning.magnitude(prev_trained.params, prev_masks, cfg.lottery.rate,
                               scope=cfg.prune.scope)
    target = float(masks_lib.sparsity(ticket))
    keys = self.keys[seed]
    level_key = lambda name: jax.random.fold_in(keys[name], level)

    rewound = lambda m: rewind(self.family, theta_k, m,
                               restore_optimizer=cfg.lottery.rewind_optimizer)

    def from_params(params, stats, m):
      return steps_lib.TrainState(theta_k.step, masks_lib.apply(params, m), stats,
                                  steps_lib.fresh_opt_state(self.family, params))

    runs = []
    for branch in cfg.lottery.branches:
      if branch == "ticket":
        m, state = ticket, rewound(ticket)
      elif branch == "random_pruning":
        m = pruning.random(level_key("random_pruning"), dense, like=ticket)
        state = rewound(m)
      elif branch == "random_reinit":
        fresh = self.family.init(level_key("reinit"))
        m, state = ticket, from_params(fresh.params, fresh.batch_stats, ticket)
      else:
        m = self._prune_at_init(branch, theta_0, dense, target, level_key("score"))
        state = from_params(theta_0.params, theta_0.batch_stats, m)
      runs.append({"branch": branch, "seed": seed, "state": state, "masks": m})
    return runs

  def _prune_at_init(self, method, theta_0, dense, sparsity, key):
    batch_key, loss_key = jax.random.split(key)
    batch = data_lib.sample_batch(batch_key, self.train_split.images, self.config.train.batch_size)
    stats = theta_0.batch_stats
    return baselines.prune_at_init(
        method, params=theta_0.params, masks=dense, sparsity=sparsity,
        loss_fn=lambda p: self.family.score_loss(p, stats, batch, loss_key),
        output_fn=lambda p: self.family.synflow_output(p, stats),
        scope=self.config.prune.scope, iterations=self.config.lottery.synflow_iterations)

  # ------------------------------------------------------------------------------- reports
  def _save_grid(self, level, family, state):
    if self.is_main:
      self.evaluator.save_grid(family, state,
                               os.path.join(self.workdir, f"samples_level{level}.png"))

  def _mark_done(self, level, rows):
    if self.is_main:
      path = os.path.join(self.level_dir(level), "done.json")
      with open(path + ".tmp", "w") as f:
        json.dump(rows, f, indent=2)
      os.replace(path + ".tmp", path)


def write_reports(workdir: str, rows: list[dict], metric: str) -> str:
  """``results.csv``, ``metric_vs_sparsity.png`` and ``summary.md`` from result rows.

  Returns:
    The Markdown summary (mean ± std over seeds per branch and level).
  """
  report.write_csv(rows, os.path.join(workdir, "results.csv"))
  report.plot_metric_vs_sparsity(rows, metric, os.path.join(workdir, "metric_vs_sparsity.png"),
                                 title=f"{metric} vs weights remaining")
  table = report.aggregate(rows, metrics=(metric, "sparsity"), by=("level", "branch"))
  for r in table:
    r["remaining_%"] = 100.0 * (1.0 - r.pop("sparsity_mean"))
    r.pop("sparsity_std", None)
    r[metric] = (f"{r.pop(metric + '_mean'):.4g} ± {r.pop(metric + '_std'):.2g}")
  columns = ["level", "branch", "remaining_%", metric, "n"]
  summary = (f"# Lottery ticket search: {os.path.basename(os.path.abspath(workdir))}\n\n"
             f"Metric: `{metric}` (mean ± std over seeds; lower is better).\n\n"
             + report.markdown_table(table, columns, floatfmt=".4g") + "\n")
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary)
  return summary


def load_results(workdir: str) -> tuple[list[dict], str]:
  """(rows of every finished level, primary metric key) from a search's ``level_*/done.json``.

  Raises:
    FileNotFoundError: the workdir has no finished level.
  """
  names = sorted(n for n in os.listdir(workdir) if re.fullmatch(r"level_\d+", n)) \
      if os.path.isdir(workdir) else []
  rows = []
  for name in names:
    path = os.path.join(workdir, name, "done.json")
    if os.path.exists(path):
      with open(path) as f:
        rows += json.load(f)
  if not rows:
    raise FileNotFoundError(f"no finished level (level_*/done.json) in {workdir!r}")
  with open(os.path.join(workdir, "config.json")) as f:
    family = json.load(f)["family"]
  metric = next(k for k in rows[0] if k.startswith("fid_")) if family != "ae" else "recon_mse"
  return rows, metric


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) the whole search and writes the reports; returns the result rows."""
  search = _Search(config, workdir)
  rows = search.dense_level()
  for level in range(1, config.lottery.levels + 1):
    rows += search.level(level)
  if search.is_main:
    summary = write_reports(workdir, rows, search.metric)
    print(summary)
    print(f"plots and samples in {os.path.abspath(workdir)}")
  search.writer.close()
  return rows

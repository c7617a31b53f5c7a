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
  level is one compiled program across all devices. Branches are registered functions
  (:mod:`lth_jax.branches`): a new baseline is one function.
* The stages run on the one run machinery (:mod:`lth_jax.runs`): in-stage checkpoints, resume,
  evaluation by the owning process, ``done.json``.

Multi-process (``jax.distributed``, see ``experiment_main``): the mesh spans every process's
devices and the workdir must be one directory every process sees as a local path (NFS, or a
bucket mounted as a file system, e.g. with gcsfuse): the JSON, mask, report and metric files are
written with Python's ``open()`` and ``os`` calls, so a ``gs://`` workdir does not work (the data,
``data.data_dir``, may be on GCS). Every process runs the same code on the same
runs: each builds every run's starting state (deterministic), trains its own share of the tickets
inside the one SPMD program and evaluates the tickets it trained (``TicketRunner.owners``), writing
their ``masks.npz`` and ``metrics.json``. Orbax saves (θ₀, θ_k, trained weights, in-level
checkpoints) are collective: every process calls them with the same host (NumPy) trees and process
0 writes them. A barrier closes each level; process 0 alone writes ``done.json``, the sample grids,
the scalars and the reports.

Each stage writes its outputs under ``level_LL/`` and skips the runs whose outputs exist;
in-level checkpoints every ``train.checkpoint_every`` steps make a killed run continue where it
stopped. A finished search can be extended: more ``lottery.levels`` or more
``lottery.branches`` train only what is missing (any other changed setting is refused).
``lottery.branch_levels`` trains chosen baselines at chosen levels only (e.g. SNIP at four
levels spread over the range), the others at every level.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import jax
import ml_collections

from lth_jax import branches
from lth_jax import config_fields
from lth_jax import evaluation
from lth_jax import groups
from lth_jax import masks as masks_lib
from lth_jax import pruning
from lth_jax import report
from lth_jax import runs
from lth_jax import steps as steps_lib
from lth_jax import validation

PyTree = Any
# Fields a finished search may change: the search is extended, not refused.
EXTENDABLE = ("lottery.levels", "lottery.branches", "lottery.branch_levels")


def level_name(level: int) -> str:
  """A level's directory in the search's workdir: ``level_LL``."""
  return f"level_{level:02d}"


def branches_at(config: ml_collections.ConfigDict, level: int) -> list[str]:
  """The branches trained at ``level`` >= 1 (``lottery.branch_levels`` may skip baselines)."""
  only = config_fields.branch_levels(config.lottery)
  return [b for b in config.lottery.branches if level in only.get(b, (level,))]


def level_runs(config: ml_collections.ConfigDict, level: int) -> list[str]:
  """The runs of ``level``: ``dense_seed<s>`` at 0, then ``<branch>_seed<s>`` per seed."""
  seeds = [int(s) for s in config.tickets.seeds]
  if level == 0:
    return [f"dense_seed{s}" for s in seeds]
  return [f"{b}_seed{s}" for s in seeds for b in branches_at(config, level)]


def planned_outputs(config: ml_collections.ConfigDict) -> list[str]:
  """Every run's output file (:func:`runs.run_output`), relative to the workdir, in run order:
  the search is done when all exist."""
  return [runs.run_output(level_name(level), name)
          for level in range(config.lottery.levels + 1) for name in level_runs(config, level)]


class _Search:
  """The stages of one search (host-side bookkeeping over a :class:`runs.Context`)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validation.check(config, "find_tickets")
    runs.prepare_workdir(workdir, config, extendable=EXTENDABLE)
    self.config = config
    self.workdir = workdir
    self.ctx = runs.Context(config, workdir)
    self.family = self.ctx.family
    self.rewind_step = config_fields.rewind_step(config, len(self.ctx.train_split.labels))
    self.seeds = [int(s) for s in config.tickets.seeds]
    self.keys = {s: runs.seed_keys(s) for s in self.seeds}

  def level_dir(self, level: int) -> str:
    return os.path.join(self.workdir, level_name(level))

  def run_dir(self, level: int, branch: str, seed: int) -> str:
    return os.path.join(self.level_dir(level), f"{branch}_seed{seed}")

  def _stage(self, level: int, names: list[str], make_tickets) -> list[dict]:
    """Runs level ``level``'s tickets ``names`` (``<branch>_seed<s>``) to ``train.steps``."""
    def columns(ticket, state, timing):
      return {"sparsity": float(masks_lib.sparsity(ticket.masks)), "steps": int(state.step),
              "group_train_seconds": timing.seconds}

    return self.ctx.run_stage(
        self.level_dir(level), names, make_tickets, until_step=self.config.train.steps,
        columns=columns, done_file=os.path.join(self.level_dir(level), "done.json"),
        grid=os.path.join(self.workdir, f"samples_level{level}.png"),
        label=f"level {level}: ", scalar_step=lambda t, s: level,
        keep=lambda t: "trained" if t.tags["branch"] in ("ticket", "dense") else None)

  def _ticket(self, level: int, branch: str, seed: int, state, masks) -> groups.Ticket:
    return groups.Ticket(f"{branch}_seed{seed}", state, masks, self.keys[seed]["run"],
                         {"level": level, "branch": branch, "seed": seed})

  # ----------------------------------------------------------------------------- level 0
  def dense_level(self) -> list[dict]:
    """Each seed trained densely from θ₀, saving θ₀ and θ_k (the rewind point)."""
    return self._stage(0, level_runs(self.config, 0), self._dense_tickets)

  def _dense_tickets(self, names: list[str]) -> list[groups.Ticket]:
    seeds = [int(n.rsplit("_seed", 1)[1]) for n in names]
    tickets = []
    for seed in seeds:
      state = self.family.init(self.keys[seed]["init"])
      path = os.path.join(self.run_dir(0, "dense", seed), "theta_0")
      if not os.path.exists(path):
        self.ctx.save_state(path, state)
      tickets.append(self._ticket(0, "dense", seed, state, self.ctx.dense_masks(state.params)))
    paths = [os.path.join(self.run_dir(0, "dense", s), "theta_k") for s in seeds]
    if not all(os.path.exists(p) for p in paths):
      # Train to the rewind step first, save θ_k, then continue (both resumable).
      checkpoints = os.path.join(self.level_dir(0), "checkpoints_rewind")
      label = "level 0 to the rewind step: "
      states = self.ctx.train(self.ctx.resume(checkpoints, lambda: tickets, label=label),
                              until_step=self.rewind_step, label=label,
                              checkpoint_dir=checkpoints)
      for path, state in zip(paths, states):
        if not os.path.exists(path):
          self.ctx.save_state(path, state)
      if self.ctx.is_main:   # θ_k is saved: that training never resumes again
        shutil.rmtree(checkpoints, ignore_errors=True)
    return [t._replace(state=self.ctx.load_state(p)) for t, p in zip(tickets, paths)]

  # -------------------------------------------------------------------------- level L >= 1
  def level(self, level: int) -> list[dict]:
    return self._stage(level, level_runs(self.config, level),
                       lambda todo: self._level_tickets(level, todo))

  def _level_tickets(self, level: int, names: list[str]) -> list[groups.Ticket]:
    """The pending runs of one level: starting states and masks, deterministic."""
    tickets = []
    for seed in self.seeds:
      mine = [b for b in branches_at(self.config, level) if f"{b}_seed{seed}" in names]
      if not mine:
        continue
      inputs = self._level_inputs(level, seed)
      for branch in mine:
        state, masks = branches.start(branch, inputs)
        tickets.append(self._ticket(level, branch, seed, state, masks))
    return tickets

  def _level_inputs(self, level: int, seed: int) -> branches.LevelInputs:
    """θ₀, θ_k and this level's IMP mask (from the previous level's trained ticket)."""
    prev_dir = self.run_dir(level - 1, "dense" if level == 1 else "ticket", seed)
    prev_trained = self.ctx.load_state(os.path.join(prev_dir, "trained"))
    dense_dir = self.run_dir(0, "dense", seed)
    theta_k = self.ctx.load_state(os.path.join(dense_dir, "theta_k"))
    dense = self.ctx.dense_masks(theta_k.params)
    prev_masks = masks_lib.load(os.path.join(prev_dir, "masks.npz"), like=dense)
    ticket = pruning.magnitude(prev_trained.params, prev_masks, self.config.lottery.rate,
                               scope=self.config.prune.scope)
    keys = self.keys[seed]

    def load(name: str) -> steps_lib.TrainState:
      if name == "dense_trained" and level == 1:
        return prev_trained
      return self.ctx.load_state(os.path.join(dense_dir, {"theta_0": "theta_0",
                                                          "dense_trained": "trained"}[name]))

    return branches.LevelInputs(
        self.config, self.family, level, theta_k, dense, ticket,
        float(masks_lib.sparsity(ticket)), self.ctx.train_split.images,
        lambda name: jax.random.fold_in(keys[name], level), load)


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
      rows += runs.read_json(path)
  if not rows:
    raise FileNotFoundError(f"no finished level (level_*/done.json) in {workdir!r}")
  family = runs.read_json(os.path.join(workdir, "config.json"))["family"]
  metric = evaluation.primary_metric_in(family, rows[0])
  return rows, metric


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) the whole search and writes the reports; returns the result rows."""
  search = _Search(config, workdir)
  rows = search.dense_level()
  for level in range(1, config.lottery.levels + 1):
    rows += search.level(level)
  if search.ctx.is_main:
    summary = write_reports(workdir, rows, search.ctx.metric)
    print(summary)
    print(f"plots and samples in {os.path.abspath(workdir)}")
  search.ctx.writer.close()
  return rows

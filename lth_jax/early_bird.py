"""Early-bird tickets (You et al., ICLR 2020): draw the ticket early in dense training.

The pieces: detection (:mod:`lth_jax.early_bird_detection`: :class:`Detector`, :func:`search`,
:func:`magnitude_masks`), channel surgery (:mod:`lth_jax.channels`, on the channel groups the
family's model lists: ``steps.Family.channel_groups``) and the reports
(:mod:`lth_jax.early_bird_report`). This module is the driver.

Two kinds of ticket:

* ``unstructured``: magnitude masks at the target weight sparsity (one global ``|w|`` threshold,
  or per layer with ``prune.scope='layerwise'``); the ticket trains with its mask (no speed-up).
* ``structured`` (network slimming, Liu et al. 2017): the search adds ``bn_l1 * sum |γ|`` over the
  BatchNorm scales of the pruned parts to the training losses; channels are scored by ``|γ|``
  with ONE threshold over all BatchNorm layers of the pruned parts
  (:func:`lth_jax.channels.channel_masks`), and the surviving channels are copied into a
  *physically smaller* model that trains and samples on its own. ``prune.exclude`` (kernel
  exclusions of the unstructured search) does not apply. A family without a channel layout is
  refused.

``run(config, workdir)`` trains the dense baseline, runs the search, trains the ticket (from the
drawn weights and optimizer state, sliced for a smaller model, masked otherwise; or rewound to
the initial weights with ``early_bird.rewind``) to the same total step count, evaluates both and
reports analytic FLOPs (:mod:`lth_jax.flops`) and measured wall-clock; optionally also the
ticket's architecture trained from a new init (``early_bird.scratch_baseline``: does the search
find more than a size?) and IMP to a given level (``early_bird.imp_levels``). Every stage runs all
``tickets.seeds`` as groups of same-shaped tickets through :class:`lth_jax.parallel.TicketRunner`
(sharded over the mesh's devices and processes), and the reports add mean ± std over seeds. Each
stage writes its outputs per seed and skips the seeds whose outputs exist.
``early_bird.part_sparsity`` sets a channel fraction per network (e.g. a DCGAN's discriminator
costs 3 forward passes per step and can be pruned harder).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from lth_jax import channels
from lth_jax import config_fields
from lth_jax import configs
from lth_jax import early_bird_detection as detection
from lth_jax import early_bird_report
from lth_jax import flops
from lth_jax import groups
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import meshes
from lth_jax import runs
from lth_jax import steps as steps_lib
from lth_jax import validation
from lth_jax.models import layout

PyTree = Any


class _Start(NamedTuple):
  """Where one seed's run of a stage starts."""
  family: steps_lib.Family        # the (possibly physically smaller) architecture
  state: steps_lib.TrainState
  masks: PyTree
  info: dict                      # description columns (sparsity, widths)
  cost_masks: PyTree              # masks for the FLOPs count (None: every weight counts)


class _Run:
  """The stages of one early-bird run over ``tickets.seeds``, on a :class:`runs.Context`.

  Every stage trains its seeds as groups of same-architecture, same-step tickets (one program
  over the mesh); a ticket's seconds are its group's wall-clock (CPU time) divided by the group
  size. Stage outputs live in ``<stage>_seed<s>/``; a stage skips the seeds whose outputs exist.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validation.check(config, "early_bird")
    self.config = config
    self.eb = config.early_bird
    self.structured = self.eb.kind == "structured"
    family = runs.family_from_config(config)
    self.pruned_parts = tuple(p for p in family.parts if config.prune.parts.get(p, False))
    shapes = jax.eval_shape(family.init, jax.random.key(0))
    self.groups = (channels.family_groups(family, shapes.params, self.pruned_parts)
                   if self.structured else None)     # refuses a family without a layout
    if self.structured:
      named = [e.partition("=")[0].strip() for e in self.eb.part_sparsity.split(",") if e.strip()]
      scored = {layout.part(g) for g in self.groups}
      for part in named:
        if part in self.pruned_parts and part not in scored:
          raise ValueError(f"early_bird.part_sparsity names {part!r}, which has no BatchNorm "
                           f"channels to score in {config.family}: leave it out (structured "
                           "early-bird keeps it whole)")
    runs.prepare_workdir(workdir, config)
    self.workdir = workdir
    self.ctx = runs.Context(config, workdir)
    self.family = self.ctx.family
    self.seeds = tuple(int(s) for s in config.tickets.seeds)
    self.keys = {s: runs.seed_keys(s) for s in self.seeds}
    self.theta_0 = {s: self.family.init(self.keys[s]["init"]) for s in self.seeds}
    self.all_kept = self.ctx.dense_masks(self.theta_0[self.seeds[0]].params)

  def path(self, stage: str, seed: int, *names: str) -> str:
    return os.path.join(self.workdir, run_name(stage, seed), *names)

  def _cost(self, family, masks=None) -> dict:
    """Analytic cost columns of a (possibly masked or physically smaller) family."""
    params = jax.eval_shape(family.init, jax.random.key(0)).params
    return {"params": flops.num_params(params, masks),
            "sample_flops": flops.sample(family, masks),
            "forward_flops": sum(flops.family_forward(family, masks).values()),
            "step_flops": flops.train_step(family, masks)}

  def _stage(self, stage: str, make_start: Callable[[int], _Start],
             steps_of: Callable[[int], int]) -> dict[int, dict]:
    """Trains every pending seed's start for ``steps_of(seed)`` steps, grouped by architecture
    and starting step; returns every seed's row (``<stage>_seed<s>/metrics.json``)."""
    names = {s: run_name(stage, s) for s in self.seeds}
    pending = [s for s in self.seeds if self.ctx.pending(self.workdir, [names[s]])]
    starts = {s: make_start(s) for s in pending}
    by_shape: dict = collections.defaultdict(list)
    for seed in pending:
      start = starts[seed]
      by_shape[(start.info.get("widths", ""), int(start.state.step), steps_of(seed))].append(seed)
    run = "eb_ticket" if stage == "ticket" else stage
    for (widths, start_step, steps), seeds in by_shape.items():
      family = starts[seeds[0]].family

      def columns(ticket, state, timing, steps=steps, start_step=start_step, family=family):
        start = starts[ticket.tags["seed"]]
        cost = self._cost(family, start.cost_masks)
        return {"steps": steps, "start_step": start_step, **start.info, **cost,
                "train_flops": steps * cost["step_flops"],
                "train_seconds": timing.seconds / timing.tickets,
                "train_cpu_seconds": timing.cpu_seconds / timing.tickets}

      tickets = [groups.Ticket(names[s], starts[s].state, starts[s].masks, self.keys[s]["run"],
                               {"run": run, "seed": s}) for s in seeds]
      grid = (os.path.join(self.workdir, f"samples_{stage}.png") if seeds[0] == self.seeds[0]
              else None)
      self.ctx.run_stage(self.workdir, [t.name for t in tickets], lambda todo, t=tickets: t,
                         until_step=start_step + steps, columns=columns, family=family,
                         key=widths, grid=grid, label=f"{stage}: ", save_masks=False)
    return {s: runs.read_json(self.path(stage, s, "metrics.json")) for s in self.seeds}

  # ------------------------------------------------------------------------------- stages
  def dense(self) -> dict[int, dict]:
    return self._stage("dense", lambda s: _Start(self.family, self.theta_0[s], self.all_kept, {},
                                                 None),
                       lambda s: self.config.train.steps)

  def _mask_fn(self):
    """``TrainState -> mask tree`` of the search (which compiles it with its mask checks)."""
    scope = self.config.prune.scope
    sparsity = config_fields.part_sparsity(self.eb, self.pruned_parts)
    if self.structured:
      groups = self.groups
      return lambda s: channels.channel_masks(s.params, s.batch_stats, groups, sparsity,
                                              scope=scope)
    return lambda s: detection.magnitude_masks(s.params, self.all_kept, sparsity, scope=scope)

  def _mask_like(self):
    if self.structured:
      return {g.name: np.ones(g.size, bool) for g in self.groups}
    return self.all_kept

  def search(self) -> dict[int, tuple[dict, PyTree, steps_lib.TrainState]]:
    """Runs (or loads) the search of every seed: ``{seed: (row, drawn mask, drawn state)}``."""
    pending = [s for s in self.seeds if not os.path.exists(self.path("search", s, "search.json"))]
    if pending:
      family = (runs.family_from_config(self.config,
                                        bn_l1={p: self.eb.bn_l1 for p in self.pruned_parts})
                if self.structured else self.family)

      def train_group(indices, states, until_step):
        seeds = [pending[i] for i in indices]
        return self.ctx.runner(family, "search").train(
            states, [self.all_kept] * len(seeds), self.ctx.train_split.images,
            [self.keys[s]["run"] for s in seeds], until_step=until_step)

      results = detection.search(
          train_group, [self.theta_0[s] for s in pending], mask_fn=self._mask_fn(),
          detectors=[detection.Detector(window=self.eb.window, epsilon=self.eb.epsilon)
                     for _ in pending],
          interval=self.eb.interval,
          max_steps=self.eb.max_search_steps or self.config.train.steps,
          writer=self.ctx.writer, names=[str(s) for s in pending])
      cost = self._cost(self.family)
      for seed, result in zip(pending, results):
        if not result.drawn:
          logging.warning("seed %d: no early-bird ticket drawn by step %d (max mask distance %s "
                          "> %s); using the newest mask", seed, result.step,
                          result.history[-1]["max_distance"], self.eb.epsilon)
        row = {"run": "eb_search", "seed": seed, "steps": result.step, "eb_step": result.step,
               "drawn": result.drawn, **cost, "train_flops": result.step * cost["step_flops"],
               "train_seconds": result.seconds, "train_cpu_seconds": result.cpu_seconds,
               "history": result.history}
        self.ctx.save_state(self.path("search", seed, "drawn_state"), result.state,
                            overwrite=True)
        if self.ctx.is_main:
          masks_lib.save(self.path("search", seed, "mask.npz"), result.mask, overwrite=True)
          runs.write_json(self.path("search", seed, "search.json"), row)
      meshes.barrier("early-bird-search")
    return {s: (runs.read_json(self.path("search", s, "search.json")),
                masks_lib.load(self.path("search", s, "mask.npz"), like=self._mask_like()),
                self.ctx.load_state(self.path("search", s, "drawn_state")))
            for s in self.seeds}

  def _ticket_start(self, mask, source: steps_lib.TrainState) -> _Start:
    if self.structured:
      params, stats = channels.slice_channels(source.params, source.batch_stats, mask,
                                              self.groups)
      widths = channels.channel_widths(mask, self.groups)
      family = runs.family_from_config(self.config, widths=widths)
      state = steps_lib.TrainState(
          source.step, params, stats,
          channels.slice_opt_state(self.family, source.opt_state, source.params, mask,
                                   self.groups))
      info = {"sparsity": channels.channel_sparsity(mask),
              "widths": " ".join(f"{p}={'x'.join(map(str, w))}" for p, w in widths.items())}
      return _Start(family, state, self.ctx.dense_masks(params, family), info, None)
    state = steps_lib.TrainState(source.step, masks_lib.apply(source.params, mask),
                                 source.batch_stats,
                                 steps_lib.mask_opt_state(self.family, source.opt_state, mask))
    return _Start(self.family, state, mask, {"sparsity": float(masks_lib.sparsity(mask))}, mask)

  def ticket(self, searched: dict) -> dict[int, dict]:
    return self._stage(
        "ticket",
        lambda s: self._ticket_start(searched[s][1],
                                     self.theta_0[s] if self.eb.rewind else searched[s][2]),
        lambda s: self.eb.ticket_steps or max(
            self.config.train.steps - searched[s][0]["eb_step"], 0))

  def _scratch_start(self, seed: int, searched: dict) -> _Start:
    """The ticket's architecture (its widths, or its mask) from a new random init."""
    start = self._ticket_start(searched[seed][1], searched[seed][2])
    fresh = start.family.init(self.keys[seed]["scratch"])            # independent of θ₀
    if not self.structured:
      fresh = steps_lib.TrainState(
          fresh.step, masks_lib.apply(fresh.params, start.masks), fresh.batch_stats,
          steps_lib.mask_opt_state(start.family, fresh.opt_state, start.masks))
    return start._replace(state=fresh)

  def scratch(self, searched: dict) -> dict[int, dict]:
    """The ticket's architecture trained for ``train.steps`` from a new init with a fresh
    optimizer: does the search pick more than a size?"""
    return self._stage("scratch", lambda s: self._scratch_start(s, searched),
                       lambda s: self.config.train.steps)

  def imp(self) -> dict[int, dict]:
    """IMP (the ``lottery`` section, ticket branch only, every seed) for
    ``early_bird.imp_levels`` levels in ``imp/``: per seed, its training wall-clock and FLOPs
    summed over every level (masked kernels run dense, so each step costs a dense step) and its
    last ticket's metric. Seconds: each level's group wall-clock divided by the seeds."""
    config = _imp_config(self.config)
    rows = lottery.run(config, os.path.join(self.workdir, "imp"))
    rewind = config_fields.rewind_step(config, len(self.ctx.train_split.labels))
    steps = config.train.steps + config.lottery.levels * (config.train.steps - rewind)
    out = {}
    for seed in self.seeds:
      mine = [r for r in rows if r["seed"] == seed]
      last = max(mine, key=lambda r: r["level"])
      out[seed] = {"run": "imp", "seed": seed, "steps": steps, "levels": config.lottery.levels,
                   "sparsity": last["sparsity"],
                   "train_flops": steps * flops.train_step(self.family),
                   "train_seconds": sum(r["group_train_seconds"] for r in mine) / len(self.seeds),
                   self.ctx.metric: last[self.ctx.metric]}
    return out


def run_name(stage: str, seed: int) -> str:
  """A stage's run of one seed (its directory in the workdir): ``<stage>_seed<s>``."""
  return f"{stage}_seed{seed}"


def _imp_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``imp/`` search's config: a lottery config without the early-bird settings (so runs of
  other early-bird settings can share, copy, one finished ``imp/``), ticket branch only."""
  imp = configs.for_binary(config, "find_tickets")
  imp.lottery.update(levels=config.early_bird.imp_levels, branches=("ticket",))
  return imp


def planned_outputs(config: ml_collections.ConfigDict) -> list[str]:
  """Every run's output file, relative to the workdir, in :func:`run`'s order (a search's is
  its ``search.json``): the run is done when all exist."""
  eb = config.early_bird
  stages = ["dense"] * eb.dense_baseline + ["search", "ticket"] + ["scratch"] * eb.scratch_baseline
  outputs = [os.path.join(run_name(stage, int(s)), "search.json") if stage == "search"
             else runs.run_output("", run_name(stage, int(s)))
             for stage in stages for s in config.tickets.seeds]
  if eb.imp_levels:
    outputs += [os.path.join("imp", p) for p in lottery.planned_outputs(_imp_config(config))]
  return outputs


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) dense baselines, searches and ticket trainings of every ``tickets.seeds``
  and writes the reports.

  Writes to ``workdir``: ``config.json``, per seed ``dense_seed<s>/``, ``search_seed<s>/``
  (``search.json``, ``mask.npz``, ``drawn_state``) and ``ticket_seed<s>/`` (``metrics.json``),
  the first seed's ``samples_dense.png`` and ``samples_ticket.png``, ``metrics.jsonl`` +
  TensorBoard, ``results.csv`` and ``summary.md``. With ``early_bird.scratch_baseline`` also
  ``scratch_seed<s>/`` (and ``samples_scratch.png``); with ``early_bird.imp_levels``, ``imp/``
  (a lottery search workdir).

  Returns:
    Per seed: ``dense`` (when ``early_bird.dense_baseline``), ``eb_search``, ``eb_ticket``,
    ``eb_total`` (search + ticket), then ``scratch`` and ``imp`` when asked for; with a dense
    row, every row after it carries its ratios to that seed's dense row.
  """
  eb = config.early_bird
  eb_run = _Run(config, workdir)
  dense = eb_run.dense() if eb.dense_baseline else {}
  searched = eb_run.search()
  tickets = eb_run.ticket(searched)
  scratch = eb_run.scratch(searched) if eb.scratch_baseline else {}
  imp = eb_run.imp() if eb.imp_levels else {}
  rows = []
  for seed in eb_run.seeds:
    search_row = {k: v for k, v in searched[seed][0].items() if k != "history"}
    mine = [search_row, tickets[seed], early_bird_report.total_row(search_row, tickets[seed])]
    mine += [r[seed] for r in (scratch, imp) if r]
    if dense:
      mine = [dense[seed]] + [early_bird_report.with_ratios(r, dense[seed], eb_run.ctx.metric)
                              for r in mine]
    rows += mine
  if eb_run.ctx.is_main:
    print(early_bird_report.write_reports(workdir, rows, eb_run.ctx.metric, kind=eb.kind))
    print(f"samples and tables in {os.path.abspath(workdir)}")
  eb_run.ctx.writer.close()
  return rows

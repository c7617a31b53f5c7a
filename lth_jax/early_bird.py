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
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lth_jax import channels
from lth_jax import checkpointing
from lth_jax import early_bird_detection as detection
from lth_jax import early_bird_report
from lth_jax import evaluation
from lth_jax import flops
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import parallel
from lth_jax import pruning
from lth_jax import report
from lth_jax import steps as steps_lib
from lth_jax import training

PyTree = Any
KINDS = ("structured", "unstructured")


def part_sparsity(early_bird: ml_collections.ConfigDict, parts) -> float | dict[str, float]:
  """The target of the search: ``early_bird.sparsity``, or per part when
  ``early_bird.part_sparsity`` (``'generator=0.6,discriminator=0.85'``) names parts (the parts
  it does not name get ``early_bird.sparsity``).

  Raises:
    ValueError: a malformed entry, an unknown or unpruned part, or a fraction outside (0, 1).
  """
  text = early_bird.part_sparsity.strip()
  if not text:
    return float(early_bird.sparsity)
  out = {part: float(early_bird.sparsity) for part in parts}
  for entry in text.split(","):
    name, sep, value = entry.partition("=")
    name = name.strip()
    try:
      fraction = float(value)
    except ValueError:
      fraction = None
    if not sep or fraction is None:
      raise ValueError(f"early_bird.part_sparsity entry {entry!r} is not 'part=fraction' (e.g. "
                       f"'generator=0.6,discriminator=0.85')")
    if name not in out:
      raise ValueError(f"early_bird.part_sparsity names {name!r}, which is not a pruned part "
                       f"(pruned parts: {sorted(parts)})")
    if not 0.0 < fraction < 1.0:
      raise ValueError(f"early_bird.part_sparsity of {name!r} must be in (0, 1), got {fraction}")
    out[name] = fraction
  return out


# ------------------------------------------------------------------------------------ runs
def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the ``early_bird`` section before any training.

  Raises:
    ValueError: one message naming the bad field and the valid values.
  """
  eb = config.early_bird
  if eb.kind not in KINDS:
    raise ValueError(f"unknown early_bird.kind {eb.kind!r}; expected one of {KINDS}")
  if not 0.0 < eb.sparsity < 1.0:
    raise ValueError(f"early_bird.sparsity must be in (0, 1), got {eb.sparsity}")
  if eb.interval < 1:
    raise ValueError(f"early_bird.interval must be >= 1, got {eb.interval}")
  detection.Detector(window=eb.window, epsilon=eb.epsilon)
  if eb.bn_l1 < 0:
    raise ValueError(f"early_bird.bn_l1 must be >= 0, got {eb.bn_l1}")
  if eb.ticket_steps < 0 or eb.max_search_steps < 0:
    raise ValueError(f"early_bird.ticket_steps and early_bird.max_search_steps must be >= 0, got "
                     f"{eb.ticket_steps} and {eb.max_search_steps}")
  if eb.max_search_steps > config.train.steps:
    raise ValueError(f"early_bird.max_search_steps={eb.max_search_steps} exceeds train.steps="
                     f"{config.train.steps}")
  if config.prune.scope not in pruning.SCOPES:
    raise ValueError(f"unknown prune.scope {config.prune.scope!r}; expected {pruning.SCOPES}")
  if not any(config.prune.parts.values()):
    raise ValueError(f"prune.parts switches every part off: {dict(config.prune.parts)}")
  part_sparsity(eb, [p for p, on in config.prune.parts.items() if on])
  if eb.imp_levels < 0:
    raise ValueError(f"early_bird.imp_levels must be >= 0, got {eb.imp_levels}")


def _copy(tree: PyTree) -> PyTree:
  """New containers and arrays (the input stays valid when the copy is donated or edited)."""
  return jax.tree.map(jnp.copy, tree)


def _seed_keys(seed: int) -> dict[str, jax.Array]:
  init_key, run_key = jax.random.split(jax.random.key(seed))
  return {"init": init_key, "run": run_key, "scratch": jax.random.fold_in(init_key, 1)}


class _Run:
  """Host-side bookkeeping shared by the stages of one early-bird run over ``tickets.seeds``.

  Every stage trains its seeds as groups of same-architecture, same-step tickets through
  :class:`lth_jax.parallel.TicketRunner` (one program over the mesh); a ticket's seconds are its
  group's wall-clock (CPU time) divided by the group size. Stage outputs live in
  ``<stage>_seed<s>/``; a stage skips the seeds whose outputs exist.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate(config)
    self.config = config
    self.eb = config.early_bird
    self.workdir = workdir
    training.prepare_workdir(workdir, config)
    self.family = training.family_from_config(config)
    self.train_split, self.test_split = training.load_data(config)
    self.seeds = tuple(int(s) for s in config.tickets.seeds)
    self.keys = {s: _seed_keys(s) for s in self.seeds}
    self.theta_0 = {s: self.family.init(self.keys[s]["init"]) for s in self.seeds}
    self.pruned_parts = tuple(p for p in self.family.parts if config.prune.parts.get(p, False))
    self.is_main = jax.process_index() == 0
    self.multiprocess = jax.process_count() > 1
    self.mesh = parallel.make_mesh(data_parallel=config.tickets.data_parallel)
    self._runners: dict = {}
    self.writer = report.MetricWriter(workdir, enabled=self.is_main)
    self.evaluator = evaluation.Evaluator.from_config(config, self.train_split, self.test_split)
    self.metric = evaluation.primary_metric_key(config.family, self.evaluator.extractor.name)
    self.structured = self.eb.kind == "structured"
    self.groups = (channels.family_groups(self.family, self.theta_0[self.seeds[0]].params,
                                          self.pruned_parts) if self.structured else None)

  def path(self, stage: str, seed: int, *names: str) -> str:
    return os.path.join(self.workdir, f"{stage}_seed{seed}", *names)

  def dense_masks(self, family, params):
    return training.masks_from_config(self.config, family, params)

  def _runner(self, family: steps_lib.Family, key: str) -> parallel.TicketRunner:
    """One runner (and its compiled programs) per architecture ``key``."""
    if key not in self._runners:
      self._runners[key] = parallel.TicketRunner(
          family, mesh=self.mesh, execution=self.config.tickets.execution,
          steps_per_call=self.config.train.steps_per_call)
    return self._runners[key]

  def _train(self, family, key, seeds, states, masks, until_step) -> tuple[list, list[dict]]:
    """Trains one group to ``until_step``: (states, per-ticket timing columns)."""
    start = detection.clock()
    states = self._runner(family, key).train([_copy(s) for s in states], masks,
                                        self.train_split.images,
                                        [self.keys[s]["run"] for s in seeds],
                                        until_step=until_step)
    jax.block_until_ready(states)
    seconds, cpu_seconds = (x / len(seeds) for x in detection.elapsed(start))
    return states, [{"train_seconds": seconds, "train_cpu_seconds": cpu_seconds}] * len(seeds)

  def _write_json(self, path: str, value) -> None:
    if self.is_main:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
      os.replace(path + ".tmp", path)

  @staticmethod
  def _read_json(path: str):
    with open(path) as f:
      return json.load(f)

  def _save_tree(self, path: str, tree: PyTree) -> None:
    """Collective in a multi-process run (every process calls it; process 0 writes)."""
    checkpointing.save_tree(path, jax.device_get(tree) if self.multiprocess else tree,
                            overwrite=True)

  def _cost(self, family, masks=None) -> dict:
    """Analytic cost columns of a (possibly masked or physically smaller) family."""
    params = jax.eval_shape(family.init, jax.random.key(0)).params
    return {"params": flops.num_params(params, masks),
            "sample_flops": flops.sample(family, masks),
            "forward_flops": sum(flops.family_forward(family, masks).values()),
            "step_flops": flops.train_step(family, masks)}

  def _finish(self, family, seed: int, state, row: dict, grid: str) -> dict:
    """Evaluates (on every process: deterministic), writes the first seed's grid and scalars."""
    row.update(self.evaluator(family, state))
    if self.is_main:
      if seed == self.seeds[0]:
        self.evaluator.save_grid(family, state, os.path.join(self.workdir, grid))
      self.writer.write_scalars(int(state.step), {k: v for k, v in row.items()
                                                  if k in (self.metric, "train_seconds")},
                                run=row["run"], seed=seed)
    return row

  def _pending(self, stage: str, filename: str = "metrics.json") -> list[int]:
    return [s for s in self.seeds if not os.path.exists(self.path(stage, s, filename))]

  def _train_stage(self, stage: str, starts: dict[int, tuple], steps_of) -> dict[int, dict]:
    """Trains every pending seed's ``(family, state, masks, info, cost_masks)`` start for
    ``steps_of(seed, state)`` steps, grouped by architecture and starting step; returns and
    writes each seed's row (``<stage>_seed<s>/metrics.json``)."""
    groups: dict = collections.defaultdict(list)
    for seed, (_, state, _, info, _) in starts.items():
      groups[(info.get("widths", ""), int(state.step), steps_of(seed, state))].append(seed)
    for (widths, start_step, steps), seeds in groups.items():
      family = starts[seeds[0]][0]
      states, timings = self._train(family, widths, seeds, [starts[s][1] for s in seeds],
                                    [starts[s][2] for s in seeds], start_step + steps)
      for seed, state, timing in zip(seeds, states, timings):
        _, _, _, info, cost_masks = starts[seed]
        cost = self._cost(family, cost_masks)
        row = {"run": "eb_ticket" if stage == "ticket" else stage, "seed": seed,
               "steps": steps, "start_step": start_step, **info, **cost,
               "train_flops": steps * cost["step_flops"], **timing}
        row = self._finish(family, seed, state, row, f"samples_{stage}.png")
        self._write_json(self.path(stage, seed, "metrics.json"), row)
    parallel.barrier(f"early-bird-{stage}")
    return {s: self._read_json(self.path(stage, s, "metrics.json")) for s in self.seeds}

  # ------------------------------------------------------------------------------- stages
  def dense(self) -> dict[int, dict]:
    starts = {s: (self.family, self.theta_0[s], self.dense_masks(self.family,
                                                                  self.theta_0[s].params),
                  {}, None) for s in self._pending("dense")}
    return self._train_stage("dense", starts, lambda seed, state: self.config.train.steps)

  def _search_family(self):
    if not self.structured:
      return self.family
    return training.family_from_config(
        self.config, bn_l1={p: self.eb.bn_l1 for p in self.pruned_parts})

  def _mask_fn(self):
    scope, sparsity = self.config.prune.scope, part_sparsity(self.eb, self.pruned_parts)
    if self.structured:
      groups = self.groups
      return jax.jit(lambda s: channels.channel_masks(s.params, s.batch_stats, groups, sparsity,
                                             scope=scope))
    dense = self.dense_masks(self.family, self.theta_0[self.seeds[0]].params)
    return lambda s: detection.magnitude_masks(s.params, dense, sparsity, scope=scope)

  def _mask_like(self):
    if self.structured:
      return {g.name: np.ones(g.size, bool) for g in self.groups}
    return self.dense_masks(self.family, self.theta_0[self.seeds[0]].params)

  def search(self) -> dict[int, tuple[dict, PyTree, steps_lib.TrainState]]:
    """Runs (or loads) the search of every seed: ``{seed: (row, drawn mask, drawn state)}``."""
    pending = self._pending("search", "search.json")
    if pending:
      family = self._search_family()
      masks = {s: self.dense_masks(family, self.theta_0[s].params) for s in pending}

      def train_group(indices, states, until_step):
        seeds = [pending[i] for i in indices]
        return self._runner(family, "search").train(
            states, [masks[s] for s in seeds], self.train_split.images,
            [self.keys[s]["run"] for s in seeds], until_step=until_step)

      results = detection.search(train_group, [_copy(self.theta_0[s]) for s in pending],   # donated
                       mask_fn=self._mask_fn(),
                       detectors=[detection.Detector(window=self.eb.window, epsilon=self.eb.epsilon)
                                  for _ in pending],
                       interval=self.eb.interval,
                       max_steps=self.eb.max_search_steps or self.config.train.steps,
                       writer=self.writer, names=[str(s) for s in pending])
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
        if self.is_main:
          masks_lib.save(self.path("search", seed, "mask.npz"), result.mask, overwrite=True)
        self._save_tree(self.path("search", seed, "drawn_state"), result.state)
        self._write_json(self.path("search", seed, "search.json"), row)
      parallel.barrier("early-bird-search")
    like = jax.eval_shape(self.family.init, jax.random.key(0))
    return {s: (self._read_json(self.path("search", s, "search.json")),
                masks_lib.load(self.path("search", s, "mask.npz"), like=self._mask_like()),
                checkpointing.load_tree(self.path("search", s, "drawn_state"), like=like))
            for s in self.seeds}

  def _ticket_start(self, mask, source: steps_lib.TrainState):
    """(family, starting state, masks, description columns, masks for the FLOPs count)."""
    if self.structured:
      params, stats = channels.slice_channels(source.params, source.batch_stats, mask, self.groups)
      widths = channels.channel_widths(mask, self.groups)
      family = training.family_from_config(self.config, widths=widths)
      state = steps_lib.TrainState(
          source.step, params, stats,
          channels.slice_opt_state(self.family, source.opt_state, source.params, mask, self.groups))
      info = {"sparsity": channels.channel_sparsity(mask),
              "widths": " ".join(f"{p}={'x'.join(map(str, w))}" for p, w in widths.items())}
      return family, state, self.dense_masks(family, params), info, None
    state = steps_lib.TrainState(source.step, masks_lib.apply(source.params, mask),
                                 source.batch_stats,
                                 steps_lib.mask_opt_state(self.family, source.opt_state, mask))
    return self.family, state, mask, {"sparsity": float(masks_lib.sparsity(mask))}, mask

  def ticket(self, searched: dict) -> dict[int, dict]:
    starts = {s: self._ticket_start(searched[s][1],
                                    self.theta_0[s] if self.eb.rewind else searched[s][2])
              for s in self._pending("ticket")}
    return self._train_stage(
        "ticket", starts, lambda seed, state: self.eb.ticket_steps or max(
            self.config.train.steps - searched[seed][0]["eb_step"], 0))

  def scratch(self, searched: dict) -> dict[int, dict]:
    """The ticket's architecture (its widths, or its mask) from a new random init, trained for
    ``train.steps`` from step 0 with a fresh optimizer: does the search pick more than a size?"""
    starts = {}
    for seed in self._pending("scratch"):
      family, _, masks, info, cost_masks = self._ticket_start(searched[seed][1],
                                                              searched[seed][2])
      fresh = family.init(self.keys[seed]["scratch"])            # independent of θ₀
      if not self.structured:
        fresh = steps_lib.TrainState(fresh.step, masks_lib.apply(fresh.params, masks),
                                     fresh.batch_stats,
                                     steps_lib.mask_opt_state(family, fresh.opt_state, masks))
      starts[seed] = (family, fresh, masks, info, cost_masks)
    return self._train_stage("scratch", starts, lambda seed, state: self.config.train.steps)

  def imp(self) -> dict[int, dict]:
    """IMP (the ``lottery`` section, ticket branch only, every seed) for
    ``early_bird.imp_levels`` levels in ``imp/``: per seed, its training wall-clock and FLOPs
    summed over every level (masked kernels run dense, so each step costs a dense step) and its
    last ticket's metric. Seconds: each level's group wall-clock divided by the seeds."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.lottery.update(levels=self.eb.imp_levels, branches=("ticket",))
    # IMP does not depend on the early-bird settings: without them, runs of other early-bird
    # settings can share (copy) one finished ``imp/``.
    config.early_bird = ml_collections.ConfigDict()
    rows = lottery.run(config, os.path.join(self.workdir, "imp"))
    rewind = lottery.validate(config, num_train=len(self.train_split.labels))
    steps = config.train.steps + config.lottery.levels * (config.train.steps - rewind)
    out = {}
    for seed in self.seeds:
      mine = [r for r in rows if r["seed"] == seed]
      last = max(mine, key=lambda r: r["level"])
      out[seed] = {"run": "imp", "seed": seed, "steps": steps, "levels": config.lottery.levels,
                   "sparsity": last["sparsity"],
                   "train_flops": steps * flops.train_step(self.family),
                   "train_seconds": sum(r["group_train_seconds"] for r in mine) / len(self.seeds),
                   self.metric: last[self.metric]}
    return out


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
      mine = [dense[seed]] + [early_bird_report.with_ratios(r, dense[seed], eb_run.metric)
                              for r in mine]
    rows += mine
  if eb_run.is_main:
    print(early_bird_report.write_reports(workdir, rows, eb_run.metric, kind=eb.kind))
    print(f"samples and tables in {os.path.abspath(workdir)}")
  eb_run.writer.close()
  return rows

"""Early-bird tickets (You et al., ICLR 2020): draw the ticket early in dense training.

Detection: every ``interval`` steps of dense training, compute the mask the target sparsity would
give now; keep the last ``window`` masks (:class:`Detector`); the ticket is drawn when every
normalised Hamming distance (:func:`lth_jax.masks.distance`) of the older masks to the newest is
``<= epsilon``. :func:`search` runs the dense training in chunks of ``interval`` steps through the
jitted multi-step of :mod:`lth_jax.training` until the ticket is drawn or ``max_steps``.

Two kinds of ticket:

* ``unstructured``: magnitude masks at the target weight sparsity (one global ``|w|`` threshold,
  or per layer with ``prune.scope='layerwise'``); the ticket trains with its mask (no speed-up).
* ``structured`` (network slimming, Liu et al. 2017): the search adds ``bn_l1 * sum |γ|`` over the
  BatchNorm scales of the pruned parts to the training losses; channels are scored by ``|γ|``
  with ONE threshold over all BatchNorm layers of the pruned parts (:func:`channel_masks`; every
  layer keeps >= 1 channel), and the surviving channels are copied into a *physically smaller*
  model (:func:`slice_channels`, :func:`channel_widths`) that trains and samples on its own.

Channel groups (:func:`channel_groups`) follow the DCGAN layout of every family: a generator /
decoder hidden layer ``convt{i}`` feeds ``bn{i}``; a discriminator / encoder body layer
``conv{i}`` feeds ``bn{i}`` for ``i >= 1``. Decision for the first body conv ``conv0``, which has
no BatchNorm (so no γ): it keeps the same fraction of channels as the next BatchNorm layer
(``bn1``), ranked by how much each channel feeds that layer's kept, scaled outputs,
``sum_{h,w,o} |W_conv1[h, w, c, o]| * keep_o * |γ1_o| / sqrt(var1_o + eps)``. Keeping ``conv0``
dense instead would leave ``conv1``'s input full width and cap the discriminator's FLOPs cut near
80% at a 0.7 channel fraction. Output layers (the image conv, the D/encoder head) keep their
outputs; ``prune.exclude`` (kernel exclusions of the unstructured search) does not apply.

A pruned channel in the big model is exactly a removed channel in the small one
(:func:`mask_channels`): the producer's kernel slice and bias and the channel's BatchNorm γ *and*
β are zero, so the post-BN (or post-bias) activation is exactly 0 in eval and train mode, and
ReLU / LeakyReLU keep it 0.

``run(config, workdir)`` trains the dense baseline, runs the search, trains the ticket (from the
drawn weights and optimizer state, sliced for a smaller model (:func:`slice_opt_state`), masked
otherwise; or rewound to the initial weights with ``early_bird.rewind``) to the same total step
count, evaluates both and reports analytic FLOPs (:mod:`lth_jax.flops`) and measured wall-clock;
optionally also the ticket's architecture trained from a new init (``early_bird.scratch_baseline``:
does the search find more than a size?) and IMP to a given level (``early_bird.imp_levels``). Every
stage runs all ``tickets.seeds`` as groups of same-shaped tickets through
:class:`lth_jax.parallel.TicketRunner` (sharded over the mesh's devices and processes), and the
reports add mean ± std over seeds. Each stage writes its outputs per seed and skips the seeds whose
outputs exist. ``early_bird.part_sparsity`` sets a channel fraction per network (e.g. a DCGAN's
discriminator costs 3 forward passes per step and can be pruned harder).
"""

from __future__ import annotations

import collections
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from lth_jax import checkpointing
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
BN_EPSILON = 1e-5   # the models' BatchNorm epsilon (lth_jax.models.dcgan)
_ROUNDING = 1e-6    # masks.distance is float32: 2/20 -> 0.10000000149 must still count as <= 0.1


# ------------------------------------------------------------------------------- detection
class Detector:
  """Host-side ring of the last ``window`` masks; draws the ticket when they have converged.

  Args:
    window: masks compared (the newest and ``window - 1`` older ones); >= 2.
    epsilon: the ticket is drawn when every normalised Hamming distance of an older mask in the
      window to the newest is ``<= epsilon``.

  Attributes:
    history: one dict per :meth:`update`: ``step`` and ``max_distance`` (None until the window
      is full).
    drawn_step, drawn_mask: the step and mask of the first draw (None before).
  """

  def __init__(self, *, window: int = 5, epsilon: float = 0.1):
    if window < 2:
      raise ValueError(f"early_bird.window must be >= 2 (masks to compare), got {window}")
    if not 0.0 <= epsilon <= 1.0:
      raise ValueError(f"early_bird.epsilon must be in [0, 1], got {epsilon}")
    self.window = window
    self.epsilon = epsilon
    self._ring: collections.deque = collections.deque(maxlen=window)
    self.history: list[dict] = []
    self.drawn_step: int | None = None
    self.drawn_mask: PyTree = None

  @property
  def drawn(self) -> bool:
    return self.drawn_step is not None

  def update(self, step: int, mask: PyTree) -> bool:
    """Adds the mask of ``step``; returns True once the ticket has been drawn (now or before)."""
    self._ring.append(mask)
    distance = None
    if len(self._ring) == self.window:
      newest = self._ring[-1]
      distance = max(float(masks_lib.distance(old, newest)) for old in list(self._ring)[:-1])
      if distance <= self.epsilon + _ROUNDING and not self.drawn:
        self.drawn_step, self.drawn_mask = int(step), newest
    self.history.append({"step": int(step), "max_distance": distance})
    return self.drawn


class SearchResult(NamedTuple):
  state: steps_lib.TrainState   # the search's dense state at ``step``
  step: int                     # the step the ticket was drawn (or the last step checked)
  drawn: bool                   # False: max_steps reached first; ``mask`` is the newest mask
  mask: PyTree
  history: list[dict]
  seconds: float                # this ticket's share of the search's wall-clock (compilation
  cpu_seconds: float            # included) and of the process's CPU time (all threads)


TrainGroup = Callable[[list[int], list[steps_lib.TrainState], int], list[steps_lib.TrainState]]


def search(train_group: TrainGroup, states: list[steps_lib.TrainState], *,
           mask_fn: Callable[..., PyTree], detectors: list[Detector], interval: int,
           max_steps: int, writer: report.MetricWriter | None = None,
           names: list[str] | None = None) -> list[SearchResult]:
  """Dense training of T tickets in chunks of ``interval`` steps until each one's ticket is drawn.

  The tickets not drawn yet train together (one group, e.g. through
  :class:`lth_jax.parallel.TicketRunner`); a ticket leaves the group at its draw. Each chunk's
  wall-clock and CPU time are split evenly over the tickets that trained in it.

  Args:
    train_group: ``(ticket indices, their states, until_step) -> trained states`` (the states
      may be donated).
    states: one starting state per ticket, all at the same step.
    mask_fn: ``TrainState -> mask tree`` (the mask the target sparsity would give now).
    detectors: one fresh :class:`Detector` per ticket.
    interval: steps between two masks.
    max_steps: absolute step at which the search stops without a draw.
    writer: optional; each window's maximum distance is written (``run=search``, ``ticket=name``).
    names: tags of the tickets for the writer and the log (default: their indices).
  """
  if interval < 1:
    raise ValueError(f"early_bird.interval must be >= 1, got {interval}")
  if len(states) != len(detectors) or not states:
    raise ValueError(f"search needs one detector per state, got {len(detectors)} for "
                     f"{len(states)}")
  names = names or [str(i) for i in range(len(states))]
  step = int(states[0].step)
  if step >= max_steps:
    raise ValueError(f"early-bird search has no step to run: the state is at step {step} and "
                     f"max_steps is {max_steps}")
  states = list(states)
  active = list(range(len(states)))
  masks: list = [None] * len(states)
  spent = np.zeros((len(states), 2))          # wall-clock, CPU seconds
  while active and step < max_steps:
    step = min(step + interval, max_steps)
    start = _clock()
    trained = train_group(active, [states[i] for i in active], step)
    jax.block_until_ready(trained)
    spent[active] += np.asarray(_elapsed(start)) / len(active)
    for i, state in zip(active, trained):
      states[i] = state
      masks[i] = jax.device_get(mask_fn(state))
      detectors[i].update(step, masks[i])
      distance = detectors[i].history[-1]["max_distance"]
      logging.info("early-bird check of ticket %s at step %d: max mask distance %s", names[i],
                   step, distance)
      if writer is not None and distance is not None:
        writer.write_scalars(step, {"mask_distance": distance}, run="search", ticket=names[i])
    active = [i for i in active if not detectors[i].drawn]
  results = []
  for i, detector in enumerate(detectors):
    drawn_step, mask = ((detector.drawn_step, detector.drawn_mask) if detector.drawn
                        else (step, masks[i]))
    results.append(SearchResult(states[i], drawn_step, detector.drawn, mask,
                                list(detector.history), *spent[i]))
  return results


def _clock() -> tuple[float, float]:
  """(wall-clock, process CPU time) in seconds; CPU time is less sensitive to other jobs' load."""
  return time.perf_counter(), time.process_time()


def _elapsed(start: tuple[float, float]) -> tuple[float, float]:
  wall, cpu = _clock()
  return wall - start[0], cpu - start[1]


# --------------------------------------------------------------------- unstructured tickets
def magnitude_masks(params: PyTree, masks: PyTree, sparsity, *,
                    scope: str = "global") -> PyTree:
  """The mask keeping the largest ``|w|`` of the prunable leaves at ``sparsity`` (pruned share).

  ``sparsity``: one fraction, or ``{part: fraction}`` (each top-level part pruned on its own;
  parts not named keep their masks).
  """
  scores = jax.tree.map(lambda m, p: None if m is None else jnp.abs(p), masks, params,
                        is_leaf=lambda x: x is None)
  if not isinstance(sparsity, Mapping):
    return pruning.to_sparsity(scores, masks, sparsity, scope=scope)
  return {part: (pruning.to_sparsity(scores[part], masks[part], sparsity[part], scope=scope)
                 if part in sparsity else masks[part]) for part in masks}


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


# ----------------------------------------------------------------------- structured tickets
class ChannelGroup(NamedTuple):
  """The output channels of one hidden layer, as ``/``-joined paths into the params tree."""
  name: str            # the producing layer, e.g. 'generator/convt1' (also the mask's key)
  bn: str | None       # its BatchNorm, e.g. 'generator/bn1' (None: D/encoder body conv0)
  consumer: str        # the layer reading the channels, e.g. 'generator/convt2'
  size: int


def _get(tree: PyTree, path: str):
  node = tree
  for key in path.split("/"):
    node = node[key]
  return node


def _set(tree: dict, path: str, value) -> None:
  *parents, last = path.split("/")
  node = tree
  for key in parents:
    node = node[key]
  node[last] = value


def _copy(tree: PyTree) -> PyTree:
  """New containers and arrays (the input stays valid when the copy is donated or edited)."""
  return jax.tree.map(jnp.copy, tree)


def channel_groups(params: PyTree, parts) -> list[ChannelGroup]:
  """The prunable channel groups of ``parts`` (layer order within each part).

  A generator / decoder (``convt0..convtN``, ``bn0..bn{N-1}``) has one group per hidden layer;
  a discriminator / encoder (``body/conv0..``, ``body/bn1..``, ``head``) one per body conv.

  Raises:
    ValueError: a part is missing or has neither layout.
  """
  groups = []
  for part in parts:
    if part not in params:
      raise ValueError(f"part {part!r} is not in the params (parts: {sorted(params)})")
    sub = params[part]
    if "convt0" in sub:
      n = sum(1 for k in sub if k.startswith("bn"))
      for i in range(n):
        groups.append(ChannelGroup(f"{part}/convt{i}", f"{part}/bn{i}", f"{part}/convt{i + 1}",
                                   int(sub[f"convt{i}"]["kernel"].shape[-1])))
    elif "body" in sub and "head" in sub:
      body = sub["body"]
      n = sum(1 for k in body if k.startswith("conv"))
      for i in range(n):
        consumer = f"{part}/body/conv{i + 1}" if i + 1 < n else f"{part}/head"
        bn = f"{part}/body/bn{i}" if f"bn{i}" in body else None
        groups.append(ChannelGroup(f"{part}/body/conv{i}", bn, consumer,
                                   int(body[f"conv{i}"]["kernel"].shape[-1])))
    else:
      raise ValueError(f"part {part!r} has neither the generator layout (convt0, bn0, ...) nor "
                       f"the discriminator layout (body, head); its keys are {sorted(sub)}")
  return groups


def _part(group: ChannelGroup) -> str:
  return group.name.split("/", 1)[0]


def _top_k(score: jax.Array, k) -> jax.Array:
  """Bool mask of the ``k`` highest scores (ties: the lower index wins); ``k`` may be traced."""
  order = jnp.argsort(-score, stable=True)
  rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
  return rank < k


def channel_masks(params: PyTree, batch_stats: PyTree, groups: list[ChannelGroup],
                  sparsity, *, scope: str = "global") -> dict[str, jax.Array]:
  """Network-slimming channel masks: ``{group name: bool [channels]}`` (True = kept).

  BatchNorm groups: the ``round(sparsity * n)`` smallest ``|γ|`` of all their ``n`` channels are
  pruned with one global threshold (``scope='layerwise'``: per layer; ``sparsity`` a mapping
  ``{part: fraction}``: one threshold per part); a layer left empty keeps its largest ``|γ|``.
  A group without BatchNorm keeps the kept fraction of the BatchNorm group it feeds, ranked
  by its BN-scaled outgoing weights (module docstring); with no such group it is
  kept whole. Pure jnp (jit-able; ``sparsity`` may be traced).
  """
  bn_groups = [g for g in groups if g.bn is not None]
  if not bn_groups:
    raise ValueError("no BatchNorm channels to score: structured early-bird needs BatchNorm layers "
                     "in the pruned parts")
  scores = {g.name: jnp.abs(_get(params, g.bn + "/scale")) for g in bn_groups}
  if isinstance(sparsity, Mapping):
    missing = sorted({_part(g) for g in bn_groups} - set(sparsity))
    if missing:
      raise ValueError(f"no sparsity for the pruned part(s) {missing} in {dict(sparsity)}")
    pools = [([g for g in bn_groups if _part(g) == part], fraction)
             for part, fraction in sparsity.items()]
  else:
    pools = [(bn_groups, sparsity)]
  kept = {}
  for pool, fraction in pools:
    kept.update(pruning.to_sparsity({g.name: scores[g.name] for g in pool},
                                    {g.name: jnp.ones(g.size, bool) for g in pool},
                                    fraction, scope=scope))
  out = {}
  for g in groups:
    if g.bn is not None:
      keep, score = kept[g.name], scores[g.name]
      best = jnp.arange(g.size) == jnp.argmax(score)
      out[g.name] = keep | (best & ~jnp.any(keep))
  by_name = {g.name: g for g in groups}
  for g in groups:
    if g.bn is not None:
      continue
    nxt = by_name.get(g.consumer)
    if nxt is None or nxt.bn is None:
      out[g.name] = jnp.ones(g.size, bool)
      continue
    gain = (out[nxt.name] * jnp.abs(_get(params, nxt.bn + "/scale"))
            * jax.lax.rsqrt(_get(batch_stats, nxt.bn + "/var") + BN_EPSILON))
    score = jnp.einsum("hwco,o->c", jnp.abs(_get(params, g.consumer + "/kernel")), gain)
    k = jnp.maximum(1, jnp.round(jnp.mean(out[nxt.name]) * g.size)).astype(jnp.int32)
    out[g.name] = _top_k(score, k)
  return {g.name: out[g.name] for g in groups}


def mask_channels(params: PyTree, cmasks: dict, groups: list[ChannelGroup]) -> PyTree:
  """The big model with pruned channels switched off: producer kernel slice, bias, γ and β = 0."""
  out = _copy(params)
  for g in groups:
    keep = jnp.asarray(cmasks[g.name])
    for leaf in ("kernel", "bias"):
      producer = _get(out, g.name)
      if leaf in producer:
        _set(out, f"{g.name}/{leaf}", jnp.where(keep, producer[leaf], 0.0))
    if g.bn is not None:
      for leaf in ("scale", "bias"):
        _set(out, f"{g.bn}/{leaf}", jnp.where(keep, _get(out, f"{g.bn}/{leaf}"), 0.0))
  return out


def _channel_takes(cmasks: dict, groups: list[ChannelGroup]) -> dict[str, list]:
  """``{leaf path: [(axis, kept indices), ...]}``: what the smaller model keeps of each leaf.

  The producer's kernel keeps its output axis' kept channels (and its bias), the consumer's kernel
  its input axis', the BatchNorm's scale, bias, mean and var theirs. Paths name params and
  ``batch_stats`` leaves alike.
  """
  takes: dict[str, list] = {}
  for g in groups:
    idx = np.flatnonzero(np.asarray(cmasks[g.name]))
    if idx.size == 0:
      raise ValueError(f"channel mask of {g.name!r} keeps no channel; every layer needs >= 1")
    takes.setdefault(f"{g.name}/kernel", []).append((-1, idx))
    takes.setdefault(f"{g.name}/bias", []).append((0, idx))
    takes.setdefault(f"{g.consumer}/kernel", []).append((-2, idx))
    if g.bn is not None:
      for leaf in ("scale", "bias", "mean", "var"):
        takes.setdefault(f"{g.bn}/{leaf}", []).append((0, idx))
  return takes


def _slice_leaf(leaf: jax.Array, takes) -> jax.Array:
  for axis, idx in takes:
    leaf = jnp.take(leaf, idx, axis=axis)
  return leaf


def _slice_tree(tree: PyTree, takes: dict[str, list]) -> PyTree:
  return jax.tree_util.tree_map_with_path(
      lambda p, x: _slice_leaf(x, takes.get(masks_lib.path_str(p), ())), tree)


def slice_channels(params: PyTree, batch_stats: PyTree, cmasks: dict,
                   groups: list[ChannelGroup]) -> tuple[PyTree, PyTree]:
  """Copies the kept channels into the params and BatchNorm statistics of the smaller model.

  Host-side (the kept indices are concrete). Build the matching family with
  ``widths=channel_widths(...)``.

  Returns:
    ``(params, batch_stats)`` of the small model.
  """
  takes = _channel_takes(cmasks, groups)
  return _slice_tree(params, takes), _slice_tree(batch_stats, takes)


def slice_opt_state(family: steps_lib.Family, opt_state: PyTree, params: PyTree, cmasks: dict,
                    groups: list[ChannelGroup]) -> PyTree:
  """The big model's optimizer state for the smaller model: every per-parameter tree in it
  (Adam's moments, momentum, ...) sliced like :func:`slice_channels` slices ``params`` (the big
  model's); step counts are kept, so the ticket continues the optimizer's trajectory."""
  takes = _channel_takes(cmasks, groups)
  paths = jax.tree_util.tree_map_with_path(lambda p, _: masks_lib.path_str(p), params)
  return steps_lib.map_opt_params(family, opt_state,
                                  lambda x, path: _slice_leaf(x, takes.get(path, ())), paths)


def channel_widths(cmasks: dict, groups: list[ChannelGroup]) -> dict[str, tuple[int, ...]]:
  """``{part: hidden widths in layer order}`` for ``steps.make_family(widths=...)``."""
  widths: dict[str, list[int]] = {}
  for g in groups:
    widths.setdefault(_part(g), []).append(int(np.sum(np.asarray(cmasks[g.name]))))
  return {part: tuple(w) for part, w in widths.items()}


def channel_sparsity(cmasks: dict) -> float:
  """Fraction of the hidden channels of the pruned parts that are pruned."""
  leaves = [np.asarray(m) for m in cmasks.values()]
  return 1.0 - sum(int(m.sum()) for m in leaves) / sum(m.size for m in leaves)


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
  Detector(window=eb.window, epsilon=eb.epsilon)
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
    self.groups = (channel_groups(self.theta_0[self.seeds[0]].params, self.pruned_parts)
                   if self.structured else None)

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
    start = _clock()
    states = self._runner(family, key).train([_copy(s) for s in states], masks,
                                        self.train_split.images,
                                        [self.keys[s]["run"] for s in seeds],
                                        until_step=until_step)
    jax.block_until_ready(states)
    seconds, cpu_seconds = (x / len(seeds) for x in _elapsed(start))
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
      return jax.jit(lambda s: channel_masks(s.params, s.batch_stats, groups, sparsity,
                                             scope=scope))
    dense = self.dense_masks(self.family, self.theta_0[self.seeds[0]].params)
    return lambda s: magnitude_masks(s.params, dense, sparsity, scope=scope)

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

      results = search(train_group, [_copy(self.theta_0[s]) for s in pending],   # donated
                       mask_fn=self._mask_fn(),
                       detectors=[Detector(window=self.eb.window, epsilon=self.eb.epsilon)
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
      params, stats = slice_channels(source.params, source.batch_stats, mask, self.groups)
      widths = channel_widths(mask, self.groups)
      family = training.family_from_config(self.config, widths=widths)
      state = steps_lib.TrainState(
          source.step, params, stats,
          slice_opt_state(self.family, source.opt_state, source.params, mask, self.groups))
      info = {"sparsity": channel_sparsity(mask),
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


def _total_row(search_row: dict, ticket_row: dict) -> dict:
  row = {"run": "eb_total", "seed": search_row["seed"],
         "steps": search_row["steps"] + ticket_row["steps"],
         "eb_step": search_row["eb_step"], "sparsity": ticket_row["sparsity"],
         "params": ticket_row["params"], "sample_flops": ticket_row["sample_flops"],
         "train_flops": search_row["train_flops"] + ticket_row["train_flops"],
         "train_seconds": search_row["train_seconds"] + ticket_row["train_seconds"],
         "train_cpu_seconds": (search_row["train_cpu_seconds"]
                               + ticket_row["train_cpu_seconds"])}
  for key, value in ticket_row.items():
    if key not in row and key not in ("run", "start_step", "widths", "forward_flops",
                                      "step_flops"):
      row[key] = value
  return row


_RATIO_OF = {"train_flops": "flops_vs_dense", "train_seconds": "seconds_vs_dense",
             "train_cpu_seconds": "cpu_seconds_vs_dense", "metric": "metric_vs_dense"}
RATIOS = tuple(_RATIO_OF.values())


def _with_ratios(row: dict, dense_row: dict, metric: str) -> dict:
  """``row`` plus its training FLOPs, seconds, CPU seconds and metric as ratios to dense's."""
  row = dict(row)
  for key, ratio in _RATIO_OF.items():
    key = metric if key == "metric" else key
    if key in row:
      row[ratio] = row[key] / dense_row[key]
  return row


def write_reports(workdir: str, rows: list[dict], metric: str, *, kind: str) -> str:
  """``results.csv`` (every seed's rows) and ``summary.md`` (the rows, their mean ± std over
  seeds when there are several, and the ratios in words); returns the summary."""
  report.write_csv(rows, os.path.join(workdir, "results.csv"))
  columns = ["run", "seed", "steps", "sparsity", "widths", "params", "sample_flops",
             "step_flops", "train_flops", "train_seconds", "train_cpu_seconds", metric,
             *RATIOS]
  values = ["steps", "eb_step", "sparsity", "train_flops", "train_seconds", "train_cpu_seconds",
            metric, *RATIOS]
  mean = {r["run"]: r for r in report.aggregate(
      [{k: v for k, v in r.items() if k != "widths"} for r in rows],
      metrics=[v for v in values if any(v in r for r in rows)], by="run", over="seed")}
  get = lambda run, key: mean[run][key + "_mean"]
  searches = [r for r in rows if r["run"] == "eb_search"]
  drawn = [r["eb_step"] for r in searches if r["drawn"]]
  missed = [r["seed"] for r in searches if not r["drawn"]]
  lines = [f"# Early-bird ticket ({kind}): {os.path.basename(os.path.abspath(workdir))}", "",
           f"Ticket drawn at step {', '.join(map(str, drawn)) or '-'}"
           + (f"; NOT drawn for seed(s) {missed} (newest mask used)" if missed else "")
           + "; FLOPs per sample are forward passes of the sampling network (G / decoder); "
           "train FLOPs use the 3x-forward convention of `lth_jax.flops`; seconds are measured "
           "wall-clock, CPU seconds the process's CPU time (compilation included, evaluation "
           "excluded; a group of tickets trained together shares its time evenly). Metric: "
           f"`{metric}` (lower is better).", "",
           report.markdown_table(rows, [c for c in columns if any(c in r for r in rows)],
                                 floatfmt=".4g"), ""]
  if len({r["seed"] for r in rows}) > 1:
    stats = [c for v in values for c in (v + "_mean", v + "_std")
             if any(c in r for r in mean.values())]
    lines += ["Mean ± std over seeds (n = runs per row):", "",
              report.markdown_table(list(mean.values()), ["run", "n", *stats], floatfmt=".4g"),
              ""]
  if "flops_vs_dense_mean" in mean.get("eb_total", {}):
    lines += [f"Search + ticket vs dense training: train FLOPs "
              f"x{get('eb_total', 'flops_vs_dense'):.3f} "
              f"({100 * (1 - get('eb_total', 'flops_vs_dense')):.1f}% fewer), wall-clock "
              f"x{get('eb_total', 'seconds_vs_dense'):.3f} (CPU time "
              f"x{get('eb_total', 'cpu_seconds_vs_dense'):.3f}), {metric} "
              f"x{get('eb_total', 'metric_vs_dense'):.3f}.", ""]
  if "scratch" in mean and metric + "_mean" in mean["scratch"]:
    lines += [f"The ticket's architecture from a new init, {get('scratch', 'steps'):.0f} steps: "
              f"{metric} {get('scratch', metric):.4g} (early-bird ticket "
              f"{get('eb_total', metric):.4g}).", ""]
  if "imp" in mean and metric + "_mean" in mean["imp"]:
    levels = next(r["levels"] for r in rows if r["run"] == "imp")
    lines += [f"IMP to level {levels}, sparsity {get('imp', 'sparsity'):.3f}: "
              f"{get('imp', 'train_seconds'):.4g} s of training "
              f"({get('imp', 'train_seconds') / get('eb_total', 'train_seconds'):.2f}x the "
              f"early-bird search + ticket), {get('imp', 'train_flops'):.4g} training FLOPs, "
              f"{metric} {get('imp', metric):.4g}.", ""]
  summary = "\n".join(lines)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary)
  return summary


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
    mine = [search_row, tickets[seed], _total_row(search_row, tickets[seed])]
    mine += [r[seed] for r in (scratch, imp) if r]
    if dense:
      mine = [dense[seed]] + [_with_ratios(r, dense[seed], eb_run.metric) for r in mine]
    rows += mine
  if eb_run.is_main:
    print(write_reports(workdir, rows, eb_run.metric, kind=config.early_bird.kind))
    print(f"samples and tables in {os.path.abspath(workdir)}")
  eb_run.writer.close()
  return rows

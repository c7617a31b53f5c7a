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
drawn weights, or rewound to the initial weights with ``early_bird.rewind``; a fresh optimizer
for a sliced model, the masked optimizer state otherwise) to the same total step count, evaluates
both and reports analytic FLOPs (:mod:`lth_jax.flops`) and measured wall-clock. Each stage writes
its outputs and skips itself when they exist.
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
  seconds: float                # wall-clock of the search (compilation included)
  cpu_seconds: float            # CPU time of this process (all threads) during the search


def search(family: steps_lib.Family, state: steps_lib.TrainState, masks: PyTree,
           images: jax.Array, *, run_key: jax.Array, mask_fn: Callable[..., PyTree],
           detector: Detector, interval: int, max_steps: int, steps_per_call: int,
           writer: report.MetricWriter | None = None) -> SearchResult:
  """Dense training in chunks of ``interval`` steps until the detector draws the ticket.

  Args:
    family, state, masks, images, run_key, steps_per_call: as :func:`lth_jax.training.train`
      (``state``'s buffers are donated to the train step: pass a copy to keep them).
    mask_fn: ``TrainState -> mask tree`` (the mask the target sparsity would give now).
    detector: a fresh :class:`Detector`.
    interval: steps between two masks.
    max_steps: absolute step at which the search stops without a draw.
    writer: optional; the window's maximum distance is written at each check (``run=search``).
  """
  if interval < 1:
    raise ValueError(f"early_bird.interval must be >= 1, got {interval}")
  start = _clock()
  step = int(state.step)
  mask = None
  while step < max_steps:
    step = min(step + interval, max_steps)
    state = training.train(family, state, masks, images, run_key=run_key, until_step=step,
                           steps_per_call=steps_per_call)
    mask = jax.device_get(mask_fn(state))
    drawn = detector.update(step, mask)
    distance = detector.history[-1]["max_distance"]
    logging.info("early-bird check at step %d: max mask distance %s", step, distance)
    if writer is not None and distance is not None:
      writer.write_scalars(step, {"mask_distance": distance}, run="search")
    if drawn:
      break
  if mask is None:
    raise ValueError(f"early-bird search has no step to run: the state is at step {step} and "
                     f"max_steps is {max_steps}")
  if detector.drawn:
    step, mask = detector.drawn_step, detector.drawn_mask
  jax.block_until_ready(state)
  return SearchResult(state, step, detector.drawn, mask, list(detector.history),
                      *_elapsed(start))


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
  ``{part: fraction}``: one threshold per part); a layer left empty keeps its largest ``|γ|``. A group without BatchNorm keeps the kept fraction of the BatchNorm group it
  feeds, ranked by its BN-scaled outgoing weights (module docstring); with no such group it is
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


def slice_channels(params: PyTree, batch_stats: PyTree, cmasks: dict,
                   groups: list[ChannelGroup]) -> tuple[PyTree, PyTree]:
  """Copies the kept channels into the params and BatchNorm statistics of the smaller model.

  The producer's kernel is sliced on its output axis (and its bias), the consumer's kernel on its
  input axis, the BatchNorm's scale, bias, mean and var on the channel axis. Host-side (the kept
  indices are concrete). Build the matching family with ``widths=channel_widths(...)``.

  Returns:
    ``(params, batch_stats)`` of the small model.
  """
  params, stats = _copy(params), _copy(batch_stats)
  for g in groups:
    idx = np.flatnonzero(np.asarray(cmasks[g.name]))
    if idx.size == 0:
      raise ValueError(f"channel mask of {g.name!r} keeps no channel; every layer needs >= 1")
    producer = _get(params, g.name)
    _set(params, f"{g.name}/kernel", jnp.take(producer["kernel"], idx, axis=-1))
    if "bias" in producer:
      _set(params, f"{g.name}/bias", jnp.take(producer["bias"], idx))
    _set(params, f"{g.consumer}/kernel",
         jnp.take(_get(params, g.consumer + "/kernel"), idx, axis=-2))
    if g.bn is not None:
      for leaf in ("scale", "bias"):
        _set(params, f"{g.bn}/{leaf}", jnp.take(_get(params, f"{g.bn}/{leaf}"), idx))
      for leaf in ("mean", "var"):
        _set(stats, f"{g.bn}/{leaf}", jnp.take(_get(stats, f"{g.bn}/{leaf}"), idx))
  return params, stats


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


def _timed_train(family, state, masks, images, *, run_key, until_step, steps_per_call,
                 writer, log_every, run):
  """:func:`training.train` on a copy of ``state`` (the train step donates its input), timed:
  returns the state and ``{'train_seconds': wall-clock, 'train_cpu_seconds': process CPU}``."""
  state = _copy(state)
  start = _clock()
  state = training.train(family, state, masks, images, run_key=run_key, until_step=until_step,
                         steps_per_call=steps_per_call, writer=writer, log_every=log_every,
                         tags={"run": run})
  jax.block_until_ready(state)
  seconds, cpu_seconds = _elapsed(start)
  return state, {"train_seconds": seconds, "train_cpu_seconds": cpu_seconds}


class _Run:
  """Host-side bookkeeping shared by the stages of one early-bird run."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    validate(config)
    self.config = config
    self.eb = config.early_bird
    self.workdir = workdir
    training.prepare_workdir(workdir, config)
    self.family = training.family_from_config(config)
    self.train_split, self.test_split = training.load_data(config)
    self.init_key, self.run_key = jax.random.split(jax.random.key(config.seed))
    self.theta_0 = self.family.init(self.init_key)
    self.pruned_parts = tuple(p for p in self.family.parts if config.prune.parts.get(p, False))
    self.is_main = jax.process_index() == 0
    self.writer = report.MetricWriter(workdir, enabled=self.is_main)
    self.evaluator = evaluation.Evaluator.from_config(config, self.train_split, self.test_split)
    self.metric = evaluation.primary_metric_key(config.family, self.evaluator.extractor.name)
    self.structured = self.eb.kind == "structured"
    self.groups = (channel_groups(self.theta_0.params, self.pruned_parts)
                   if self.structured else None)

  def path(self, *names: str) -> str:
    return os.path.join(self.workdir, *names)

  def dense_masks(self, family, params):
    return training.masks_from_config(self.config, family, params)

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

  def _cost(self, family, masks=None) -> dict:
    """Analytic cost columns of a (possibly masked or physically smaller) family."""
    params = jax.eval_shape(family.init, jax.random.key(0)).params
    return {"params": flops.num_params(params, masks),
            "sample_flops": flops.sample(family, masks),
            "forward_flops": sum(flops.family_forward(family, masks).values()),
            "step_flops": flops.train_step(family, masks)}

  def _finish(self, family, state, row: dict, grid: str) -> dict:
    row.update(self.evaluator(family, state))
    if self.is_main:
      self.evaluator.save_grid(family, state, self.path(grid))
      self.writer.write_scalars(int(state.step), {k: v for k, v in row.items()
                                                  if k in (self.metric, "train_seconds")},
                                run=row["run"])
    return row

  # ------------------------------------------------------------------------------- stages
  def dense(self) -> dict:
    done = self.path("dense", "metrics.json")
    if os.path.exists(done):
      return self._read_json(done)
    steps = self.config.train.steps
    state, timing = _timed_train(
        self.family, self.theta_0, self.dense_masks(self.family, self.theta_0.params),
        self.train_split.images, run_key=self.run_key, until_step=steps,
        steps_per_call=self.config.train.steps_per_call, writer=self.writer,
        log_every=self.config.train.log_every, run="dense")
    cost = self._cost(self.family)
    row = {"run": "dense", "steps": steps, **cost, "train_flops": steps * cost["step_flops"],
           **timing}
    row = self._finish(self.family, state, row, "samples_dense.png")
    self._write_json(done, row)
    return row

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
    dense = self.dense_masks(self.family, self.theta_0.params)
    return lambda s: magnitude_masks(s.params, dense, sparsity, scope=scope)

  def _mask_like(self):
    if self.structured:
      return {g.name: np.ones(g.size, bool) for g in self.groups}
    return self.dense_masks(self.family, self.theta_0.params)

  def search(self) -> tuple[dict, PyTree, steps_lib.TrainState]:
    """Runs (or loads) the search: (row, drawn mask, search state at the drawn step)."""
    done = self.path("search", "search.json")
    mask_path = self.path("search", "mask.npz")
    state_path = self.path("search", "drawn_state")
    if os.path.exists(done):
      like = jax.eval_shape(self.family.init, jax.random.key(0))
      return (self._read_json(done), masks_lib.load(mask_path, like=self._mask_like()),
              checkpointing.load_tree(state_path, like=like))
    family = self._search_family()
    max_steps = self.eb.max_search_steps or self.config.train.steps
    result = search(family, _copy(self.theta_0), self.dense_masks(family, self.theta_0.params),
                    self.train_split.images, run_key=self.run_key, mask_fn=self._mask_fn(),
                    detector=Detector(window=self.eb.window, epsilon=self.eb.epsilon),
                    interval=self.eb.interval, max_steps=max_steps,
                    steps_per_call=self.config.train.steps_per_call, writer=self.writer)
    if not result.drawn:
      logging.warning("no early-bird ticket drawn by step %d (max mask distance %s > %s); using "
                      "the newest mask", result.step, result.history[-1]["max_distance"],
                      self.eb.epsilon)
    cost = self._cost(self.family)
    row = {"run": "eb_search", "steps": result.step, "eb_step": result.step,
           "drawn": result.drawn, **cost, "train_flops": result.step * cost["step_flops"],
           "train_seconds": result.seconds, "train_cpu_seconds": result.cpu_seconds,
           "history": result.history}
    if self.is_main:
      masks_lib.save(mask_path, result.mask, overwrite=True)
      checkpointing.save_tree(state_path, result.state, overwrite=True)
    self._write_json(done, row)
    return row, result.mask, result.state

  def _ticket_start(self, mask, drawn: steps_lib.TrainState):
    """(family, starting state, masks, description columns, masks for the FLOPs count)."""
    source = self.theta_0 if self.eb.rewind else drawn
    if self.structured:
      params, stats = slice_channels(source.params, source.batch_stats, mask, self.groups)
      widths = channel_widths(mask, self.groups)
      family = training.family_from_config(self.config, widths=widths)
      state = steps_lib.TrainState(source.step, params, stats,
                                   steps_lib.fresh_opt_state(family, params))
      info = {"sparsity": channel_sparsity(mask),
              "widths": " ".join(f"{p}={'x'.join(map(str, w))}" for p, w in widths.items())}
      return family, state, self.dense_masks(family, params), info, None
    state = steps_lib.TrainState(source.step, masks_lib.apply(source.params, mask),
                                 source.batch_stats,
                                 steps_lib.mask_opt_state(self.family, source.opt_state, mask))
    return self.family, state, mask, {"sparsity": float(masks_lib.sparsity(mask))}, mask

  def ticket(self, search_row: dict, mask, drawn: steps_lib.TrainState) -> dict:
    done = self.path("ticket", "metrics.json")
    if os.path.exists(done):
      return self._read_json(done)
    family, state, masks, info, cost_masks = self._ticket_start(mask, drawn)
    steps = self.eb.ticket_steps or max(self.config.train.steps - search_row["eb_step"], 0)
    start = int(state.step)
    state, timing = _timed_train(
        family, state, masks, self.train_split.images, run_key=self.run_key,
        until_step=start + steps, steps_per_call=self.config.train.steps_per_call,
        writer=self.writer, log_every=self.config.train.log_every, run="eb_ticket")
    cost = self._cost(family, cost_masks)
    row = {"run": "eb_ticket", "steps": steps, "start_step": start, **info, **cost,
           "train_flops": steps * cost["step_flops"], **timing}
    row = self._finish(family, state, row, "samples_ticket.png")
    self._write_json(done, row)
    return row

  def scratch(self, search_row: dict, mask, drawn: steps_lib.TrainState) -> dict:
    """The ticket's architecture (its widths, or its mask) from a new random init, trained for
    ``train.steps`` from step 0 with a fresh optimizer: does the search pick more than a size?"""
    done = self.path("scratch", "metrics.json")
    if os.path.exists(done):
      return self._read_json(done)
    family, _, masks, info, cost_masks = self._ticket_start(mask, drawn)
    fresh = family.init(jax.random.fold_in(self.init_key, 1))   # independent of θ₀
    if not self.structured:
      fresh = steps_lib.TrainState(fresh.step, masks_lib.apply(fresh.params, masks),
                                   fresh.batch_stats,
                                   steps_lib.mask_opt_state(family, fresh.opt_state, masks))
    steps = self.config.train.steps
    state, timing = _timed_train(
        family, fresh, masks, self.train_split.images, run_key=self.run_key, until_step=steps,
        steps_per_call=self.config.train.steps_per_call, writer=self.writer,
        log_every=self.config.train.log_every, run="scratch")
    cost = self._cost(family, cost_masks)
    row = {"run": "scratch", "steps": steps, **info, **cost,
           "train_flops": steps * cost["step_flops"], **timing}
    row = self._finish(family, state, row, "samples_scratch.png")
    self._write_json(done, row)
    return row

  def imp(self) -> dict:
    """IMP (the ``lottery`` section, ticket branch only) for ``early_bird.imp_levels`` levels in
    ``imp/``: its training wall-clock and FLOPs summed over every level (masked kernels run dense,
    so each step costs a dense step), and its last ticket's metric."""
    done = self.path("imp", "metrics.json")
    if os.path.exists(done):
      return self._read_json(done)
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.lottery.update(levels=self.eb.imp_levels, branches=("ticket",))
    config.tickets.seeds = (config.seed,)
    rows = lottery.run(config, self.path("imp"))
    rewind = lottery.validate(config, num_train=len(self.train_split.labels))
    steps = config.train.steps + config.lottery.levels * (config.train.steps - rewind)
    last = max(rows, key=lambda r: r["level"])
    seconds = sum(r["group_train_seconds"] for r in rows)
    row = {"run": "imp", "steps": steps, "levels": config.lottery.levels,
           "sparsity": last["sparsity"], "train_flops": steps * flops.train_step(self.family),
           "train_seconds": seconds, self.metric: last[self.metric]}
    self._write_json(done, row)
    return row


def _total_row(search_row: dict, ticket_row: dict) -> dict:
  row = {"run": "eb_total", "steps": search_row["steps"] + ticket_row["steps"],
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


def _with_ratios(row: dict, dense_row: dict, metric: str) -> dict:
  """``row`` plus its training FLOPs, seconds, CPU seconds and metric as ratios to dense's."""
  row = dict(row)
  for key, ratio in (("train_flops", "flops_vs_dense"), ("train_seconds", "seconds_vs_dense"),
                     ("train_cpu_seconds", "cpu_seconds_vs_dense"), (metric, "metric_vs_dense")):
    if key in row:
      row[ratio] = row[key] / dense_row[key]
  return row


def write_reports(workdir: str, rows: list[dict], metric: str, *, kind: str) -> str:
  """``results.csv`` and ``summary.md`` (Markdown table and ratios); returns the summary."""
  report.write_csv(rows, os.path.join(workdir, "results.csv"))
  columns = ["run", "steps", "sparsity", "widths", "params", "sample_flops", "step_flops",
             "train_flops", "train_seconds", "train_cpu_seconds", metric, "flops_vs_dense",
             "seconds_vs_dense", "metric_vs_dense"]
  search_row = next(r for r in rows if r["run"] == "eb_search")
  total = next(r for r in rows if r["run"] == "eb_total")
  drawn = ("drawn at step" if search_row["drawn"] else "NOT drawn (newest mask used) at step")
  lines = [f"# Early-bird ticket ({kind}): {os.path.basename(os.path.abspath(workdir))}", "",
           f"Ticket {drawn} {search_row['eb_step']}; FLOPs per sample are forward passes of the "
           f"sampling network (G / decoder); train FLOPs use the 3x-forward convention of "
           f"`lth_jax.flops`; seconds are measured wall-clock, CPU seconds the process's CPU time "
           f"(compilation included, evaluation excluded). Metric: `{metric}` (lower is "
           f"better).", "",
           report.markdown_table(rows, [c for c in columns if any(c in r for r in rows)],
                                 floatfmt=".4g"), ""]
  if "flops_vs_dense" in total:
    lines += [f"Search + ticket vs dense training: train FLOPs x{total['flops_vs_dense']:.3f} "
              f"({100 * (1 - total['flops_vs_dense']):.1f}% fewer), wall-clock "
              f"x{total['seconds_vs_dense']:.3f} (CPU time x{total['cpu_seconds_vs_dense']:.3f}), "
              f"{metric} x{total['metric_vs_dense']:.3f}.", ""]
  by_run = {r["run"]: r for r in rows}
  if "scratch" in by_run and metric in total:
    scratch = by_run["scratch"]
    lines += [f"The ticket's architecture from a new init, {scratch['steps']} steps: {metric} "
              f"{scratch[metric]:.4g} (early-bird ticket {total[metric]:.4g}).", ""]
  if "imp" in by_run and metric in total:
    imp = by_run["imp"]
    lines += [f"IMP to level {imp['levels']}, sparsity {imp['sparsity']:.3f}: "
              f"{imp['train_seconds']:.4g} s of training ({imp['train_seconds'] / total['train_seconds']:.2f}x "
              f"the early-bird search + ticket), {imp['train_flops']:.4g} training FLOPs, {metric} "
              f"{imp[metric]:.4g}.", ""]
  summary = "\n".join(lines)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary)
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) dense baseline, search and ticket training, and writes the reports.

  Writes to ``workdir``: ``config.json``, ``dense/`` ``search/`` ``ticket/`` (each stage's JSON;
  the search's ``mask.npz`` and ``drawn_state``), ``samples_dense.png``,
  ``samples_ticket.png``, ``metrics.jsonl`` + TensorBoard, ``results.csv`` and ``summary.md``.

  With ``early_bird.scratch_baseline``, ``scratch/`` (and ``samples_scratch.png``); with
  ``early_bird.imp_levels``, ``imp/`` (a lottery search workdir).

  Returns:
    The result rows: ``dense`` (when ``early_bird.dense_baseline``), ``eb_search``,
    ``eb_ticket``, ``eb_total`` (search + ticket), then ``scratch`` and ``imp`` when asked for;
    with a dense row, every row after it carries its ratios to dense.
  """
  eb = config.early_bird
  eb_run = _Run(config, workdir)
  dense_row = eb_run.dense() if eb.dense_baseline else None
  search_row, mask, drawn = eb_run.search()
  ticket_row = eb_run.ticket(search_row, mask, drawn)
  extra = [eb_run.scratch(search_row, mask, drawn)] if eb.scratch_baseline else []
  extra += [eb_run.imp()] if eb.imp_levels else []
  search_row = {k: v for k, v in search_row.items() if k != "history"}
  rows = [search_row, ticket_row, _total_row(search_row, ticket_row), *extra]
  if dense_row:
    rows = [dense_row] + [_with_ratios(r, dense_row, eb_run.metric) for r in rows]
  if eb_run.is_main:
    print(write_reports(workdir, rows, eb_run.metric, kind=config.early_bird.kind))
    print(f"samples and tables in {os.path.abspath(workdir)}")
  eb_run.writer.close()
  return rows

"""Stability of tickets: linear mode connectivity (Frankle et al., 2020) after a lottery search.

``run(config, workdir, search_workdir)``: for every finished level L of the search (``level_LL/
done.json`` there) and every seed, a **copy** of that level's ticket (level 0: the dense run) is
trained from the same rewind point θ_k, with the same mask and optimizer rewinding as the search's
``ticket`` branch (:func:`branches.rewind`; level 0 continues θ_k as the dense run did), to the
same ``train.steps``, but on a **different data order**: its run key is
``fold_in(seed_keys(seed)['run'], COPY_STREAM)`` instead of ``seed_keys(seed)['run']`` (the run key
draws every step's batch, and the VAE/GAN noise). The copies go through the run machinery
(:meth:`runs.Context.run_stage`): in-stage checkpoints, resume after SIGKILL, finished runs skipped.

Then the primary metric (:func:`evaluation.primary_metric_key`: ``recon_mse`` for the AE, FID in
the configured feature space for VAE/GAN; lower is better) is evaluated at ``ALPHAS`` along
``θ(α) = (1 − α)·θ_ticket + α·θ_copy`` (params only; both share the mask, so pruned entries are 0
at every α, and the mask is applied again anyway), and

  ``instability = max_α metric(α) − (metric(0) + metric(1)) / 2``  (metric units; ≈ 0: stable).

**BatchNorm statistics are recomputed** at every α, the end points included, by
:func:`recompute_batch_stats`: the mean over ``BN_BATCHES`` train-mode forward passes (batches of
``train.batch_size`` training images; the generator on N(0, I) codes; no param update) of each
batch's statistics, i.e. PyTorch's ``momentum=None`` cumulative average. Interpolating the running
statistics instead would pair the mixed weights with statistics of neither network: the
activations' variance of an interpolated network shrinks (Jordan et al., 2022, "REPAIR"), and
stale statistics add a barrier that is not the loss landscape's. Every α uses the same batches
(key ``fold_in(run key, BN_STREAM)``) and the evaluator's fixed samples, so the curve differs only
by the weights. Hence metric(0) is the ticket's metric *with recomputed statistics*, not the
search's value (running averages of training); both are in the rows (``ticket_<metric>``,
``copy_<metric>``: each run's own evaluation). The DCGAN discriminator's statistics (unused by
FID) are recomputed on real images.

**Config**: the search's ``config.json`` is the record of what trained the tickets, so it is
read (``config=None``) or checked: ``workdir/config.json`` is written from it, then a ``config``
differing from it in any field but ``lottery.levels``/``lottery.branches``
(:data:`lottery.EXTENDABLE`) is refused (:class:`runs.WorkdirConflictError`, naming the fields).
Levels above ``config.lottery.levels`` are left out. Writes under ``workdir`` (the search's own
workdir means its ``stability/`` subdirectory): ``config.json``, ``level_LL/copy_seed<s>/``
(``trained`` state, ``metrics.json``, ``masks.npz``, ``interpolation.json``: the seed's rows),
``level_LL/done.json`` (the level's rows, once complete; a done level is read back, costing
nothing) and ``stability.csv``. Process 0 evaluates the interpolations and writes the reports.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from lth_jax import branches
from lth_jax import data as data_lib
from lth_jax import groups
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import meshes
from lth_jax import report
from lth_jax import runs
from lth_jax import steps as steps_lib
from lth_jax import validation

PyTree = Any
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
BN_BATCHES = 32      # train-mode passes per BatchNorm recomputation
COPY_STREAM = 1      # the copy's run key: fold_in(seed_keys(seed)['run'], COPY_STREAM)
BN_STREAM = 2        # the BatchNorm batches: fold_in(seed_keys(seed)['run'], BN_STREAM)


def copy_run_key(seed: int) -> jax.Array:
  """The copy's run key (its data order): a stream of the seed's run key, never the search's."""
  return jax.random.fold_in(runs.seed_keys(seed)["run"], COPY_STREAM)


def bn_key(seed: int) -> jax.Array:
  """The key of the BatchNorm recomputation batches of a seed (the same at every α and level)."""
  return jax.random.fold_in(runs.seed_keys(seed)["run"], BN_STREAM)


@jax.jit
def interpolate(a: PyTree, b: PyTree, alpha: float, masks: PyTree) -> PyTree:
  """``(1 − alpha)·a + alpha·b`` per leaf (exactly ``a`` at 0, ``b`` at 1), masked entries 0."""
  return masks_lib.apply(jax.tree.map(lambda x, y: (1.0 - alpha) * x + alpha * y, a, b), masks)


def instability(metrics: dict[float, float]) -> float:
  """``max_α metric(α) − mean(metric(0), metric(1))`` of a lower-is-better ``{α: metric}``."""
  return float(max(metrics.values()) - 0.5 * (metrics[0.0] + metrics[1.0]))


# ------------------------------------------------------------------- BatchNorm statistics
def _train_mode_stats(family: steps_lib.Family, batch_size: int, params, stats, images, key):
  """The ``batch_stats`` after one train-mode forward pass from ``stats`` (params unchanged):
  ``Family.train_mode_stats`` on a batch drawn with the first half of ``key``, its noise (the
  generator's codes, the VAE's posterior sample) from the second."""
  kx, kz = jax.random.split(key)
  x = data_lib.sample_batch(kx, images, batch_size)
  return family.train_mode_stats(params, stats, x, kz)


def _accumulate(family, batch_size, params, start, total, images, key):
  """``total`` plus the statistics after one train-mode pass from ``start``."""
  return jax.tree.map(jnp.add, total,
                      _train_mode_stats(family, batch_size, params, start, images, key))


@jax.jit
def _mean(total, first, from_ones, num_batches):
  momentum = jax.tree.map(lambda a, b: jnp.mean(b - a), first, from_ones)
  return jax.tree.map(lambda t, m: t / (num_batches * (1.0 - m)), total, momentum)


_PASSES: dict = {}


def recompute_batch_stats(family: steps_lib.Family, params: PyTree, batch_stats: PyTree,
                          images: jax.Array, key: jax.Array, *, batch_size: int,
                          num_batches: int = BN_BATCHES) -> PyTree:
  """BatchNorm statistics of ``params``: the mean of ``num_batches`` batches' statistics.

  Args:
    batch_stats: a tree of the model's statistics (only its structure is used).
    images: uint8 ``[N, H, W, C]`` training images; batch i is drawn with ``fold_in(key, i)``.
    batch_size: images (and generator codes) per pass, as in training (the batch variance is the
      biased one, so it depends on it).

  The momentum-agnostic trick: one pass from all-zero statistics gives ``(1 − m)·s`` (s: the
  batch's statistics, m: BatchNorm's momentum) and one from all-ones ``m + (1 − m)·s``; their
  difference is m, so every pass from zeros yields its batch's s exactly.
  """
  if not jax.tree.leaves(batch_stats):
    return batch_stats
  cache_key = (id(family), batch_size)
  if cache_key not in _PASSES:   # the family is kept alive with its compiled pass
    _PASSES[cache_key] = (family, jax.jit(functools.partial(_accumulate, family, batch_size)))
  accumulate = _PASSES[cache_key][1]
  zeros = jax.tree.map(jnp.zeros_like, batch_stats)
  ones = jax.tree.map(jnp.ones_like, batch_stats)
  first = accumulate(params, zeros, zeros, images, jax.random.fold_in(key, 0))
  from_ones = accumulate(params, ones, zeros, images, jax.random.fold_in(key, 0))
  total = first
  for i in range(1, num_batches):
    total = accumulate(params, zeros, total, images, jax.random.fold_in(key, i))
  return _mean(total, first, from_ones, num_batches)


# ------------------------------------------------------------------------------- the run
def _copy_runs(config: ml_collections.ConfigDict) -> list[str]:
  return [f"copy_seed{int(s)}" for s in config.tickets.seeds]


def planned_outputs(config: ml_collections.ConfigDict) -> list[str]:
  """Every copy's output file, relative to the workdir, level by level (0 to
  ``lottery.levels``): the copies are trained when all exist (the interpolations, evaluations
  only, follow each level's copies)."""
  return [runs.run_output(lottery.level_name(level), name)
          for level in range(config.lottery.levels + 1) for name in _copy_runs(config)]


class _Stability:
  """The copies and interpolations of one finished search (bookkeeping over a Context)."""

  def __init__(self, config, workdir: str, search_workdir: str):
    self.config, self.workdir, self.search = config, workdir, search_workdir
    self.seeds = [int(s) for s in config.tickets.seeds]
    self._ctx = None

  @property
  def ctx(self) -> runs.Context:   # built only when something is left to do
    if self._ctx is None:
      self._ctx = runs.Context(self.config, self.workdir)
    return self._ctx

  def levels(self) -> list[int]:
    """The search's finished levels, 0 first, up to ``lottery.levels``."""
    found = []
    while (len(found) <= self.config.lottery.levels and os.path.exists(
        os.path.join(self.search, lottery.level_name(len(found)), "done.json"))):
      found.append(len(found))
    return found

  def ticket_dir(self, level: int, seed: int) -> str:
    branch = "dense" if level == 0 else "ticket"
    return os.path.join(self.search, lottery.level_name(level), f"{branch}_seed{seed}")

  def masks(self, level: int, seed: int, params: PyTree) -> PyTree:
    return masks_lib.load(os.path.join(self.ticket_dir(level, seed), "masks.npz"),
                          like=self.ctx.dense_masks(params))

  def copy_tickets(self, level: int, names: list[str]) -> list[groups.Ticket]:
    """The copies' starting states: the search's ticket branch at θ_k (level 0: θ_k itself)."""
    tickets = []
    for name in names:
      seed = int(name.rsplit("_seed", 1)[1])
      theta_k = self.ctx.load_state(os.path.join(self.ticket_dir(0, seed), "theta_k"))
      masks = self.masks(level, seed, theta_k.params)
      state = theta_k if level == 0 else branches.rewind(
          self.ctx.family, theta_k, masks, restore_optimizer=self.config.lottery.rewind_optimizer)
      tickets.append(groups.Ticket(name, state, masks, copy_run_key(seed),
                                   {"level": level, "branch": "copy", "seed": seed}))
    return tickets

  def level(self, level: int) -> list[dict]:
    """Trains the level's missing copies, then evaluates the interpolations of every seed."""
    level_dir = os.path.join(self.workdir, lottery.level_name(level))
    done = os.path.join(level_dir, "done.json")
    if os.path.exists(done):
      return runs.read_json(done)
    ctx = self.ctx
    copies = ctx.run_stage(
        level_dir, _copy_runs(self.config),
        lambda todo: self.copy_tickets(level, todo), until_step=self.config.train.steps,
        columns=lambda t, s, timing: {"steps": int(s.step),
                                      "group_train_seconds": timing.seconds},
        label=f"stability level {level}: ", scalar_step=lambda t, s: level,
        keep=lambda t: "trained")
    rows = []
    for seed, copy in zip(self.seeds, copies):
      path = os.path.join(level_dir, f"copy_seed{seed}", "interpolation.json")
      # Loading is collective (every process); process 0 evaluates and writes.
      ticket = ctx.load_state(os.path.join(self.ticket_dir(level, seed), "trained"))
      other = ctx.load_state(os.path.join(level_dir, f"copy_seed{seed}", "trained"))
      if ctx.is_main and not os.path.exists(path):
        own = runs.read_json(os.path.join(self.ticket_dir(level, seed), "metrics.json"))
        runs.write_json(path, self.interpolation(level, seed, ticket, other,
                                                 own[ctx.metric], copy[ctx.metric]))
      meshes.barrier(f"stability-level{level}-seed{seed}")
      rows += runs.read_json(path)
    if ctx.is_main:
      runs.write_json(done, rows)
    return rows

  def interpolation(self, level: int, seed: int, ticket, other, ticket_own: float,
                    copy_own: float) -> list[dict]:
    """The rows of one (level, seed): the metric at every α and the instability."""
    ctx, metric = self.ctx, self.ctx.metric
    masks = self.masks(level, seed, ticket.params)
    values = {}
    for alpha in ALPHAS:
      params = interpolate(ticket.params, other.params, alpha, masks)
      stats = recompute_batch_stats(ctx.family, params, ticket.batch_stats,
                                    ctx.train_split.images, bn_key(seed),
                                    batch_size=self.config.train.batch_size)
      state = ticket._replace(params=params, batch_stats=stats)
      values[alpha] = float(ctx.evaluator(ctx.family, state)[metric])
    common = {"level": level, "sparsity": float(masks_lib.sparsity(masks)), "seed": seed}
    extra = {"instability": instability(values), f"ticket_{metric}": float(ticket_own),
             f"copy_{metric}": float(copy_own)}
    return [{**common, "alpha": a, metric: v, **extra} for a, v in values.items()]


def run(config: ml_collections.ConfigDict | None, workdir: str,
        search_workdir: str) -> list[dict]:
  """Linear mode connectivity of a finished search's tickets (see the module docstring).

  Args:
    config: the search's config (checked against ``search_workdir/config.json``), or None to
      read it from there.
    workdir: where the copies and ``stability.csv`` go (``search_workdir`` itself means its
      ``stability/`` subdirectory).
    search_workdir: a :func:`lottery.run` workdir with at least level 0 finished (else
      :func:`lottery.load_results`'s FileNotFoundError).

  Returns:
    One row per (level, seed, α), in that order: ``level``, ``sparsity`` (share of prunable
    weights pruned), ``seed``, ``alpha``, the metric (e.g. ``recon_mse``) with recomputed
    BatchNorm statistics, and per (level, seed) ``instability`` and the ticket's and the copy's
    own metric (``ticket_<metric>``, ``copy_<metric>``: running statistics of training).
  """
  if os.path.abspath(workdir) == os.path.abspath(search_workdir):
    workdir = os.path.join(workdir, "stability")
  lottery.load_results(search_workdir)   # refuses a workdir without a finished level
  searched = ml_collections.ConfigDict(
      runs.read_json(os.path.join(search_workdir, "config.json")))
  validation.check(searched, "find_tickets")
  # The workdir records the search's config; then any other config (but for lottery.levels and
  # lottery.branches) is refused with runs.WorkdirConflictError.
  runs.prepare_workdir(workdir, searched, extendable=lottery.EXTENDABLE)
  if config is not None:
    validation.check(config, "find_tickets")
    runs.prepare_workdir(workdir, config, extendable=lottery.EXTENDABLE)
  config = searched if config is None else config
  stability = _Stability(config, workdir, search_workdir)
  rows = [row for level in stability.levels() for row in stability.level(level)]
  if jax.process_index() == 0:
    report.write_csv(rows, os.path.join(workdir, "stability.csv"))
  if stability._ctx is not None:  # pylint: disable=protected-access
    stability.ctx.writer.close()
  return rows

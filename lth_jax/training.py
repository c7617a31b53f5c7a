"""The training loop and ``train_and_evaluate(config, workdir)``, the library entry of a run.

The loop calls one jitted function that runs ``steps_per_call`` masked steps, checks the result
for NaN/Inf once per call (no per-step host sync), logs, and checkpoints every
``checkpoint_every`` steps; running it again on the same workdir resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from lth_jax import checkpointing
from lth_jax import data as data_lib
from lth_jax import evaluation
from lth_jax import report
from lth_jax import steps as steps_lib

PyTree = Any


class WorkdirConflictError(ValueError):
  """The workdir holds a run of a different config."""


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Creates ``workdir`` and saves ``config.json``; refuses a workdir of a different config."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  current = config_to_dict(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != current:
      diff = sorted(_diff_keys(saved, current))
      raise WorkdirConflictError(
          f"workdir {workdir!r} holds a run of a different config (differs in: "
          f"{', '.join(diff[:8])}); use a new --workdir or delete the old one")
    return
  if jax.process_index() == 0:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _diff_keys(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for k in set(a) | set(b):
      yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
  elif a != b:
    yield prefix.rstrip(".")


def family_from_config(config: ml_collections.ConfigDict, *, widths: dict | None = None,
                       bn_l1: float | dict = 0.0) -> steps_lib.Family:
  """Builds the config's model family (reads ``family``, ``data``, ``model``, ``train``, ``loss``)."""
  return steps_lib.make_family(
      config.family, channels=data_lib.num_channels(config.data.name),
      image_size=config.data.image_size, width=config.model.width, z_dim=config.model.z_dim,
      optimizer=dict(config.train.optimizer), batch_size=config.train.batch_size,
      loss_kind=config.loss.kind, beta=config.loss.beta, widths=widths, bn_l1=bn_l1)


def load_data(config: ml_collections.ConfigDict) -> tuple[data_lib.Split, data_lib.Split]:
  """(train split on device, test split on host) for the config's data set."""
  kwargs = dict(image_size=config.data.image_size, data_dir=config.data.data_dir or None,
                source=config.data.source, download=config.data.download,
                limit=config.data.limit or None)
  train = data_lib.device_put(data_lib.load(config.data.name, "train", **kwargs))
  test = data_lib.load(config.data.name, "test", **kwargs)
  return train, test


def masks_from_config(config: ml_collections.ConfigDict, family: steps_lib.Family,
                      params: PyTree) -> PyTree:
  """All-kept masks over the parts and layers the config's ``prune`` section selects."""
  return steps_lib.dense_masks(family, params, dict(config.prune.parts),
                               tuple(config.prune.exclude))


def train(family: steps_lib.Family, state: steps_lib.TrainState, masks: PyTree,
          images: jax.Array, *, run_key: jax.Array, until_step: int, steps_per_call: int,
          manager: checkpointing.Manager | None = None, checkpoint_every: int = 0,
          writer: report.MetricWriter | None = None, log_every: int = 0,
          tags: dict | None = None) -> steps_lib.TrainState:
  """Trains ``state`` to ``until_step`` (absolute step count), checkpointing and logging.

  Args:
    family: the family's pure functions.
    state: the starting state (its ``step`` may be > 0: resumed or rewound runs).
    masks: mask tree for ``state.params`` (traced: changing it does not recompile).
    images: uint8 [N, H, W, C] training images on device.
    run_key: the run's data/noise key; step s uses ``fold_in(run_key, s)``.
    until_step: stop when ``state.step == until_step``.
    steps_per_call: steps fused into one jitted call (unrolled).
    manager: optional checkpoint manager; saves ``{'state': state}`` every ``checkpoint_every``.
    writer: optional metric writer; ``log_every`` steps between scalar writes.
    tags: extra tags written with every scalar row (e.g. level, branch).

  Raises:
    steps_lib.DivergenceError: a loss or parameter became NaN/Inf (the last good checkpoint is kept).
  """
  step = int(state.step)
  fns = {}
  progress = report.ProgressLogger(until_step - step)
  last_log = step
  while step < until_step:
    n = min(steps_per_call, until_step - step)
    if checkpoint_every:
      n = min(n, checkpoint_every - step % checkpoint_every)
    if n not in fns:
      fns[n] = _compiled_multi_step(family, n)
    state, metrics = fns[n](state, masks, images, run_key)
    metrics = jax.device_get(metrics)
    if metrics.pop("finite") < 1.0:
      raise steps_lib.DivergenceError(
          f"training diverged: a loss or parameter is NaN/Inf after step {step + n} "
          f"(steps {step + 1}..{step + n}; losses {metrics}); lower train.optimizer.lr. "
          + ("The last good checkpoint is kept." if manager is not None else ""))
    step += n
    progress.update(n)
    if writer is not None and log_every and (step - last_log >= log_every or step == until_step):
      writer.write_scalars(step, {k: float(v) for k, v in metrics.items()}, **(tags or {}))
      last_log = step
    if manager is not None and checkpoint_every and (step % checkpoint_every == 0
                                                     or step == until_step):
      manager.save(step, {"state": state})
  return state


_COMPILED: dict = {}


def _compiled_multi_step(family: steps_lib.Family, n: int):
  """One jitted n-step function per (family, n), so every loop of a run shares the compilation."""
  key = (id(family), n)
  if key not in _COMPILED:
    _COMPILED[key] = (family, steps_lib.jit_multi_step(family, n))
  return _COMPILED[key][1]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the config's model densely (with its ``prune`` masks all kept) and evaluates it.

  Writes to ``workdir``: ``config.json``, ``checkpoints/`` (Orbax; resumes), ``metrics.jsonl`` and
  TensorBoard events, ``samples.png`` (GAN/VAE samples or AE reconstructions) and
  ``final_metrics.json``. Returns the final metrics.
  """
  prepare_workdir(workdir, config)
  logging.info("devices: %s", jax.devices())
  family = family_from_config(config)
  train_split, test_split = load_data(config)
  key = jax.random.key(config.seed)
  init_key, run_key = jax.random.split(key)
  state = family.init(init_key)
  masks = masks_from_config(config, family, state.params)
  is_main = jax.process_index() == 0
  writer = report.MetricWriter(workdir, enabled=is_main)
  with checkpointing.Manager(os.path.join(workdir, "checkpoints")) as manager:
    if manager.latest_step() is not None:
      restored, _ = manager.restore(like={"state": state})
      state = restored["state"]
      logging.info("resuming from step %d", int(state.step))
    start = time.perf_counter()
    state = train(family, state, masks, train_split.images, run_key=run_key,
                  until_step=config.train.steps, steps_per_call=config.train.steps_per_call,
                  manager=manager, checkpoint_every=config.train.checkpoint_every,
                  writer=writer, log_every=config.train.log_every)
    train_seconds = time.perf_counter() - start
  evaluator = evaluation.Evaluator.from_config(config, train_split, test_split)
  results = evaluator(family, state)
  results["train_seconds"] = train_seconds
  if is_main:
    evaluator.save_grid(family, state, os.path.join(workdir, "samples.png"))
    writer.write_scalars(int(state.step), results)
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump({"step": int(state.step), **results}, f, indent=2)
  writer.close()
  logging.info("final metrics: %s", results)
  return results

"""``train_and_evaluate(config, workdir)``: one dense model trained and evaluated, resumably.

It is one ticket through the run machinery (:mod:`lth_jax.runs`): the chunked, checkpointed
loop of :class:`lth_jax.parallel.TicketRunner` on one device, losses logged every
``train.log_every`` steps, then the evaluation.
"""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from lth_jax import groups
from lth_jax import runs
from lth_jax import validation


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the config's model densely (with its ``prune`` masks all kept) and evaluates it.

  Writes to ``workdir``: ``config.json``, ``checkpoints/`` (Orbax; resumes), ``metrics.jsonl`` and
  TensorBoard events, ``samples.png`` (GAN/VAE samples or AE reconstructions) and
  ``final_metrics.json``. Returns the final metrics.
  """
  validation.check(config, "train")
  runs.prepare_workdir(workdir, config)
  logging.info("devices: %s", jax.devices())
  ctx = runs.Context(config, workdir)
  init_key, run_key = jax.random.split(jax.random.key(config.seed))
  state = ctx.family.init(init_key)
  ticket = groups.Ticket("dense", state, ctx.dense_masks(state.params), run_key, {})
  checkpoints = os.path.join(workdir, "checkpoints")
  [state] = ctx.train(ctx.resume(checkpoints, lambda: [ticket]), until_step=config.train.steps,
                      checkpoint_dir=checkpoints)
  jax.block_until_ready(state)
  train_seconds = ctx.spent(checkpoints).seconds    # a resumed run's steps before it included
  results = ctx.evaluator(ctx.family, state)
  results["train_seconds"] = train_seconds
  if ctx.is_main:
    ctx.evaluator.save_grid(ctx.family, state, os.path.join(workdir, "samples.png"))
    ctx.writer.write_scalars(int(state.step), results)
    runs.write_json(os.path.join(workdir, "final_metrics.json"),
                    {"step": int(state.step), **results})
  ctx.writer.close()
  logging.info("final metrics: %s", results)
  return results

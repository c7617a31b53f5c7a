"""Shared start-up of the absl binaries: multi-host init, device log, clear errors, exit codes."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import logging as std_logging

import jax
import ml_collections
from absl import logging

# Errors a user can fix by changing flags or inputs: shown as one message, exit code 2.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and tfds so the run's own progress lines stay readable."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` when a multi-process run is configured by environment.

  Set ``LTH_JAX_COORDINATOR`` (host:port), ``LTH_JAX_NUM_PROCESSES`` and ``LTH_JAX_PROCESS_ID``;
  on Cloud TPU / SLURM, ``LTH_JAX_DISTRIBUTED=auto`` lets JAX detect them.
  """
  if os.environ.get("LTH_JAX_DISTRIBUTED") == "auto":
    jax.distributed.initialize()
  elif "LTH_JAX_COORDINATOR" in os.environ:
    jax.distributed.initialize(
        coordinator_address=os.environ["LTH_JAX_COORDINATOR"],
        num_processes=int(os.environ["LTH_JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["LTH_JAX_PROCESS_ID"]))


def run(fn: Callable[[ml_collections.ConfigDict, str], object],
        config: ml_collections.ConfigDict, workdir: str) -> object:
  """Calls ``fn(config, workdir)``; a user error ends the program with its message and exit 2."""
  logging.get_absl_handler().addFilter(_QuietLibraries())
  maybe_initialize_distributed()
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  try:
    return fn(config, workdir)
  except USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(2)

"""Shared start-up of the absl binaries: flags, config checks, multi-host init, exit codes.

A binary is ``experiment_main.main(library_fn, binary)``. Bad input is refused before any work,
with one ``error: ...`` line on stderr and exit status 2: a missing or broken config file, an
unknown preset, an override of an unknown field or of a section the binary does not read, a bad
override value, a missing flag (:func:`parse_flags`), then a bad config value
(``validation.check``, in :func:`run`), all before the workdir is created or touched.
"""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import NoReturn

import logging as std_logging

import jax
import ml_collections
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from lth_jax import config_fields
from lth_jax import configs
from lth_jax import data as data_lib
from lth_jax import preemption
from lth_jax import validation

# Flags defined here belong to the calling binary (its --helpshort lists them).
flags.disclaim_key_flags()

# Errors a user can fix by changing flags or inputs: shown as one message, exit code 2. (The
# library's own user errors subclass these: Inception weights errors are ValueErrors, a missing
# TensorFlow for tfds is data.MissingDependencyError.)
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError,
               data_lib.MissingDependencyError)
_OVERRIDE_RE = re.compile(r"^--?(?:no)?config\.([^=]+)")
_HELP_RE = re.compile(r"^--?(\?|h|help|helpshort|helpfull|helpxml)$")


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and tfds so the run's own progress lines stay readable."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = "/orbax/" in record.pathname or "/tensorflow_datasets/" in record.pathname
    return record.levelno >= std_logging.WARNING or not noisy


def print_error(message: str) -> None:
  """Prints ``error: <message>`` as one line on stderr."""
  lines = [line.strip() for line in str(message).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    lines = lines[-1:]    # a wrapped exception: its own last line is the message
  print("error: " + " ".join(lines), file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
  """Prints ``error: <message>`` as one line on stderr and exits with status 2."""
  print_error(message)
  sys.exit(2)


def _config_spec(argv: list[str]) -> str | None:
  """The last ``--config`` value in ``argv`` (``path.py[:preset]``), or None."""
  spec = None
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    match = re.match(r"^--?config(?:=(.*))?$", arg)
    if match:
      spec = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return spec


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``get_config([preset])`` of the config file of ``spec`` (``path.py[:preset]``).

  Exits via :func:`fail` for a missing file, a syntax or other error in it, or an unknown preset.
  """
  path, sep, preset = spec.partition(":")
  if not os.path.isfile(path):
    fail(f"--config: no config file {path!r}")
  try:
    loader = importlib.machinery.SourceFileLoader("_lth_jax_config_file", path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      fail(f"--config: {path} defines no get_config()")
    config = module.get_config(*([preset] if sep else []))
  except SyntaxError as e:
    fail(f"--config: syntax error in {e.filename or path} line {e.lineno}: {e.msg}")
  except Exception as e:  # pylint: disable=broad-except  # any error of the user's file
    fail(f"--config={spec}: {type(e).__name__}: {e}")
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f"--config={spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
  return config


def _check_overrides(config: ml_collections.ConfigDict, argv: list[str], binary: str) -> None:
  """Each ``--config.<field>`` names a field of ``config`` in a section ``binary`` reads."""
  read = configs.COMMON + configs.SECTIONS[binary]
  for arg in argv[:argv.index("--") if "--" in argv else len(argv)]:
    match = _OVERRIDE_RE.match(arg)
    if not match:
      continue
    field, node = match.group(1), config
    for i, key in enumerate(field.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        fail(f"{arg}: {'.'.join(field.split('.')[:i + 1])} is not a config field")
      node = node[key]
    if field.split(".")[0] not in read:
      fail(f"{field} is not read by {binary} (its sections: {', '.join(read)})")


def parse_flags(argv: list[str], binary: str | None = None) -> list[str]:
  """absl ``flags_parser``: parses ``argv``; any flag problem ends the program via :func:`fail`.

  With ``binary``, first loads the ``--config`` file and checks the ``--config.*`` overrides
  (:func:`load_config`), so that config-file errors are one line too.
  """
  try:
    expanded = flags.FLAGS.read_flags_from_files(argv, force_gnu=False)
  except (flags.Error, OSError) as e:
    fail(str(e))
  if binary is not None and not any(_HELP_RE.match(arg) for arg in expanded):
    spec = _config_spec(expanded)
    if spec is None:
      fail("missing required flag --config (path.py[:preset])")
    _check_overrides(load_config(spec), expanded, binary)
  try:
    rest = flags.FLAGS(argv)
  except flags.IllegalFlagValueError as e:
    missing = re.search(r"Flag (--\w+) must have a value other than None", str(e))
    fail(f"missing required flag {missing.group(1)}" if missing else str(e))
  except Exception as e:  # pylint: disable=broad-except  # flags and config_flags raise many kinds
    fail(f"{type(e).__name__}: {e}")
  if len(rest) > 1:
    fail(f"unexpected argument(s) {rest[1:]}; flags are --name=value")
  return rest


def exit_preempted(stop: preemption.Preempted) -> NoReturn:
  """Prints the stop (what saved it, how to resume) as one line on stderr and exits with its
  status: ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C)."""
  print(str(stop), file=sys.stderr, flush=True)
  sys.exit(stop.exit_code)


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


def run(fn: Callable[[ml_collections.ConfigDict, str], object], binary: str,
        config: ml_collections.ConfigDict, workdir: str) -> object:
  """Checks ``config`` for ``binary`` (``validation.check``), then calls ``fn(its sections,
  workdir)``; a bad config or a user error of the run ends the program with one line and exit 2.
  """
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    config = configs.for_binary(config, binary)
    validation.check(config, binary)
    if not workdir:
      raise ValueError("--workdir is empty")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      raise NotADirectoryError(f"--workdir={workdir!r} is not a directory")
    maybe_initialize_distributed()
    preemption.handle_signals(jax.process_count())
    logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
                 jax.local_devices())
    return fn(config, workdir)
  except preemption.Preempted as e:
    exit_preempted(e)
  except config_fields.ConfigError as e:
    fail(str(e))
  except (*USER_ERRORS, NotADirectoryError) as e:
    fail(f"{type(e).__name__}: {e}")


def main(fn: Callable[[ml_collections.ConfigDict, str], object], binary: str, *,
         workdir_help: str = "Output directory.") -> None:
  """The whole of ``experiments/<binary>.py``: defines ``--config`` (``path.py[:preset]``, then
  ``--config.<field>=value`` overrides) and ``--workdir``, parses them (:func:`parse_flags`) and
  calls :func:`run`."""
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  try:   # reads --flagfile already
    config = config_flags.DEFINE_config_file("config", None, "Config file (path.py[:preset]).",
                                             lock_config=True)
  except flags.Error as e:
    fail(str(e))
  flags.mark_flags_as_required(["config", "workdir"])

  def run_binary(argv):
    del argv
    run(fn, binary, config.value, workdir.value)   # app.run would exit with a returned value

  app.run(run_binary, flags_parser=functools.partial(parse_flags, binary=binary))

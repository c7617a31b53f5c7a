"""Shared test setup: an isolated cache for feature classifiers; real Fashion-MNIST required."""
import os
import pathlib
from collections.abc import Callable

import filelock
import pytest

from lth_jax import data


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
  """Classifiers trained by smoke runs go to a per-session cache, not the user's."""
  cache = tmp_path_factory.mktemp("lth_jax_cache")
  os.environ["LTH_JAX_CACHE_DIR"] = str(cache)
  yield cache


def fmnist_available() -> bool:
  return pathlib.Path(data.default_fmnist_dir(), "train-images-idx3-ubyte.gz").exists() or \
      pathlib.Path(data.default_data_dir(), "fashion_mnist_idx").exists()


needs_fmnist = pytest.mark.skipif(
    not fmnist_available(),
    reason="real Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


def checkpoint_saved(checkpoints: pathlib.Path) -> bool:
  """Whether a stage's ``checkpoints/<group>/`` holds a finished in-stage checkpoint step."""
  return checkpoints.is_dir() and any(
      name.isdigit() for group in checkpoints.iterdir() if group.is_dir()
      for name in os.listdir(group))


def run_outputs(workdir) -> set[str]:
  """Every run's output file under ``workdir``, relative to it: the ``metrics.json`` of each
  trained run and an early-bird search's ``search.json`` (what ``planned_outputs`` lists)."""
  found = set()
  for directory, _, files in os.walk(workdir):
    found |= {os.path.relpath(os.path.join(directory, f), workdir) for f in files
              if f in ("metrics.json", "search.json")}
  return found


def built_once(tmp_path_factory, name: str, build: Callable[[pathlib.Path], None]
               ) -> pathlib.Path:
  """``<run's base temp>/<name>/``, filled by ``build(directory)`` once per test run.

  A module fixture runs once in every xdist worker that gets one of the module's tests; this
  runs ``build`` in the first worker to get here, while the others wait on a file lock and then
  read what it wrote. Tests must treat the directory as read-only (copy what they change).
  """
  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  directory = shared / name
  with filelock.FileLock(str(shared / f"{name}.lock")):
    if not (directory / ".built").exists():
      directory.mkdir(exist_ok=True)
      build(directory)
      (directory / ".built").touch()
  return directory


# XLA CPU's older fusion emitters: 3x faster compiles, but a ticket's step compiled inside the
# ticket runner's program then differs in the last bits from the same step compiled alone, so the
# bit-identity workers of test_parallel.py run without this flag (XLA's default emitters).
LEGACY_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
  """Faster compiles for the test suite: threefry's old stream and one shared XLA cache.

  With JAX's default ``jax_threefry_partitionable=True``, every ``jax.random`` shape takes seconds
  to compile on XLA CPU (measured: a DCGAN init compiles in 11 s vs 1.9 s). Tests compare runs
  against each other, never against fixed random values, so the stream choice does not matter.

  XLA compiles at its lowest backend optimisation level, with its older (non-MLIR) fusion
  emitters: the suite's programs are tiny and mostly compiled, not run (measured: 25-30% less
  time per test for the level; a smoke WGAN step compiles in 2.2 s instead of 6.9 s without the
  MLIR emitters). Equalities between two programs hold with these flags, both sides compiling
  alike, and every subprocess inherits them through the environment (bit-identity between a
  ticket in the runner and the ticket alone needs the default emitters: LEGACY_EMITTERS).

  Many tests (and the binaries they start as subprocesses) compile the same smoke-size programs;
  JAX's persistent compilation cache, one per test run and shared by the xdist workers and their
  subprocesses through the environment, compiles each once (every program, however fast it
  compiles: measured ~5% less CPU than caching only those over 0.5 s). The cache has no size
  limit: a limit turns on JAX's LRU eviction, whose every write reads every entry's access time
  (the suite writes ~3,200 entries, so the cost grows with the square of the suite: measured, a
  VAE's eager init took 34 CPU-s against a full cache vs 7.5 against an empty one). Without the
  limit there is no file lock; a reader that meets an entry still being written gets a
  decompression error, which JAX turns into a warning and a recompile.
  """
  import jax  # pylint: disable=g-import-not-at-top
  fast = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
          f"{LEGACY_EMITTERS}")
  if fast not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {fast}".strip()
  base = config._tmp_path_factory.getbasetemp()  # pylint: disable=protected-access
  shared = base.parent if hasattr(config, "workerinput") else base   # one root for all workers
  settings = {"jax_threefry_partitionable": False,
              "jax_compilation_cache_dir": str(shared / "xla_cache"),
              "jax_persistent_cache_min_compile_time_secs": 0}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(int(value) if isinstance(value, bool) else value)

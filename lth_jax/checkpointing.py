"""The one module that talks to Orbax: numbered step checkpoints and single saved trees.

Two entry points:

* :class:`Manager` — numbered checkpoints in one directory (training state every N steps; a killed
  run resumes from :meth:`Manager.latest_step`). Each step is a directory holding the pytree and a
  JSON metadata dict::

    <directory>/<step>/state/      the pytree (Orbax StandardCheckpointHandler: OCDBT + zarr3)
    <directory>/<step>/metadata/   a JSON object (level, branch, config hash, ...)

* :func:`save_tree` / :func:`load_tree` — one pytree at one path (the rewind point θ_k, a level's
  mask, a level's trained weights).

Atomicity: Orbax writes into ``<name>.orbax-checkpoint-tmp`` and renames it to ``<name>`` only once
every process has finished writing (on object stores without atomic rename it writes
``commit_success.txt`` last instead). A killed process therefore leaves at most a
``*.orbax-checkpoint-tmp`` directory: it is never listed as a step, never loaded, and it is deleted
by the next save to the same name (and in the background when a :class:`Manager` opens the
directory).

``None`` leaves (mask entries of non-prunable params) are stored as empty nodes and come back as
``None``, with or without ``like``. Without ``like``, containers come back as Orbax stores them:
dicts and lists (an optax ``NamedTuple`` state becomes a list of dicts), arrays with the dtype and
sharding they were saved with. With ``like`` (a concrete or abstract tree of the wanted
structure), the result has exactly ``like``'s structure, dtypes (stored values are cast) and
shardings; leaves of ``like`` may be ``jax.Array``, ``jax.ShapeDtypeStruct`` (with ``sharding=``
to place or reshard; without, on this process's first device, as ``jnp.asarray`` places),
``np.ndarray`` (restored as NumPy) or Python scalars.

Multi-process (``jax.distributed``): every process calls the same functions with the same
arguments; they are collective. Orbax writes each process's addressable shards, the primary process
writes the metadata and renames the temporary directory after a barrier. Pass ``like`` with
``jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, spec))`` leaves so each process
reads only its own shards (the mesh may differ from the one used at save time).

Example::

  from lth_jax import checkpointing
  with checkpointing.Manager(workdir + "/ckpt", max_to_keep=2) as mngr:
    if mngr.latest_step() is not None:
      state, meta = mngr.restore(like=state)
    mngr.save(step, state, metadata={"level": 3})
  checkpointing.save_tree(workdir + "/rewind", {"params": params, "opt_state": opt_state})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PyTree = Any

_STATE = "state"
_METADATA = "metadata"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _path(path: str | os.PathLike) -> epath.Path:
  """An absolute ``epath.Path`` (Orbax refuses relative paths); ``gs://...`` URLs are kept."""
  text = os.fspath(path)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def _check_not_empty(tree: PyTree, where: epath.Path) -> None:
  if not jax.tree.leaves(tree, is_leaf=lambda x: x is None):
    raise ValueError(f"Refusing to save an empty tree (no leaves) to {where}.")


def _restore_target(like: PyTree | None) -> PyTree | None:
  """``like`` as an Orbax restore target: arrays become ShapeDtypeStructs with their sharding,
  and a ShapeDtypeStruct without one goes to this process's first device.

  Without a sharding in the target, Orbax opens every array's stored metadata to find the saved
  one: for arrays saved from a device, 253 vs 156 ms per load of the smoke AE's state on CPU
  (``benchmarks/checkpoint_cost.py``).
  """
  if like is None:
    return None
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=default)
    if isinstance(x, np.generic):
      return np.asarray(x)
    return x

  return jax.tree.map(leaf, like)


def _mismatch(where: epath.Path, error: ValueError) -> ValueError:
  return ValueError(f"Checkpoint {where} does not match the `like` tree (structure, shapes or leaf "
                    f"types differ): {error}")


class Manager:
  """Numbered checkpoints of one pytree (plus a JSON metadata dict) in one directory.

  Saving is asynchronous: :meth:`save` returns once the arrays are copied off the devices and the
  files are written by a background thread. :meth:`restore`, :meth:`wait` and :meth:`close` wait
  for pending saves. Use as a context manager (or call :meth:`close`) so the last save is complete
  before the process exits.

  Args:
    directory: root directory (local path or ``gs://`` URL); created if missing.
    max_to_keep: keep only the newest this many steps (None keeps all).
    save_interval_steps: :meth:`save` without ``force`` writes only when ``step`` is a multiple of
      this (and the first save of an empty directory always).

  Raises:
    ValueError: ``max_to_keep`` or ``save_interval_steps`` is not a positive integer.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = None,
               save_interval_steps: int = 1):
    if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
      raise ValueError(f"max_to_keep must be None or a positive int, got {max_to_keep!r}.")
    if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be a positive int, got {save_interval_steps!r}.")
    self._directory = _path(directory)
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    state_handler = ocp.StandardCheckpointHandler()
    json_handler = ocp.JsonCheckpointHandler()
    registry.add(_STATE, ocp.args.StandardSave, state_handler)
    registry.add(_STATE, ocp.args.StandardRestore, state_handler)
    registry.add(_METADATA, ocp.args.JsonSave, json_handler)
    registry.add(_METADATA, ocp.args.JsonRestore, json_handler)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps,
        cleanup_tmp_directories=True, enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(self._directory, options=options,
                                          handler_registry=registry)

  @property
  def directory(self) -> epath.Path:
    """The absolute root directory."""
    return self._directory

  def save(self, step: int, tree: PyTree, *, metadata: Mapping[str, Any] | None = None,
           force: bool = False) -> bool:
    """Starts saving ``tree`` (and ``metadata``) as checkpoint ``step``.

    Args:
      step: non-negative step number; the directory is ``<directory>/<step>``.
      tree: pytree of ``jax.Array`` / ``np.ndarray`` / Python scalars; ``None`` leaves allowed.
      metadata: JSON-serialisable dict stored next to the tree (``{}`` if None).
      force: save even if ``save_interval_steps`` says this step is not due.

    Returns:
      Whether a checkpoint was written (False when the step is not due, or is older than the
      latest step).

    Raises:
      FileExistsError: checkpoint ``step`` already exists.
      TypeError: ``metadata`` is not a JSON-serialisable dict.
      ValueError: ``step`` is negative or ``tree`` has no leaves.
    """
    step = int(step)
    where = self._directory / str(step)
    if step < 0:
      raise ValueError(f"Checkpoint step must be >= 0, got {step} (directory {self._directory}).")
    _check_not_empty(tree, where)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, Mapping):
      raise TypeError(f"metadata for {where} must be a dict, got {type(metadata).__name__}.")
    try:
      json.dumps(dict(metadata))
    except (TypeError, ValueError) as e:
      raise TypeError(f"metadata for {where} must be JSON-serialisable (convert NumPy/JAX scalars "
                      f"with float() or int()): {e}") from e
    if step in self._manager.all_steps():
      raise FileExistsError(f"Checkpoint {where} already exists; save under a new step or delete "
                            "that directory.")
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(tree),
                                 _METADATA: ocp.args.JsonSave(dict(metadata))})
    return bool(self._manager.save(step, args=args, force=force))

  def restore(self, step: int | None = None, *,
              like: PyTree | None = None) -> tuple[PyTree, dict[str, Any]]:
    """Loads checkpoint ``step`` (the latest if None), after waiting for pending saves.

    Args:
      step: step number, or None for the latest.
      like: tree of the wanted structure (arrays, ``jax.ShapeDtypeStruct`` with optional
        ``sharding=``, ``None`` leaves); see the module docstring.

    Returns:
      ``(tree, metadata)``.

    Raises:
      FileNotFoundError: no checkpoint at all, or none for ``step`` (the message lists the
        available steps).
      ValueError: the checkpoint does not match ``like``.
    """
    self._manager.wait_until_finished()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint in {self._directory}.")
    step = int(step)
    steps = list(self._manager.all_steps())
    if step not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {self._directory}; "
                              f"available steps: {sorted(steps)}.")
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(_restore_target(like)),
                                 _METADATA: ocp.args.JsonRestore()})
    try:
      restored = self._manager.restore(step, args=args)
    except ValueError as e:
      if like is None:
        raise
      raise _mismatch(self._directory / str(step), e) from e
    return restored[_STATE], dict(restored[_METADATA])

  def metadata(self, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata dict of checkpoint ``step`` (the latest if None), without its tree.

    Raises:
      FileNotFoundError: no checkpoint at all, or none for ``step``.
    """
    self._manager.wait_until_finished()
    step = self._manager.latest_step() if step is None else int(step)
    if step is None or step not in self._manager.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in {self._directory}; "
                              f"available steps: {self.all_steps()}.")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        **{_METADATA: ocp.args.JsonRestore()}))
    return dict(restored[_METADATA] or {})

  def latest_step(self) -> int | None:
    """The newest step (including one this process is still writing), None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All steps, ascending (``*.orbax-checkpoint-tmp`` leftovers are never included)."""
    return sorted(self._manager.all_steps())

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Manager:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def save_tree(path: str | os.PathLike, tree: PyTree, *, overwrite: bool = False) -> str:
  """Saves one pytree at ``path`` (a directory) and returns once it is on disk.

  Args:
    path: destination directory (local or ``gs://``); must not exist unless ``overwrite``.
    tree: pytree of ``jax.Array`` / ``np.ndarray`` / Python scalars; ``None`` leaves allowed.
    overwrite: replace an existing tree. The old one is deleted before the new one is written,
      so a crash in between leaves neither.

  Returns:
    The absolute path, as a string.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
    ValueError: ``tree`` has no leaves.
  """
  where = _path(path)
  _check_not_empty(tree, where)
  if where.exists() and not overwrite:
    raise FileExistsError(f"{where} already exists; pass overwrite=True to replace it.")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(where, tree, force=overwrite)
    checkpointer.wait_until_finished()
  return str(where)


def load_tree(path: str | os.PathLike, *, like: PyTree | None = None) -> PyTree:
  """Loads a pytree written by :func:`save_tree`.

  Args:
    path: the directory given to :func:`save_tree`.
    like: tree of the wanted structure (needed to get optax ``NamedTuple`` states back, and to
      place arrays on a mesh); see the module docstring.

  Returns:
    The tree.

  Raises:
    FileNotFoundError: nothing was saved at ``path`` (the message says when only an unfinished
      save was found).
    ValueError: the saved tree does not match ``like``.
  """
  where = _path(path)
  if not where.exists():
    unfinished = where.parent / (where.name + _TMP_SUFFIX)
    hint = (f" Only the unfinished save {unfinished} exists: the writing process was stopped "
            "before it completed." if unfinished.exists() else "")
    raise FileNotFoundError(f"No saved tree at {where}.{hint}")
  with ocp.StandardCheckpointer() as checkpointer:
    try:
      return checkpointer.restore(where, _restore_target(like))
    except ValueError as e:
      if like is None:
        raise
      raise _mismatch(where, e) from e

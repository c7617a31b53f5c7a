"""Mask pytrees: 0/1 arrays shaped like the params, ``None`` for leaves that are not prunable.

A mask tree has exactly the structure of the params it belongs to (flax.linen ``params`` dicts,
flax.nnx ``State``, plain nested dicts/lists). Each prunable leaf is a ``bool`` array of the leaf's
shape (True = kept); every other leaf is ``None``. Masks are ordinary traced arrays inside
``jax.jit``, so a new pruning round with a new mask reuses the compiled step.

Example::

  from lth_jax import masks
  m = masks.init(params)                      # conv/dense kernels prunable
  sparse = masks.apply(params, m)             # pruned entries exactly 0
  print(masks.summary(m))                     # per-leaf table
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Predicate = Callable[[str, Any], bool]


class MaskMismatchError(ValueError):
  """A mask tree does not fit the params tree it is used with."""


def is_none(x) -> bool:
  """``is_leaf`` for mask trees: ``None`` marks a leaf that is not prunable."""
  return x is None


def key_name(key) -> str:
  """One path element (DictKey, GetAttrKey, SequenceKey, ...) as a plain string."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _path_names(path: Sequence[Any]) -> list[str]:
  """A key path's elements as strings; nnx ``Variable.value`` steps are left out."""
  return [key_name(k) for k in path
          if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")]


def path_str(path: Sequence[Any]) -> str:
  """A key path as ``'generator/convt1/kernel'`` (nnx ``Variable.value`` steps are left out)."""
  return "/".join(_path_names(path))


def default_prunable(path: str, leaf) -> bool:
  """Conv and dense kernels: leaves with ``ndim >= 2`` (biases and BN params are kept dense)."""
  del path
  return getattr(leaf, "ndim", 0) >= 2


def init(params: PyTree, prunable: Predicate | None = None) -> PyTree:
  """All-kept masks for ``params``.

  Args:
    params: any params pytree (linen dict, nnx State, nested dicts/lists of arrays).
    prunable: predicate ``(path, leaf) -> bool`` with ``path`` like ``'generator/convt0/kernel'``;
      defaults to :func:`default_prunable` (kernels with ndim >= 2).

  Returns:
    A tree shaped like ``params``: ``bool`` ones for prunable leaves, ``None`` elsewhere.
  """
  rule = default_prunable if prunable is None else prunable
  return jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.ones(jnp.shape(x), bool) if rule(path_str(p), x) else None, params)


def leaves_with_paths(tree: PyTree) -> list[tuple[str, Any]]:
  """``[(path, leaf)]`` in flattening order, ``None`` mask leaves included."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
  return [(path_str(p), x) for p, x in flat]


def check_compatible(params: PyTree, masks: PyTree) -> None:
  """Raises :class:`MaskMismatchError` naming the first path where ``masks`` does not fit
  ``params``."""
  p_flat = leaves_with_paths(params)
  m_flat = leaves_with_paths(masks)
  for (pp, pv), (mp, mv) in zip(p_flat, m_flat):
    if pp != mp:
      raise MaskMismatchError(
          f"mask tree does not match params: first differing path is params '{pp}' vs mask '{mp}'")
    if mv is not None and tuple(jnp.shape(mv)) != tuple(jnp.shape(pv)):
      raise MaskMismatchError(
          f"mask shape {tuple(jnp.shape(mv))} does not match param shape "
          f"{tuple(jnp.shape(pv))} at '{pp}'")
  if len(p_flat) != len(m_flat):
    longer, which = (p_flat, "params") if len(p_flat) > len(m_flat) else (m_flat, "mask")
    extra = longer[min(len(p_flat), len(m_flat))][0]
    raise MaskMismatchError(
        f"mask tree does not match params: '{extra}' exists only in the {which} tree "
        f"({len(p_flat)} param leaves vs {len(m_flat)} mask leaves)")
  if jax.tree.structure(params) != jax.tree.structure(
      jax.tree.map(lambda m: 0, masks, is_leaf=is_none)):
    raise MaskMismatchError("mask tree does not match params: same paths but different container "
                            "types (e.g. dict vs nnx.State); build masks with masks.init(params)")


def _where(m, x):
  return x if m is None else jnp.where(m, x, jnp.zeros((), jnp.result_type(x)))


def apply(params: PyTree, masks: PyTree) -> PyTree:
  """``params`` with pruned entries set to exactly 0; ``None`` mask leaves pass through."""
  check_compatible(params, masks)
  return jax.tree.map(_where, masks, params, is_leaf=is_none)


def counts(masks: PyTree) -> tuple[jax.Array, int]:
  """``(kept, total)`` prunable entries; ``kept`` is a traced int32 scalar, ``total`` a Python
  int."""
  leaves = [m for m in jax.tree.leaves(masks) if m is not None]
  total = int(sum(m.size for m in leaves))
  kept = sum((jnp.sum(m, dtype=jnp.int32) for m in leaves), jnp.zeros((), jnp.int32))
  return kept, total


def sparsity(masks: PyTree) -> jax.Array:
  """Fraction of prunable entries that are pruned, in [0, 1] (a float32 scalar, jit-friendly)."""
  kept, total = counts(masks)
  if total == 0:
    raise ValueError("mask tree has no prunable leaves; sparsity is undefined")
  return 1.0 - kept.astype(jnp.float32) / total


def distance(a: PyTree, b: PyTree) -> jax.Array:
  """Normalised Hamming distance: fraction of prunable entries where ``a`` and ``b`` differ."""
  check_compatible(jax.tree.map(lambda m: jnp.zeros(()) if m is None else m, a, is_leaf=is_none), b)
  pairs = [(x, y) for x, y in zip(jax.tree.leaves(a, is_leaf=is_none),
                                  jax.tree.leaves(b, is_leaf=is_none)) if x is not None]
  if any(y is None for _, y in pairs):
    raise MaskMismatchError("masks disagree on which leaves are prunable")
  total = sum(x.size for x, _ in pairs)
  if total == 0:
    raise ValueError("mask trees have no prunable leaves; distance is undefined")
  differ = sum(jnp.sum(jnp.not_equal(x, y), dtype=jnp.int32) for x, y in pairs)
  return differ.astype(jnp.float32) / total


class LeafSummary(NamedTuple):
  path: str
  shape: tuple[int, ...]
  kept: int
  total: int

  @property
  def sparsity(self) -> float:
    return 1.0 - self.kept / self.total if self.total else 0.0


class Summary(list):
  """Rows of :class:`LeafSummary`; ``str()`` renders an aligned table with a total row."""

  def __str__(self) -> str:
    kept = sum(r.kept for r in self)
    total = sum(r.total for r in self)
    rows = [(r.path, "x".join(map(str, r.shape)), f"{r.kept:,}", f"{r.total:,}",
             f"{100 * r.sparsity:.2f}%") for r in self]
    rows.append(("TOTAL", "", f"{kept:,}", f"{total:,}",
                 f"{100 * (1 - kept / total) if total else 0:.2f}%"))
    head = ("path", "shape", "kept", "total", "sparsity")
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                              for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    return "\n".join(lines)


def summary(masks: PyTree) -> Summary:
  """Per prunable leaf: path, shape, kept, total, sparsity (host-side; prints as a table)."""
  rows = Summary()
  for path, m in leaves_with_paths(masks):
    if m is not None:
      rows.append(LeafSummary(path, tuple(m.shape), int(np.sum(np.asarray(m))), int(m.size)))
  return rows


def save(path: str | os.PathLike, masks: PyTree, *, overwrite: bool = False) -> str:
  """Writes ``masks`` to an ``.npz`` file (no pickle): arrays plus a JSON manifest of leaf paths.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is False.
  """
  path = os.fspath(path)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"refusing to overwrite existing mask file {path!r} "
                          "(pass overwrite=True)")
  flat, _ = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
  manifest, arrays = [], {}
  for i, (p, m) in enumerate(flat):
    manifest.append({"path": _path_names(p), "none": m is None})
    if m is not None:
      arrays[f"leaf_{i}"] = np.asarray(m, dtype=bool)
  arrays["__manifest__"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
  with os.fdopen(fd, "wb") as f:
    np.savez(f, **arrays)
  os.replace(tmp, path)
  return path


def load(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
  """Reads masks written by :func:`save`.

  Args:
    path: the ``.npz`` file.
    like: optional params or mask tree; the result then has exactly its structure (and container
      types, e.g. nnx State). Without it, the result is nested dicts keyed by the saved names.

  Raises:
    FileNotFoundError: no file at ``path``.
    MaskMismatchError: the file does not fit ``like``.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no mask file at {path!r}")
  try:
    with np.load(path, allow_pickle=False) as f:
      manifest = json.loads(bytes(f["__manifest__"]).decode())
      leaves = [None if e["none"] else jnp.asarray(f[f"leaf_{i}"]) for i, e in enumerate(manifest)]
  except (KeyError, ValueError, OSError) as e:
    raise ValueError(f"{path!r} is not a mask file written by lth_jax.masks.save: {e}") from e
  if like is None:
    tree: dict = {}
    for entry, leaf in zip(manifest, leaves):
      node = tree
      for k in entry["path"][:-1]:
        node = node.setdefault(k, {})
      node[entry["path"][-1]] = leaf
    return tree
  like_flat = leaves_with_paths(like)
  saved_paths = ["/".join(e["path"]) for e in manifest]
  if [p for p, _ in like_flat] != saved_paths:
    first = next((a, b) for a, b in zip([p for p, _ in like_flat] + ["<end>"],
                                        saved_paths + ["<end>"]) if a != b)
    raise MaskMismatchError(f"mask file {path!r} does not fit the given tree: first differing "
                            f"path is tree '{first[0]}' vs file '{first[1]}'")
  treedef = jax.tree.structure(like, is_leaf=is_none)
  result = jax.tree.unflatten(treedef, leaves)
  for (p, x), m in zip(like_flat, leaves):
    if m is not None and x is not None and tuple(jnp.shape(x)) != tuple(m.shape):
      raise MaskMismatchError(f"mask file {path!r}: shape {tuple(m.shape)} at '{p}' does not "
                              f"match {tuple(jnp.shape(x))}")
  return result

"""Run reports: metric writers, sample grids, CSV/markdown tables, sparsity plots.

Host-side only (NumPy, Pillow, matplotlib, tensorboardX); nothing here runs on a device. Only the
main process should write: pass ``enabled=jax.process_index() == 0`` to :class:`MetricWriter`.

Result rows are flat dicts, one per (branch, level, seed)::

  {"branch": "ticket", "level": 3, "sparsity": 0.488, "seed": 0, "fid_domain": 41.2}

Example::

  from lth_jax import report
  report.write_csv(rows, workdir + "/results.csv")
  table = report.aggregate(rows, metrics=["fid_domain"])        # mean ± std over seeds
  print(report.markdown_table(table))
  report.plot_metric_vs_sparsity(rows, "fid_domain", workdir + "/fid_vs_sparsity.png")
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorboardX
from PIL import Image

Row = Mapping[str, Any]

JSONL_NAME = "metrics.jsonl"
_COLORS = tuple(f"C{i}" for i in range(10))   # matplotlib's cycle; the dense line is black
_INT_RE = re.compile(r"[-+]?\d+")
_FLOAT_IMAGE_LIMIT = 2.0  # |x| above this means the floats are not in [-1, 1] (e.g. 0..255)


def _is_number(v) -> bool:
  return (isinstance(v, (int, float, np.integer, np.floating))
          and not isinstance(v, (bool, np.bool_)))


def _plain(v, what: str):
  """A Python scalar from a Python/NumPy/JAX scalar (0-d arrays included)."""
  if hasattr(v, "shape") and hasattr(v, "dtype"):
    if np.ndim(v) != 0:
      raise ValueError(f"{what} must be a scalar, got an array of shape {np.shape(v)}.")
    return np.asarray(v).item()
  return v


def _make_parent(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return path


def _columns(rows: Iterable[Row]) -> list[str]:
  """Union of the rows' keys, in order of first appearance."""
  return list(dict.fromkeys(k for row in rows for k in row))


class MetricWriter:
  """Scalars to TensorBoard (tensorboardX) and to ``<workdir>/metrics.jsonl``.

  Each :meth:`write_scalars` call appends one JSON object per line,
  ``{"step": s, <tags>..., <scalars>...}`` (non-finite values are written as ``NaN``/``Infinity``,
  which Python's ``json`` reads back). TensorBoard tags are ``<name>`` or
  ``<name>/<tag>_<value>/...`` (e.g. ``fid/branch_ticket/level_3``; TensorBoard replaces characters
  other than letters, digits and ``_-./`` by ``_``). A resumed run appends.

  Args:
    workdir: directory for the event file and ``metrics.jsonl`` (created if missing).
    enabled: False writes nothing and creates nothing (use on processes other than 0).
  """

  def __init__(self, workdir: str | os.PathLike, *, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._jsonl = None
    if enabled:
      workdir = os.fspath(workdir)
      os.makedirs(workdir, exist_ok=True)
      self._tb = tensorboardX.SummaryWriter(logdir=workdir)
      self._jsonl = open(os.path.join(workdir, JSONL_NAME), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, Any], **tags) -> None:
    """Writes ``scalars`` at ``step``, labelled with ``tags`` (e.g. ``level=3, branch='ticket'``).

    Args:
      step: training step (x axis in TensorBoard).
      scalars: name → Python/NumPy/JAX scalar.
      **tags: name → str/int/float/bool labels stored with the values.

    Raises:
      ValueError: a value is not a scalar number, or a name is used twice (``step``, tags and
        scalars share one JSON object).
    """
    if not self.enabled:
      return
    clash = sorted((set(scalars) & set(tags)) | ({"step"} & (set(scalars) | set(tags))))
    if clash:
      raise ValueError(f"write_scalars: names {clash} are used twice (as 'step', tag or scalar).")
    values = {}
    for name, v in scalars.items():
      v = _plain(v, f"scalar {name!r}")
      if not _is_number(v):
        raise ValueError(f"scalar {name!r} must be a number, got {type(v).__name__} {v!r}.")
      values[name] = int(v) if isinstance(v, (int, np.integer)) else float(v)
    labels = {k: _plain(v, f"tag {k!r}") for k, v in tags.items()}
    suffix = "".join(f"/{k}_{v}" for k, v in labels.items())
    for name, v in values.items():
      self._tb.add_scalar(name + suffix, float(v), int(step))
    self._jsonl.write(json.dumps({"step": int(step), **labels, **values}) + "\n")
    self._jsonl.flush()

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk (``metrics.jsonl`` is flushed per write)."""
    if self.enabled:
      self._tb.flush()
      self._jsonl.flush()

  def close(self) -> None:
    """Flushes and closes both files; later writes are ignored."""
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
      self.enabled = False

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def save_image_grid(images, path: str | os.PathLike, *, nrow: int | None = None,
                    padding: int = 2) -> str:
  """Tiles images into one PNG (grayscale for C=1, RGB for C=3).

  Args:
    images: [N, H, W, C] array, C in {1, 3}: uint8 (written as is) or float in [-1, 1]
      (clipped, then mapped to 0..255). NumPy or JAX.
    path: PNG path (parent directories are created).
    nrow: images per row (default ``ceil(sqrt(N))``).
    padding: black pixels between and around tiles.

  Returns:
    ``path`` as a string. The PNG is ``rows*H + (rows+1)*padding`` pixels high and
    ``nrow*W + (nrow+1)*padding`` wide.

  Raises:
    ValueError: wrong shape, NaN/Inf pixels, or floats far outside [-1, 1] (e.g. 0..255 floats).
    TypeError: integer images other than uint8.
  """
  x = np.asarray(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0:
    raise ValueError(f"save_image_grid({os.fspath(path)!r}): images must be [N, H, W, C] with "
                     f"N >= 1 and C in (1, 3); got shape {x.shape}.")
  if x.dtype != np.uint8:
    if x.dtype.kind in "biu":
      raise TypeError(f"save_image_grid({os.fspath(path)!r}): images must be uint8 or float in "
                      f"[-1, 1]; got {x.dtype}.")
    x = x.astype(np.float32)
    bad = int(np.sum(~np.isfinite(x)))
    if bad:
      raise ValueError(f"save_image_grid({os.fspath(path)!r}): {bad} of {x.size} pixel values are "
                       "NaN or Inf (has the model diverged?); no file written.")
    if np.max(np.abs(x)) > _FLOAT_IMAGE_LIMIT:
      raise ValueError(f"save_image_grid({os.fspath(path)!r}): float images must be in [-1, 1], "
                       f"got values in [{x.min():.3g}, {x.max():.3g}]; pass uint8 for 0..255 data.")
    x = np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  n, h, w, c = x.shape
  cols = nrow or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.zeros((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    top, left = padding + r * (h + padding), padding + q * (w + padding)
    grid[top:top + h, left:left + w] = x[i]
  path = _make_parent(path)
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path, format="PNG")
  return path


def write_csv(rows: Sequence[Row], path: str | os.PathLike) -> str:
  """Writes rows as CSV: columns are the union of keys (first-seen order), missing cells empty.

  Floats are written with ``repr`` (exact round trip); NumPy/JAX scalars become Python scalars.
  Returns ``path`` as a string.
  """
  columns = _columns(rows)
  path = _make_parent(path)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: "" if v is None else _plain(v, f"column {k!r}") for k, v in row.items()})
  return path


def _parse_cell(text: str):
  if text == "":
    return None
  if text in ("True", "False"):
    return text == "True"
  if _INT_RE.fullmatch(text):
    return int(text)
  if "_" not in text:
    try:
      return float(text)
    except ValueError:
      pass
  return text


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads a CSV written by :func:`write_csv`: ints, floats and bools converted, empty → None."""
  with open(path, newline="", encoding="utf-8") as f:
    return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(v, floatfmt: str) -> str:
  v = _plain(v, "table cell")
  if v is None:
    return ""
  if isinstance(v, (float, np.floating)):
    return format(float(v), floatfmt)
  return str(v).replace("|", "\\|")


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None, *,
                   floatfmt: str = ".4g") -> str:
  """A GitHub-markdown table; numeric columns right-aligned, floats formatted with ``floatfmt``.

  Args:
    rows: the rows (missing keys give empty cells).
    columns: columns to show, in order (default: union of keys, first-seen order).
    floatfmt: ``format`` spec for floats.

  Returns:
    The table, lines joined by ``\\n`` (no trailing newline).

  Raises:
    ValueError: there are no columns.
  """
  columns = list(_columns(rows) if columns is None else columns)
  if not columns:
    raise ValueError("markdown_table: no columns (empty rows and no `columns` given).")
  numeric = [all(_is_number(_plain(r[c], c)) for r in rows if r.get(c) is not None)
             and any(r.get(c) is not None for r in rows) for c in columns]
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
  lines += ["| " + " | ".join(_cell(r.get(c), floatfmt) for c in columns) + " |" for r in rows]
  return "\n".join(lines)


def _same(a, b) -> bool:
  return a == b or (_is_number(a) and _is_number(b) and math.isnan(a) and math.isnan(b))


def aggregate(rows: Sequence[Row], *, metrics: str | Sequence[str],
              by: str | Sequence[str] = ("branch", "level"),
              over: str = "seed") -> list[dict[str, Any]]:
  """Mean and standard deviation of ``metrics`` over ``over`` (seeds) within ``by`` groups.

  Args:
    rows: result rows.
    metrics: metric column(s) to aggregate.
    by: grouping column(s); groups keep their first-seen order.
    over: the column averaged over (each value at most once per group).

  Returns:
    One row per group: the ``by`` columns, every other column that is constant within the
    group (e.g. ``sparsity``), ``<metric>_mean``, ``<metric>_std`` (ddof=1 if n > 1, else 0;
    NaN values propagate) for each metric present in the group, and ``n`` (rows in the group).

  Raises:
    ValueError: a row lacks a ``by`` column, an ``over`` value repeats within a group, or a metric
      is present in only some rows of a group.
  """
  metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
  by = (by,) if isinstance(by, str) else tuple(by)
  groups: dict[tuple, list[Row]] = {}
  for row in rows:
    missing = [k for k in by if k not in row]
    if missing:
      raise ValueError(f"aggregate: row {dict(row)} lacks grouping column(s) {missing}.")
    groups.setdefault(tuple(row[k] for k in by), []).append(row)
  out = []
  for key, members in groups.items():
    where = ", ".join(f"{k}={v}" for k, v in zip(by, key))
    seen = [m.get(over) for m in members]
    repeated = sorted({str(s) for s in seen if seen.count(s) > 1})
    if repeated:
      raise ValueError(f"aggregate: {over}={repeated} appears more than once for {where}.")
    result: dict[str, Any] = dict(zip(by, key))
    for column in _columns(members):
      if column in by or column == over or column in metrics:
        continue
      values = [m.get(column) for m in members]
      if all(_same(v, values[0]) for v in values):
        result[column] = values[0]
    for metric in metrics:
      values = [m.get(metric) for m in members]
      present = [float(_plain(v, metric)) for v in values if v is not None]
      if not present:
        continue
      if len(present) != len(values):
        raise ValueError(f"aggregate: metric {metric!r} is missing in {len(values) - len(present)}"
                         f" of {len(values)} rows for {where}.")
      arr = np.asarray(present, np.float64)
      result[f"{metric}_mean"] = float(arr.mean())
      result[f"{metric}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    result["n"] = len(members)
    out.append(result)
  return out


def plot_metric_vs_sparsity(rows: Sequence[Row], metric: str, path: str | os.PathLike, *,
                            branches_order: Sequence[str] | None = None,
                            title: str | None = None, dense_branch: str = "dense") -> str:
  """Metric against the percent of weights remaining (log axis, decreasing), one line per branch.

  Rows of branch ``dense_branch`` are drawn as a horizontal line (their mean) with a ±1 std band;
  every other row needs ``level`` and ``sparsity`` (fraction pruned, in [0, 1)). Branches with
  several seeds per level get ±1 std error bars (std over seeds, ddof=1). Uses matplotlib's Agg
  canvas directly (no pyplot, no global backend change).

  Args:
    rows: result rows (one per branch, level and seed).
    metric: the metric column (y axis).
    path: PNG path (parent directories are created); about 40 KB.
    branches_order: legend (and colour) order; default: the order branches first appear in
      ``rows`` (the lottery search's configured order); names not listed come after, sorted.
    title: figure title.
    dense_branch: branch name of the dense reference rows.

  Returns:
    ``path`` as a string.

  Raises:
    ValueError: no row has ``metric``, or a row lacks ``level``/``sparsity`` or has a sparsity
      outside [0, 1).
  """
  rows = [r for r in rows if r.get(metric) is not None]
  if not rows:
    raise ValueError(f"plot_metric_vs_sparsity: no row has a value for {metric!r}.")
  dense = [r for r in rows if r.get("branch") == dense_branch]
  pruned = [r for r in rows if r.get("branch") != dense_branch]
  for r in pruned:
    if "level" not in r or "sparsity" not in r or not 0.0 <= float(r["sparsity"]) < 1.0:
      raise ValueError(f"plot_metric_vs_sparsity: row {dict(r)} needs 'level' and a 'sparsity' "
                       "in [0, 1).")
  table = aggregate(pruned, metrics=(metric, "sparsity"), by=("branch", "level"))
  names = list(dict.fromkeys(r["branch"] for r in table))
  order = list(branches_order) if branches_order is not None else names
  names = [b for b in order if b in names] + sorted(b for b in names if b not in order)

  # Imported here: matplotlib takes ~1 CPU-s to import, which every binary would pay at start-up
  # (also the runs refused for bad input) although only finished stages plot.
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  from matplotlib import figure  # pylint: disable=g-import-not-at-top

  fig = figure.Figure(figsize=(6.4, 4.2), dpi=100)
  backend_agg.FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  xs_all = []
  for i, name in enumerate(names):
    points = sorted((r for r in table if r["branch"] == name), key=lambda r: r["sparsity_mean"])
    x = np.array([100.0 * (1.0 - r["sparsity_mean"]) for r in points])
    y = np.array([r[f"{metric}_mean"] for r in points])
    err = np.array([r[f"{metric}_std"] for r in points])
    color = _COLORS[i % len(_COLORS)]
    several = any(r["n"] > 1 for r in points)
    ax.errorbar(x, y, yerr=err if several else None, color=color, marker="o", markersize=3.5,
                linewidth=1.3, capsize=2.5 if several else 0, label=name)
    xs_all.extend(x.tolist())
  if dense:
    (ref,) = aggregate(dense, metrics=metric, by="branch")
    mean, std = ref[f"{metric}_mean"], ref[f"{metric}_std"]
    ax.axhline(mean, color="black", linestyle="--", linewidth=1.0, label=dense_branch)
    if std > 0:
      ax.axhspan(mean - std, mean + std, color="black", alpha=0.1, linewidth=0)
  ax.set_xscale("log")
  if xs_all:
    ticks = sorted(set(round(v, 6) for v in xs_all), reverse=True)
    ticks = ticks[::math.ceil(len(ticks) / 10)]
    ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlim(max(xs_all) * 1.15, min(xs_all) / 1.15)  # decreasing left to right
  ax.set_xlabel("weights remaining (%)")
  ax.set_ylabel(metric)
  if title:
    ax.set_title(title)
  ax.grid(True, which="major", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = _make_parent(path)
  fig.savefig(path, format="png")
  return path

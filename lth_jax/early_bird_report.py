"""The reports of an early-bird run (:mod:`lth_jax.early_bird`): derived rows and the summary.

Rows are plain dicts with a ``run`` (``dense``, ``eb_search``, ``eb_ticket``, ``eb_total``,
``scratch``, ``imp``) and a ``seed``; :func:`write_reports` writes ``results.csv`` and
``summary.md``.
"""

from __future__ import annotations

import os

from lth_jax import report


def total_row(search_row: dict, ticket_row: dict) -> dict:
  """The ``eb_total`` row: search + ticket steps, FLOPs and seconds; the ticket's other columns."""
  row = {"run": "eb_total", "seed": search_row["seed"],
         "steps": search_row["steps"] + ticket_row["steps"],
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


_RATIO_OF = {"train_flops": "flops_vs_dense", "train_seconds": "seconds_vs_dense",
             "train_cpu_seconds": "cpu_seconds_vs_dense", "metric": "metric_vs_dense"}
RATIOS = tuple(_RATIO_OF.values())


def with_ratios(row: dict, dense_row: dict, metric: str) -> dict:
  """``row`` plus its training FLOPs, seconds, CPU seconds and metric as ratios to dense's."""
  row = dict(row)
  for key, ratio in _RATIO_OF.items():
    key = metric if key == "metric" else key
    if key in row:
      row[ratio] = row[key] / dense_row[key]
  return row


def write_reports(workdir: str, rows: list[dict], metric: str, *, kind: str) -> str:
  """``results.csv`` (every seed's rows) and ``summary.md`` (the rows, their mean ± std over
  seeds when there are several, and the ratios in words); returns the summary."""
  report.write_csv(rows, os.path.join(workdir, "results.csv"))
  columns = ["run", "seed", "steps", "sparsity", "widths", "params", "sample_flops",
             "step_flops", "train_flops", "train_seconds", "train_cpu_seconds", metric,
             *RATIOS]
  values = ["steps", "eb_step", "sparsity", "train_flops", "train_seconds", "train_cpu_seconds",
            metric, *RATIOS]
  mean = {r["run"]: r for r in report.aggregate(
      [{k: v for k, v in r.items() if k != "widths"} for r in rows],
      metrics=[v for v in values if any(v in r for r in rows)], by="run", over="seed")}
  get = lambda run, key: mean[run][key + "_mean"]
  searches = [r for r in rows if r["run"] == "eb_search"]
  drawn = [r["eb_step"] for r in searches if r["drawn"]]
  missed = [r["seed"] for r in searches if not r["drawn"]]
  lines = [f"# Early-bird ticket ({kind}): {os.path.basename(os.path.abspath(workdir))}", "",
           f"Ticket drawn at step {', '.join(map(str, drawn)) or '-'}"
           + (f"; NOT drawn for seed(s) {missed} (newest mask used)" if missed else "")
           + "; FLOPs per sample are forward passes of the sampling network (G / decoder); "
           "train FLOPs use the 3x-forward convention of `lth_jax.flops`; seconds are measured "
           "wall-clock, CPU seconds the process's CPU time (compilation included, evaluation "
           "excluded; a group of tickets trained together shares its time evenly). Metric: "
           f"`{metric}` (lower is better).", "",
           report.markdown_table(rows, [c for c in columns if any(c in r for r in rows)],
                                 floatfmt=".4g"), ""]
  if len({r["seed"] for r in rows}) > 1:
    stats = [c for v in values for c in (v + "_mean", v + "_std")
             if any(c in r for r in mean.values())]
    lines += ["Mean ± std over seeds (n = runs per row):", "",
              report.markdown_table(list(mean.values()), ["run", "n", *stats], floatfmt=".4g"),
              ""]
  if "flops_vs_dense_mean" in mean.get("eb_total", {}):
    lines += [f"Search + ticket vs dense training: train FLOPs "
              f"x{get('eb_total', 'flops_vs_dense'):.3f} "
              f"({100 * (1 - get('eb_total', 'flops_vs_dense')):.1f}% fewer), wall-clock "
              f"x{get('eb_total', 'seconds_vs_dense'):.3f} (CPU time "
              f"x{get('eb_total', 'cpu_seconds_vs_dense'):.3f}), {metric} "
              f"x{get('eb_total', 'metric_vs_dense'):.3f}.", ""]
  if "scratch" in mean and metric + "_mean" in mean["scratch"]:
    lines += [f"The ticket's architecture from a new init, {get('scratch', 'steps'):.0f} steps: "
              f"{metric} {get('scratch', metric):.4g} (early-bird ticket "
              f"{get('eb_total', metric):.4g}).", ""]
  if "imp" in mean and metric + "_mean" in mean["imp"]:
    levels = next(r["levels"] for r in rows if r["run"] == "imp")
    lines += [f"IMP to level {levels}, sparsity {get('imp', 'sparsity'):.3f}: "
              f"{get('imp', 'train_seconds'):.4g} s of training "
              f"({get('imp', 'train_seconds') / get('eb_total', 'train_seconds'):.2f}x the "
              f"early-bird search + ticket), {get('imp', 'train_flops'):.4g} training FLOPs, "
              f"{metric} {get('imp', metric):.4g}.", ""]
  summary = "\n".join(lines)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(summary)
  return summary

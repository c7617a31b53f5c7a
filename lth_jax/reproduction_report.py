"""Tables, plots and verdicts of the reproduction (``docs/results/``), from finished jobs.

Every claim's section is computed from its jobs' result files only, so the page can be rebuilt
at any time (``experiments/reproduce.py`` does it after running). Metrics are lower-is-better
(FID, reconstruction MSE); a table cell is ``mean ± std`` over seeds (ddof 1).

Rules (stated again on the page):

* **wins** (claim 1): at a level, the ticket's mean is within the dense model's seed spread
  (``<= dense mean + dense std``) and below both random baselines' means.
* A claim **held** when its comparison holds at every compared point, **partly held** at some,
  **did not hold** at none (claim 6's points are the families: one holds when both of Table 2's
  targets meet at some channel sparsity; claim 7's too: one holds when its winning levels are
  the more stable, and is **undecided** when all its levels win or none). A claim with an
  unfinished job gets **no verdict yet**: its tables show what has run so far.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Sequence
from typing import NamedTuple

from lth_jax import configs
from lth_jax import families
from lth_jax import job_queue
from lth_jax import lottery
from lth_jax import report
from lth_jax import reproduction
from lth_jax import reproduction_status
from lth_jax import runs


def paper_winning(family: str) -> float:
  """The paper's Table 1 winning-ticket sparsity (%) of ``family`` (its ``Reproduction``)."""
  return families.get(family).reproduction.winning


class Section(NamedTuple):
  claim: int
  title: str
  verdict: str           # 'held' | 'partly held' | 'did not hold' | 'not run'
  body: str              # Markdown: tables and the numbers that decide
  rows: list[dict]       # written to docs/results/claim<N>.csv


def verdict(holds: Sequence[bool]) -> str:
  """'held' if all, 'partly held' if some, 'did not hold' if none ('not run' if empty)."""
  if not holds:
    return "not run"
  return "held" if all(holds) else "partly held" if any(holds) else "did not hold"


def _mean_table(rows: list[dict], metric: str, by=("level", "branch")) -> dict[tuple, dict]:
  return {tuple(r[k] for k in by): r
          for r in report.aggregate(rows, metrics=(metric, "sparsity"), by=by)}


def _cell(stats: dict | None, metric: str) -> str:
  if stats is None:
    return "-"
  return f"{stats[metric + '_mean']:.4g} ± {stats[metric + '_std']:.2g}"


def search_rows(workdir: str, name: str) -> tuple[list[dict], str]:
  """(rows, metric) of a finished search job (empty if it has no finished level)."""
  try:
    return lottery.load_results(os.path.join(workdir, name))
  except FileNotFoundError:
    return [], ""


def level_table(rows: list[dict], metric: str, branches: Sequence[str]) -> tuple[str, dict]:
  """Markdown: one row per level, one column per branch (mean ± std); and the stats."""
  stats = _mean_table(rows, metric)
  levels = sorted({r["level"] for r in rows if r["level"] > 0})
  dense = stats.get((0, "dense"))
  lines = [f"| level | pruned % | dense | {' | '.join(branches)} |",
           "|---:|---:|---|" + "---|" * len(branches)]
  for level in levels:
    sparsity = next(s["sparsity_mean"] for k, s in stats.items() if k[0] == level)
    cells = [_cell(stats.get((level, b)), metric) for b in branches]
    lines.append(f"| {level} | {100 * sparsity:.1f} | {_cell(dense, metric)} | "
                 f"{' | '.join(cells)} |")
  return "\n".join(lines), stats


def winning_levels(stats: dict, metric: str) -> list[tuple[int, float, bool]]:
  """``(level, sparsity, wins)`` for every level with the ticket and both random baselines."""
  dense = stats[(0, "dense")]
  limit = dense[metric + "_mean"] + dense[metric + "_std"]
  out = []
  for (level, branch), s in sorted(stats.items()):
    if branch != "ticket" or level == 0:
      continue
    rivals = [stats.get((level, b)) for b in ("random_reinit", "random_pruning")]
    if None in rivals:
      continue
    mean = s[metric + "_mean"]
    wins = mean <= limit and all(mean < r[metric + "_mean"] for r in rivals)
    out.append((level, s["sparsity_mean"], wins))
  return out


KID = "kid_fmnist_clf"


def _kid_check(rows: list[dict]) -> str:
  """Markdown: claim 1's table again in KID (same feature space as the FID), with the levels the
  ticket wins by it; empty for families without KID (the AutoEncoders)."""
  rows = [r for r in rows if r.get(KID) is not None]
  if not rows or not any(r["level"] == 0 for r in rows):
    return ""
  table, stats = level_table(rows, KID, reproduction.CLAIM_BRANCHES)
  won = [lv for lv, _, w in winning_levels(stats, KID) if w]
  return (f"The same runs in `{KID}` (the wins rule applied to KID; the verdict uses the FID):"
          f"\n\n{table}\n\nWinning levels by KID: {won or 'none'}.\n\n")


def _dense_grid(workdir: str, results_dir: str, family: str) -> str:
  """Copies the search's level-0 grid (the first dense model's samples; an AutoEncoder's: test
  images above their reconstructions) to ``dense_<family>.png``; Markdown showing it."""
  grid = os.path.join(workdir, f"search_{family}", "samples_level0.png")
  if not os.path.exists(grid):
    return ""
  shutil.copyfile(grid, os.path.join(results_dir, f"dense_{family}.png"))
  what = "samples" if families.get(family).primary_metric == "fid" else \
      "test images (top half) and their reconstructions"
  return f"The dense model's {what} (seed 0):\n\n![{family} dense](dense_{family}.png)\n"


def claim1(workdir: str, results_dir: str) -> Section:
  body, holds, csv = [], [], []
  for family in reproduction.claim_families(1):
    rows, metric = search_rows(workdir, f"search_{family}")
    if not rows:
      continue
    csv += [{"family": family, "metric": metric, **r} for r in rows
            if r["branch"] in ("dense",) + reproduction.CLAIM_BRANCHES]
    grid = _dense_grid(workdir, results_dir, family)
    table, stats = level_table(rows, metric, reproduction.CLAIM_BRANCHES)
    if not any(r["level"] > 0 for r in rows):
      body.append(f"### {family} (`{metric}`)\n\nOnly the dense models have trained so far: "
                  f"{_cell(stats.get((0, 'dense')), metric)}.\n\n{grid}")
      continue
    levels = winning_levels(stats, metric)
    won = [100 * s for _, s, w in levels if w]
    holds.append(bool(won) and max(won) >= paper_winning(family))
    report.plot_metric_vs_sparsity(
        [r for r in rows if r["branch"] in ("dense",) + reproduction.CLAIM_BRANCHES], metric,
        os.path.join(results_dir, f"claim1_{family}.png"), title=f"{family}: {metric}")
    best = f"{max(won):.1f}%" if won else "none"
    body.append(f"### {family} (`{metric}`)\n\n{table}\n\nHighest winning sparsity: "
                f"**{best}** (paper, Table 1: {paper_winning(family)}%). Winning levels: "
                f"{[lv for lv, _, w in levels if w] or 'none'}.\n\n"
                f"{_kid_check(rows)}![{family}](claim1_{family}.png)\n\n{grid}")
  return Section(1, reproduction.CLAIMS[1][0], verdict(holds), "\n".join(body), csv)


def _beats(stats: dict, metric: str, mine: tuple, theirs: Sequence[tuple]) -> bool | None:
  if mine not in stats or any(t not in stats for t in theirs):
    return None
  return all(stats[mine][metric + "_mean"] < stats[t][metric + "_mean"] for t in theirs)


def claim2(workdir: str, results_dir: str) -> Section:
  body, holds, csv = [], [], []
  for family in reproduction.claim_families(2):
    rows, metric = search_rows(workdir, f"search_{family}")
    rows = [r for r in rows if r["branch"] in ("dense", "ticket") + reproduction.INIT_BRANCHES]
    if not any(r["branch"] in reproduction.INIT_BRANCHES for r in rows):
      continue
    csv += [{"family": family, "metric": metric, **r} for r in rows]
    table, stats = level_table(rows, metric, ("ticket",) + reproduction.INIT_BRANCHES)
    per_level = {lv: _beats(stats, metric, (lv, "ticket"),
                            [(lv, b) for b in reproduction.INIT_BRANCHES])
                 for lv in sorted({k[0] for k in stats if k[0] > 0})}
    compared = [v for v in per_level.values() if v is not None]
    holds += compared
    body.append(f"### {family} (`{metric}`)\n\n{table}\n\nThe ticket beats SNIP, GraSP and "
                f"SynFlow at {sum(compared)} of {len(compared)} levels.\n")
  return Section(2, reproduction.CLAIMS[2][0], verdict(holds), "\n".join(body), csv)


def _paired(workdir: str, family: str, mine: str, theirs: str, branch_mine: str,
            branch_theirs: str) -> tuple[list[bool], str, list[dict]]:
  """Level by level: does ``mine``'s branch beat ``theirs``'? (holds, Markdown, rows)."""
  a, metric = search_rows(workdir, mine)
  b, _ = search_rows(workdir, theirs)
  if not a or not b:
    return [], "", []
  sa, sb = _mean_table(a, metric), _mean_table(b, metric)
  lines = [f"| level | pruned % ({mine}) | {mine}: {branch_mine} | pruned % ({theirs}) | "
           f"{theirs}: {branch_theirs} | better |", "|---:|---:|---|---:|---|---|"]
  holds = []
  for level in sorted({k[0] for k in sa if k[0] > 0} & {k[0] for k in sb if k[0] > 0}):
    x, y = sa.get((level, branch_mine)), sb.get((level, branch_theirs))
    if x is None or y is None:
      continue
    better = x[metric + "_mean"] < y[metric + "_mean"]
    holds.append(better)
    lines.append(f"| {level} | {100 * x['sparsity_mean']:.1f} | {_cell(x, metric)} | "
                 f"{100 * y['sparsity_mean']:.1f} | {_cell(y, metric)} | "
                 f"{branch_mine if better else branch_theirs} |")
  rows = [{"family": family, "search": mine, **r} for r in a] + [
      {"family": family, "search": theirs, **r} for r in b]
  return holds, f"### {family} (`{metric}`)\n\n" + "\n".join(lines) + "\n", rows


def claim3(workdir: str, results_dir: str) -> Section:
  holds, body, csv = [], [], []
  for family in reproduction.claim_families(3):
    h, text, rows = _paired(workdir, family, f"search_{family}", f"search_{family}_rewind0",
                            "ticket", "ticket")
    holds += h
    if text:
      body.append(text)
    csv += rows
  return Section(3, reproduction.CLAIMS[3][0], verdict(holds), "\n".join(body), csv)


def claim4(workdir: str, results_dir: str) -> Section:
  holds, body, csv = [], [], []
  for family in reproduction.claim_families(4):
    for part in families.get(family).parts:
      h, text, rows = _paired(workdir, family, f"search_{family}", f"search_{family}_only_{part}",
                              "ticket", "ticket")
      holds += h
      if text:
        body.append(text.replace("###", f"### both halves vs only the {part}:", 1))
      csv += rows
    rows, metric = search_rows(workdir, f"search_{family}")
    if rows and any(r["branch"] == "one_shot" for r in rows):
      csv += [{"family": family, "search": f"search_{family}", **r} for r in rows
              if r["branch"] in ("dense", "ticket", "one_shot")]
      table, stats = level_table(rows, metric, ("ticket", "one_shot"))
      iterative = [_beats(stats, metric, (lv, "ticket"), [(lv, "one_shot")])
                   for lv in sorted({k[0] for k in stats if k[0] > 1})]
      holds += [v for v in iterative if v is not None]
      body.append(f"### {family}: iterative (ticket) vs one-shot (`{metric}`; level 1 is the "
                  f"same mask)\n\n{table}\n")
  return Section(4, reproduction.CLAIMS[4][0], verdict(holds), "\n".join(body), csv)


def claim5(workdir: str, results_dir: str) -> Section:
  holds, body, csv = [], [], []
  for direction in configs.TRANSFER_DIRECTIONS:
    path = os.path.join(workdir, f"transfer_{direction}", "results.csv")
    if not os.path.exists(path):
      continue
    rows = report.read_csv(path)
    metric = next(k for k in rows[0] if k.startswith("fid_"))
    csv += [{"direction": direction, **r} for r in rows]
    table, stats = level_table(rows, metric, ("transferred",) + reproduction.CLAIM_BRANCHES)
    for level in sorted({k[0] for k in stats if k[0] > 0}):
      moved, own = stats.get((level, "transferred")), stats.get((level, "ticket"))
      rivals = [stats.get((level, b)) for b in ("random_reinit", "random_pruning")]
      if moved is None or own is None or None in rivals:
        continue
      holds.append(moved[metric + "_mean"] <= own[metric + "_mean"] + own[metric + "_std"]
                   and all(moved[metric + "_mean"] < r[metric + "_mean"] for r in rivals))
    config = runs.read_json(os.path.join(os.path.dirname(path), "config.json"))
    recipe = (f"Both sides: z_dim {config['model']['z_dim']}, {config['train']['steps']} steps, "
              f"batch {config['train']['batch_size']} (one recipe for both directions, so the "
              "second copies the first's searches).")
    body.append(f"### {direction} (`{metric}`, in the target family)\n\n{recipe}\n\n{table}\n")
  return Section(5, reproduction.CLAIMS[5][0], verdict(holds), "\n".join(body), csv)


def claim6(workdir: str, results_dir: str) -> Section:
  """Per family and channel sparsity: FLOPs cut, wall-clock and FID ratios to dense. The claim
  holds for a family when both of the paper's targets meet at some sparsity."""
  lines = ["| family | channels pruned | FLOPs cut | wall ratio | FID ratio (EB) | "
           "FID ratio (same widths, scratch) | both targets |",
           "|---|---:|---:|---:|---|---|---|"]
  met_at: dict[str, list[float]] = {}
  csv = []
  for family in reproduction.claim_families(6):
    for sparsity in reproduction.EB_SPARSITIES:
      path = os.path.join(workdir, f"early_bird_{family}_{sparsity:g}", "results.csv")
      if not os.path.exists(path):
        continue
      rows = report.read_csv(path)
      csv += [{"family": family, "channel_sparsity": sparsity, **r} for r in rows]
      agg = {r["run"]: r for r in report.aggregate(
          [r for r in rows if r["run"] in ("eb_total", "scratch")],
          metrics=("flops_vs_dense", "seconds_vs_dense", "metric_vs_dense"), by="run")}
      total, scratch = agg["eb_total"], agg.get("scratch")
      cut = 1 - total["flops_vs_dense_mean"]
      met = cut >= 0.88 and total["metric_vs_dense_mean"] <= 1.10
      met_at.setdefault(family, [])
      if met:
        met_at[family].append(sparsity)
      lines.append(f"| {family} | {sparsity} | {100 * cut:.1f}% | "
                   f"{total['seconds_vs_dense_mean']:.3f} | {_cell(total, 'metric_vs_dense')} | "
                   f"{_cell(scratch, 'metric_vs_dense')} | {'yes' if met else 'no'} |")
  where = "; ".join(f"{f}: {', '.join(map(str, s)) if s else 'nowhere'}"
                    for f, s in met_at.items())
  body = ("\n".join(lines) + "\n\nTargets (the paper's Table 2): ≥ 88% fewer training FLOPs and "
          "FID within 10% of dense (FID ratio ≤ 1.10, the mean over seeds); the claim holds for "
          "a family when both meet at some channel sparsity. Where they meet: "
          f"{where or 'nothing has run'}.\n")
  return Section(6, reproduction.CLAIMS[6][0], verdict([bool(s) for s in met_at.values()]),
                 body, csv)


def claim7(workdir: str, results_dir: str) -> Section:
  """Instability per level (mean ± std over seeds) beside whether the ticket wins there. The
  claim tested (Frankle et al., 2020, for IMP with rewinding): winning tickets are the stable
  ones, i.e. a family's mean instability over its winning levels is below the mean over its
  other levels (a family whose levels all win, or none, does not decide)."""
  body, csv, holds = [], [], []
  for family in reproduction.claim_families(7):
    path = os.path.join(workdir, f"stability_{family}", "stability.csv")
    rows, metric = search_rows(workdir, f"search_{family}")
    if not os.path.exists(path) or not rows:
      continue
    points = report.read_csv(path)
    csv += [{"family": family, **r} for r in points]
    once = [r for r in points if r["alpha"] == 0.0]        # one instability per (level, seed)
    per_level = {r["level"]: r for r in report.aggregate(once, metrics=("instability",),
                                                         by="level")}
    wins = {lv: w for lv, _, w in winning_levels(_mean_table(rows, metric), metric)}
    lines = ["| level | instability (mean ± std) | ticket wins |", "|---:|---|---|"]
    for level, r in sorted(per_level.items()):
      lines.append(f"| {level} | {_cell(r, 'instability')} | {wins.get(level, '-')} |")
    groups = {w: [per_level[lv]["instability_mean"] for lv in per_level if wins.get(lv) is w]
              for w in (True, False)}
    mean = {w: sum(v) / len(v) for w, v in groups.items() if v}
    if len(mean) == 2:
      holds.append(mean[True] < mean[False])
    text = {w: f"{mean[w]:.4g} over {len(groups[w])} levels" if w in mean else "no level"
            for w in (True, False)}
    body.append(f"### {family} (`{metric}`)\n\n" + "\n".join(lines) + "\n\nMean "
                f"instability where the ticket wins: {text[True]}; where it does not: "
                f"{text[False]}.\n")
  if body:
    body.append("Tested: winning tickets are the stable ones (a family's mean instability over "
                "its winning levels below the mean over its other levels; a family whose levels "
                "all win, or none, does not decide).\n")
  decided = verdict(holds) if holds else "undecided" if body else "not run"
  return Section(7, reproduction.CLAIMS[7][0], decided, "\n".join(body), csv)


SECTIONS = {1: claim1, 2: claim2, 3: claim3, 4: claim4, 5: claim5, 6: claim6, 7: claim7}


def feature_spaces_used(workdir: str) -> str:
  """The page's sentence naming the feature space every job's FID/KID was measured in (each
  run directory's ``runs.FEATURE_SPACE_FILE``).

  Raises:
    ValueError: jobs measured in one feature space with different weights (e.g. a job made on
      another machine whose classifier was trained there): their numbers do not compare.
  """
  used: dict[tuple[str, str], list[str]] = {}
  # A job's runs write it in the job's directory or one below (a transfer's source/, target/);
  # a recursive walk would also list every checkpoint file.
  paths = [p for depth in (("*",), ("*", "*"))
           for p in glob.glob(os.path.join(workdir, *depth, runs.FEATURE_SPACE_FILE))]
  for path in sorted(paths):
    record = runs.read_json(path)
    used.setdefault((record["name"], record["weights_sha256"]), []).append(
        os.path.relpath(os.path.dirname(path), workdir))
  names = [name for name, _ in used]
  clash = sorted({name for name in names if names.count(name) > 1})
  if clash:
    sets = "; ".join(f"weights {sha}: {', '.join(dirs)}" for (name, sha), dirs in used.items()
                     if name in clash)
    raise ValueError(f"the jobs' metrics were measured in feature space {', '.join(clash)} "
                     f"with different weights ({sets}): their numbers do not compare; rerun one "
                     "set's jobs with the other's weights file")
  return " ".join(f"FID/KID in feature space `{name}`, weights `{sha}` (first 12 hex digits of "
                  "the file's SHA-256), for every job." for name, sha in used)


def write(workdir: str, results_dir: str, claims: Sequence[int], scale: str,
          command: str) -> str:
  """Writes ``claim<N>.csv``, plots and ``README.md`` into ``results_dir``; returns the page.

  Raises:
    ValueError: the jobs' metrics come from different feature-space weights
      (:func:`feature_spaces_used`); nothing is written then.
  """
  measured_in = feature_spaces_used(workdir)
  os.makedirs(results_dir, exist_ok=True)
  sections = []
  for c in claims:
    section = SECTIONS[c](workdir, results_dir)
    jobs = reproduction.jobs_for([c], scale)
    unfinished = [j for j in jobs if not job_queue.job_finished(j, workdir)]
    if unfinished:
      listed = ", ".join(f"{j.name} ({reproduction_status.progress(j, workdir, jobs)})"
                         for j in unfinished)
      section = section._replace(
          verdict=f"no verdict yet ({len(unfinished)} of {len(jobs)} jobs unfinished)",
          body=f"Unfinished: {listed}.\n\n" + (
              section.body if section.rows else "Nothing has run yet."))
    elif not section.rows:
      section = section._replace(body="Not run yet.")
    sections.append(section)
  times, total = [], [0.0, 0.0]
  for job in reproduction.jobs_for(list(claims), scale):
    path = os.path.join(workdir, job.name, job_queue.JOB_TIME)
    if os.path.exists(path):
      t = runs.read_json(path)
      times.append(f"| {job.name} | {t['wall_s'] / 3600:.2f} | {t['cpu_s'] / 3600:.2f} | "
                   f"{', '.join(t.get('devices', [])) or '-'} |")
      total = [total[0] + t["wall_s"], total[1] + t["cpu_s"]]
  if times:
    times.append(f"| **total** | {total[0] / 3600:.2f} | {total[1] / 3600:.2f} | |")
  lines = [f"# Reproduction of Kalibhat, Balaji & Feizi (AAAI 2021), scale `{scale}`", "",
           f"Command: `{command}`", "",
           "| claim | verdict |", "|---|---|"]
  lines += [f"| {s.claim}. {s.title} | **{s.verdict}** |" for s in sections]
  lines += ["", __doc__.split("Rules (stated again on the page):", 1)[1].strip(), ""]
  lines += ["## Scale", "", f"Data: Fashion-MNIST (32x32x1) for every family (the paper: "
            "CIFAR-10, CelebA, MNIST). Each level prunes the `rate` of the remaining weights "
            f"(the paper: 20%). {reproduction.SCALE_WHY[scale]} {measured_in}".rstrip(), "",
            "| family | width | steps | batch | rate | levels (pruned %) | rewind | seeds |",
            "|---|---:|---:|---:|---:|---|---|---|"]
  for family in reproduction.claim_families(1):
    c = reproduction.base_config(family, scale)
    lines.append(f"| {family} | {c.model.width} | {c.train.steps} | {c.train.batch_size} | "
                 f"{c.lottery.rate:.2f} | {c.lottery.levels} "
                 f"({100 * (1 - (1 - c.lottery.rate) ** c.lottery.levels):.1f}%) | "
                 f"{c.lottery.rewind_step} | {len(c.tickets.seeds)} |")
  lines.append("")
  for s in sections:
    if s.rows:
      report.write_csv(s.rows, os.path.join(results_dir, f"claim{s.claim}.csv"))
    lines += [f"## {s.claim}. {s.title}: {s.verdict}", "", s.body, ""]
  lines += ["## Compute", "", "Wall-clock and process CPU time of each job, summed over its "
            "resumptions, and the devices it ran on ('-': not recorded, before 2026-11-28's "
            "twelfth session; those ran on this 2-core CPU).", "",
            "| job | wall hours | CPU hours | devices |", "|---|---:|---:|---|", *times, ""]
  page = "\n".join(lines)
  with open(os.path.join(results_dir, "README.md"), "w") as f:
    f.write(page)
  return page

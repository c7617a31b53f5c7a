r"""Benchmark: early-bird tickets (structured by default) vs dense training on Fashion-MNIST.

  python benchmarks/early_bird.py --families=vae --seeds=0,1,2 --sparsities=0.75 \
      --part_sparsity=vae:decoder=0.65,encoder=0.8                  # BENCHMARKS.md's VAE rows
  python benchmarks/early_bird.py --families=dcgan --seeds=0,1,2 --sparsities=0.75  # DCGAN rows
  python benchmarks/early_bird.py --families=vae --width=32 --steps=1000 --sparsities=0.75  # quick

For each family, :func:`lth_jax.early_bird.run` trains the dense model for ``--steps`` steps, then
runs the early-bird search (dense training with the BatchNorm L1 penalty, a channel mask every
``--interval`` steps, drawn when the last ``--window`` masks are within ``--epsilon``), copies the
surviving channels into a physically smaller model and trains it for the remaining steps, so both
runs take the same number of steps; with ``--scratch`` (default) the ticket's widths also train
from a new init for all steps, with ``--imp_levels`` IMP runs beside it. ``--kind=unstructured``
draws a magnitude mask instead, trained masked at full size (its FLOPs count nonzero weights).
Several ``--seeds`` train together through the ticket runner (a group's time is split evenly over
its seeds). Wall-clock includes compilation on both sides and excludes evaluation. Targets (the
paper's Table 2 scale of savings):

* total training FLOPs (search + ticket) at least 88% below dense training's;
* total wall-clock at most 40% of dense training's;
* the metric (FID in the Fashion-MNIST classifier's features) within 10% of the dense model's.

Ratios are printed last. Results go to BENCHMARKS.md (section "Early-bird tickets").
"""
import os
import shutil
import time

import numpy as np

from absl import app
from absl import flags

from lth_jax import configs
from lth_jax import early_bird
from lth_jax import evaluation
from lth_jax import report

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/lth_eb_bench", "Root of the runs' workdirs.")
_FAMILIES = flags.DEFINE_list("families", ["dcgan", "vae"], "Families to benchmark.")
_STEPS = flags.DEFINE_integer("steps", 2000, "Dense training steps (= search + ticket steps).")
_WIDTH = flags.DEFINE_integer("width", 64,
                              "Base width h of the dense models (DCGAN's standard 64).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Batch size (0: the family's default, 64). A "
                              "larger batch gives a GPU step more work per kernel launch.")
_SPARSITIES = flags.DEFINE_list("sparsities", ["0.75", "0.5"],
                                 "Fractions of hidden channels (structured) or of prunable weights "
                                 "(unstructured) pruned; one ticket each, the dense baseline is "
                                 "trained once per family and shared.")
_PART_SPARSITY = flags.DEFINE_multi_string(
    "part_sparsity", [], "One more ticket per value 'family:part=fraction,part=fraction' (e.g. "
    "'dcgan:generator=0.5,discriminator=0.9'): per-network fractions, as --sparsities.")
_KIND = flags.DEFINE_enum("kind", "structured", ["structured", "unstructured"],
                          "Structured: channel-pruned, physically smaller ticket (the issue's "
                          "benchmark); unstructured: a magnitude mask, trained masked (its "
                          "FLOPs count nonzero weights, its wall-clock stays dense).")
_SCRATCH = flags.DEFINE_bool("scratch", True, "Also train each ticket's widths (or mask) from a "
                             "new init for all steps (does the search pick more than a size?).")
_REWIND = flags.DEFINE_bool("rewind", False, "Train the ticket from the initial weights θ₀ "
                            "(sliced) instead of the drawn weights and optimizer state.")
_IMP_LEVELS = flags.DEFINE_integer("imp_levels", 0, "Also run IMP (ticket branch, the config's "
                                   "lottery settings) to this level: its measured training "
                                   "wall-clock and metric beside the early-bird ticket's.")
_SCOPE = flags.DEFINE_enum("scope", "layerwise", ["global", "layerwise"],
                           "One |γ| threshold over all BatchNorm layers, or one per layer.")
_INTERVAL = flags.DEFINE_integer("interval", 10, "Steps between two channel masks.")
_WINDOW = flags.DEFINE_integer("window", 5, "Masks compared (You et al.: 5).")
_EPSILON = flags.DEFINE_float("epsilon", 0.1, "Draw when all distances are <= epsilon.")
_BN_L1 = flags.DEFINE_float("bn_l1", 1e-4, "Network-slimming L1 weight on BatchNorm scales.")
_STEPS_PER_CALL = flags.DEFINE_integer("steps_per_call", 5, "Steps fused per jitted call (a "
                                        "divisor of --interval: one compilation per run).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 5000, "Samples for FID.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds (tickets.seeds): every stage trains them "
                           "together; ratios are per seed, targets judged on their mean.")

TARGETS = {"flops": 0.12, "seconds": 0.40, "metric": 1.10}


def config_for(family: str, sparsity: float | str):
  """``sparsity``: one channel fraction for all parts, or an ``early_bird.part_sparsity`` text."""
  config = configs.get_config(family, "fashion_mnist", "default")
  config.tickets.seeds = tuple(int(s) for s in _SEEDS.value)
  config.model.width = _WIDTH.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  config.train.update(steps=_STEPS.value, steps_per_call=_STEPS_PER_CALL.value,
                      checkpoint_every=0, log_every=500)
  config.eval.num_samples = _NUM_SAMPLES.value
  config.prune.scope = _SCOPE.value
  parts = sparsity if isinstance(sparsity, str) else ""
  config.early_bird.update(kind=_KIND.value, sparsity=0.5 if parts else sparsity,
                           part_sparsity=parts, interval=_INTERVAL.value, window=_WINDOW.value,
                           epsilon=_EPSILON.value, bn_l1=_BN_L1.value, rewind=_REWIND.value,
                           dense_baseline=True, scratch_baseline=_SCRATCH.value,
                           imp_levels=_IMP_LEVELS.value)
  return config


def run_family(family: str) -> list[dict]:
  """One dense baseline per seed and one early-bird ticket per sparsity and seed; returns one
  row per ticket and seed, then (several seeds) one ``seed='mean'`` row per ticket."""
  results, shared = [], {}
  tickets = [float(s) for s in _SPARSITIES.value] + [
      text.split(":", 1)[1] for text in _PART_SPARSITY.value if text.split(":", 1)[0] == family]
  seeds = tuple(int(s) for s in _SEEDS.value)
  metric = evaluation.primary_metric_key(family, "fmnist_clf")
  for sparsity in tickets:
    config = config_for(family, sparsity)
    name = sparsity if isinstance(sparsity, float) else sparsity.replace(",", "_")
    workdir = os.path.join(_WORKDIR.value, f"{family}_s{_STEPS.value}_w{_WIDTH.value}_"
                           f"{f'b{_BATCH.value}_' if _BATCH.value else ''}"
                           f"p{name}_{_SCOPE.value}_i{_INTERVAL.value}"
                           f"{'_rewind' if _REWIND.value else ''}"
                           f"{'_unstructured' if _KIND.value == 'unstructured' else ''}_seeds"
                           f"{'-'.join(map(str, seeds))}")
    for name, source in shared.items():
      # Same family, data, model, training and seeds: finished dense runs and IMP are reused.
      if not os.path.exists(os.path.join(workdir, name)):
        shutil.copytree(source, os.path.join(workdir, name))
    rows = early_bird.run(config, workdir)
    shared = {name: os.path.join(workdir, name)
              for name in [f"dense_seed{seed}" for seed in seeds] + ["imp"]
              if os.path.exists(os.path.join(workdir, name))}
    mine = []
    for seed in seeds:
      by_run = {r["run"]: r for r in rows if r["seed"] == seed}
      dense, total, scratch = by_run["dense"], by_run["eb_total"], by_run.get("scratch", {})
      imp = by_run.get("imp", {})
      mine.append({
          "family": family, "seed": seed, "eb_step": total["eb_step"], "steps": dense["steps"],
          "sparsity": total["sparsity"],
          "widths": by_run["eb_ticket"].get("widths", ""),
          "dense_train_flops": dense["train_flops"], "eb_train_flops": total["train_flops"],
          "dense_seconds": dense["train_seconds"],
          "search_seconds": by_run["eb_search"]["train_seconds"],
          "ticket_seconds": by_run["eb_ticket"]["train_seconds"],
          "eb_seconds": total["train_seconds"],
          "dense_" + metric: dense[metric], "eb_" + metric: total[metric],
          "flops_ratio": total["flops_vs_dense"], "seconds_ratio": total["seconds_vs_dense"],
          "cpu_seconds_ratio": total["cpu_seconds_vs_dense"],
          "metric_ratio": total["metric_vs_dense"],
          "scratch_metric_ratio": scratch.get("metric_vs_dense", float("nan")),
          "imp_seconds_vs_eb": imp.get("train_seconds", float("nan")) / total["train_seconds"],
          "imp_metric_ratio": imp.get("metric_vs_dense", float("nan"))})
    results += mine
    if len(seeds) > 1:
      mean = {k: float(np.mean([r[k] for r in mine])) for k, v in mine[0].items()
              if isinstance(v, (int, float)) and k != "seed"}
      std = {k + "_std": float(np.std([r[k] for r in mine], ddof=1)) for k in
             ("metric_ratio", "seconds_ratio", "flops_ratio")}
      results.append({"family": family, "seed": "mean", "widths": mine[0]["widths"], **mean,
                      **std})
  return results


def main(argv):
  del argv
  load_before = os.getloadavg()
  start = time.perf_counter()
  results = []
  for family in _FAMILIES.value:
    results += run_family(family)
  load_after = os.getloadavg()
  print()
  print(report.markdown_table(results, floatfmt=".4g"))
  print(f"\nmachine load average (1, 5, 15 min): before {load_before}, after {load_after}; "
        f"benchmark wall-clock {time.perf_counter() - start:.0f} s")
  several = len(_SEEDS.value) > 1
  for r in results:
    if several and r["seed"] != "mean":
      continue
    met = lambda ok: "met" if ok else "MISSED"
    spread = lambda k: f" ± {r[k + '_std']:.3f}" if several else ""
    print(f"{r['family']} at {_KIND.value} sparsity {r['sparsity']:.2f} "
          f"({'mean over seeds ' + ','.join(_SEEDS.value) if several else 'seed ' + str(r['seed'])}"
          f"): ticket drawn at step {r['eb_step']:.0f}/{r['steps']:.0f}; "
          f"train FLOPs ratio {r['flops_ratio']:.3f}{spread('flops_ratio')} "
          f"({100 * (1 - r['flops_ratio']):.1f}% fewer; "
          f"target >= 88%: {met(r['flops_ratio'] <= TARGETS['flops'])}); "
          f"wall-clock ratio {r['seconds_ratio']:.3f}{spread('seconds_ratio')} (target <= 0.40: "
          f"{met(r['seconds_ratio'] <= TARGETS['seconds'])}; CPU time ratio "
          f"{r['cpu_seconds_ratio']:.3f}); "
          f"metric ratio {r['metric_ratio']:.3f}{spread('metric_ratio')} (target <= 1.10: "
          f"{met(r['metric_ratio'] <= TARGETS['metric'])}; same widths from a new init: "
          f"{r['scratch_metric_ratio']:.3f}"
          + (f"; IMP to level {_IMP_LEVELS.value}: {r['imp_seconds_vs_eb']:.1f}x the early-bird "
             f"wall-clock, metric ratio {r['imp_metric_ratio']:.3f}" if _IMP_LEVELS.value else "")
          + ")")


if __name__ == "__main__":
  app.run(main)

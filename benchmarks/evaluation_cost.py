"""What one evaluation costs, and KID's share of it (the reproduction evaluates every run).

Process CPU seconds, median of ``--repeats`` after one warm-up, side by side in one process:

* KID on ``[10000, D]`` features (``metrics.KID_SUBSETS`` subsets of ``KID_SUBSET_SIZE``):
  the plain formula (three float64 products per subset, ``(k / d + 1) ** 3``; lth_jax's KID
  before 2026-11-29), :func:`lth_jax.metrics.kid` with the real features new (in-place cube,
  one buffer per product), and again with their subsets' sums kept (every evaluation of a run
  after its first); the largest relative difference of the three results;
* one whole evaluation (FID, KID, IS, reconstruction, test ELBO) of the ``cpu``-scale β-VAE
  (``reproduction.base_config('vae', 'cpu')``, an untrained model: evaluation cost does not
  depend on the weights), and the KID calls' share of it.

Run (about a minute on 2 cores; the first run trains and caches the Fashion-MNIST classifier)::

  .venv/bin/python benchmarks/evaluation_cost.py
"""
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from lth_jax import metrics, reproduction, runs

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats after one warm-up.")
_FEATURES = flags.DEFINE_integer("features", 128, "Feature dimension D (the classifier's: 128).")


def plain_kid(a, b, num_subsets=metrics.KID_SUBSETS, subset_size=metrics.KID_SUBSET_SIZE,
              seed=0):
  """The same estimate and subsets, three products and ``** 3`` per subset."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  rng, m, d = np.random.default_rng(seed), subset_size, a.shape[1]
  estimates = []
  for _ in range(num_subsets):
    x = a[rng.choice(a.shape[0], m, replace=False)]
    y = b[rng.choice(b.shape[0], m, replace=False)]
    k_xx, k_yy, k_xy = ((u @ v.T / d + 1.0) ** 3 for u, v in ((x, x), (y, y), (x, y)))
    within = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
    estimates.append(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))
  return float(np.mean(estimates)), float(np.std(estimates))


def cpu_seconds(fn, repeats: int) -> tuple[float, object]:
  """Median process CPU seconds of ``fn()`` over ``repeats`` calls, and its last result."""
  times, result = [], None
  for _ in range(repeats):
    start = time.process_time()
    result = fn()
    times.append(time.process_time() - start)
  return statistics.median(times), result


def main(argv) -> None:
  del argv
  repeats = _REPEATS.value
  rng = np.random.default_rng(0)
  real = np.maximum(rng.normal(size=(10000, _FEATURES.value)), 0).astype(np.float32)
  fake = np.maximum(rng.normal(0.1, 1.1, size=(10000, _FEATURES.value)), 0).astype(np.float32)
  plain_kid(real, fake, num_subsets=2)
  t_plain, r_plain = cpu_seconds(lambda: plain_kid(real, fake), repeats)

  def new_real():
    metrics._FIRST_SET_SUMS.clear()   # pylint: disable=protected-access
    return metrics.kid(real, fake)

  t_new, r_new = cpu_seconds(new_real, repeats)
  t_kept, r_kept = cpu_seconds(lambda: metrics.kid(real, fake), repeats)
  differences = [abs(x - p) / abs(p) for r in (r_new, r_kept) for x, p in zip(r, r_plain)]

  config = reproduction.base_config("vae", "cpu")
  ctx = runs.Context(config, tempfile.mkdtemp())
  state = ctx.family.init(jax.random.key(0))
  ctx.evaluator(ctx.family, state)        # warm-up: compilation, the reference's kept sums
  kid, spent = metrics.kid, []

  def timed_kid(*args, **kwargs):
    start = time.process_time()
    out = kid(*args, **kwargs)
    spent.append(time.process_time() - start)
    return out

  metrics.kid = timed_kid
  t_eval, _ = cpu_seconds(lambda: ctx.evaluator(ctx.family, state), repeats)
  metrics.kid = kid
  t_eval_kid = statistics.median(spent)

  print(f"KID, [10000, {_FEATURES.value}] features, {metrics.KID_SUBSETS} subsets of "
        f"{metrics.KID_SUBSET_SIZE}, CPU s (median of {repeats}):")
  print(f"  plain formula        {t_plain:7.2f}")
  print(f"  lth_jax, real new    {t_new:7.2f}")
  print(f"  lth_jax, real kept   {t_kept:7.2f}")
  print(f"  largest relative difference to the plain formula: {max(differences):.1e}")
  print(f"one evaluation of the cpu-scale beta-VAE: {t_eval:.2f} CPU s, of which KID "
        f"{t_eval_kid:.2f} ({100 * t_eval_kid / t_eval:.0f}%)")
  print(f"ratios: plain / real new {t_plain / t_new:.2f}x, plain / real kept "
        f"{t_plain / t_kept:.2f}x; the evaluation without KID's saving would take "
        f"{(t_eval - t_eval_kid + t_plain) / t_eval:.2f}x as long")


if __name__ == "__main__":
  app.run(main)

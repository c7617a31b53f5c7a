"""Sample-quality metrics: FID, KID and Inception Score, in a named feature space.

Every metric key names the feature space it was computed in (a
:class:`lth_jax.feature_spaces.FeatureExtractor`, e.g. ``fid_inception`` or ``fid_fmnist_clf``;
nothing falls back silently from one space to another). :func:`reference_stats` and
:func:`feature_metrics` are the one evaluation path (:class:`lth_jax.evaluation.Evaluator` uses
them); the keys, for a feature space ``n``:

- ``fid_{n}``: Fréchet distance of the Gaussian fits of the features (FID).
- ``kid_{n}``, ``kid_std_{n}``: mean and std over subsets of the unbiased polynomial-kernel MMD²
  (KID).
- ``is_{n}``, ``is_std_{n}``: Inception Score (in the space's class logits), mean and std over
  splits.

The statistics are host-side float64 numpy: :func:`gaussian_stats`, :func:`frechet_distance`
(the FID formula; the trace of the matrix square root via eigh + SVD, no scipy.sqrtm), :func:`kid`
(unbiased polynomial-kernel MMD²) and :func:`inception_score`.

Example::

  from lth_jax import feature_spaces, metrics
  extractor = feature_spaces.classifier_feature_extractor(
      'fmnist', train_x, train_y, test_x, test_y, cache_dir='~/.cache/lth_jax')
  reference = metrics.reference_stats(extractor, real_images)     # once per run
  scores = metrics.feature_metrics(extractor, reference, fake_images)
  # {'fid_fmnist_clf': ..., 'kid_fmnist_clf': ..., 'kid_std_fmnist_clf': ...,
  #  'is_fmnist_clf': ..., 'is_std_fmnist_clf': ...}
"""

from __future__ import annotations

import hashlib
import math
from typing import NamedTuple

import jax
import numpy as np

from lth_jax import feature_spaces

ArrayLike = np.ndarray | jax.Array

# Defaults of KID (Bińkowski et al., 2018) and of the Inception Score (Salimans et al., 2016).
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10


class ReferenceStats(NamedTuple):
  """Real-data features and their Gaussian statistics in one feature space; compute once per run.

  Attributes:
    feature_space: the :attr:`~lth_jax.feature_spaces.FeatureExtractor.name` they were computed
      with.
    features: ``[N, D]`` float32 (needed by KID).
    mu: ``[D]`` float64 mean.
    sigma: ``[D, D]`` float64 covariance.
  """
  feature_space: str
  features: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray


# ----------------------------------------------------------------------------- statistics


def gaussian_stats(features: ArrayLike, *, chunk_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of ``features``, in float64 on the host.

  Two passes (mean, then centred cross-products accumulated over row chunks), so large feature sets
  neither lose precision to cancellation nor need an ``[N, D]`` float64 copy.

  Args:
    features: ``[N, D]``, N >= 2.
    chunk_size: rows per accumulation chunk.

  Returns:
    ``(mu [D], sigma [D, D])`` float64; ``sigma`` is exactly symmetric.

  Raises:
    ValueError: if ``features`` is not 2-D, has fewer than 2 rows, or is not finite.
  """
  features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"gaussian_stats expects features [N, D] with N >= 2; got shape "
                     f"{features.shape}.")
  if not np.all(np.isfinite(features)):
    raise ValueError("gaussian_stats: features contain NaN or inf.")
  n, d = features.shape
  mu = np.zeros(d, np.float64)
  for start in range(0, n, chunk_size):
    mu += features[start:start + chunk_size].sum(axis=0, dtype=np.float64)
  mu /= n
  sigma = np.zeros((d, d), np.float64)
  for start in range(0, n, chunk_size):
    centred = features[start:start + chunk_size].astype(np.float64) - mu
    sigma += centred.T @ centred
  sigma /= n - 1
  return mu, (sigma + sigma.T) / 2


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; tiny negative eigenvalues are clipped to 0."""
  eigvals, eigvecs = np.linalg.eigh(matrix)
  return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID formula).

  ``|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)``, with ``tr((S1 S2)^½)`` computed as the
  nuclear norm (sum of singular values) of ``S1^½ S2^½``: its squared singular values are the
  eigenvalues of ``S1^½ S2 S1^½``, which is similar to ``S1 S2``. Symmetric square roots come from
  ``eigh``. Unlike ``scipy.linalg.sqrtm(S1 @ S2)`` this needs no eps offset for singular covariances
  (fewer samples than dimensions), never produces imaginary parts, and gives exactly 0 (to rounding)
  for identical inputs, singular or not. About 4 s for D = 2048 on 2 CPU cores.

  Args:
    mu1, mu2: ``[D]`` means.
    sigma1, sigma2: ``[D, D]`` symmetric PSD covariances.

  Returns:
    The distance as a Python float (>= 0 up to rounding).

  Raises:
    ValueError: on mismatched shapes or non-finite inputs.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0] if mu1.ndim == 1 else -1
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f"frechet_distance: shapes must be mu [D], sigma [D, D] for one D; got "
                     f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}.")
  for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"frechet_distance: {name} contains NaN or inf.")
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  tr_covmean = np.linalg.svd(_sqrt_psd(sigma1) @ _sqrt_psd(sigma2), compute_uv=False).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _cubic_kernel_sum(u: np.ndarray, v: np.ndarray, *, off_diagonal: bool = False) -> float:
  """``Σ_ij (u_i·v_j / d + 1)³`` over float64 rows ``u [m, d]``, ``v [n, d]``; without the
  ``i = j`` terms when ``off_diagonal`` (``u`` is ``v``). In place: one ``[m, n]`` buffer."""
  kernel = u @ v.T
  kernel /= u.shape[1]
  kernel += 1.0
  cube = kernel * kernel
  cube *= kernel
  return float(cube.sum() - np.trace(cube)) if off_diagonal else float(cube.sum())


# The first set's off-diagonal kernel sums per subset, by (its bytes' SHA-1, shape, the second
# set's size, seed, subsets, subset size): the real images' features are the same at every
# evaluation of a run, and so are their subsets (the draws depend on the sizes and the seed).
_FIRST_SET_SUMS: dict[tuple, np.ndarray] = {}
_FIRST_SET_SUMS_KEPT = 8


def kid(features_a: ArrayLike, features_b: ArrayLike, *, num_subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over subsets.

  Each subset draws ``subset_size`` rows of each set without replacement (independently per subset),
  as in Bińkowski et al. (2018). Deterministic given ``seed``. Cost per subset: float64 matrix
  products ``[subset_size, D] x [D, subset_size]`` on the host, two of them when ``features_a``
  (the real features, the same at every evaluation) was seen before with the same sizes and
  seed: its subsets' kernel sums are kept (a few, by the array's SHA-1).

  Args:
    features_a: ``[Na, D]``.
    features_b: ``[Nb, D]``.
    num_subsets: number of subsets averaged.
    subset_size: rows per subset; must not exceed Na or Nb, and must be >= 2.
    seed: seed of the subset draws.

  Returns:
    ``(mean, std)`` of the per-subset MMD² estimates (std over subsets, ``ddof=0``).

  Raises:
    ValueError: on mismatched feature sizes or a subset size the data cannot fill.
  """
  a = np.asarray(features_a, np.float64)
  b = np.asarray(features_b, np.float64)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f"kid expects features [Na, D] and [Nb, D]; got {a.shape} and {b.shape}.")
  if num_subsets < 1:
    raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}.")
  if not 2 <= subset_size <= min(a.shape[0], b.shape[0]):
    raise ValueError(f"kid: subset_size={subset_size} must be in [2, min(Na, Nb)] = "
                     f"[2, {min(a.shape[0], b.shape[0])}] (Na={a.shape[0]}, Nb={b.shape[0]}); "
                     "pass a smaller subset_size or more samples.")
  key = (hashlib.sha1(a.tobytes()).hexdigest(), a.shape, b.shape[0], seed, num_subsets,
         subset_size)
  known = _FIRST_SET_SUMS.get(key)
  sums_a = np.empty(num_subsets, np.float64) if known is None else known
  rng = np.random.default_rng(seed)
  m = subset_size
  estimates = np.empty(num_subsets, np.float64)
  for i in range(num_subsets):
    x = a[rng.choice(a.shape[0], m, replace=False)]
    y = b[rng.choice(b.shape[0], m, replace=False)]
    if known is None:
      sums_a[i] = _cubic_kernel_sum(x, x, off_diagonal=True)
    within = sums_a[i] + _cubic_kernel_sum(y, y, off_diagonal=True)
    estimates[i] = within / (m * (m - 1)) - 2.0 * _cubic_kernel_sum(x, y) / (m * m)
  if known is None:
    if len(_FIRST_SET_SUMS) >= _FIRST_SET_SUMS_KEPT:
      _FIRST_SET_SUMS.pop(next(iter(_FIRST_SET_SUMS)))
    _FIRST_SET_SUMS[key] = sums_a
  return float(estimates.mean()), float(estimates.std())


def inception_score(logits: ArrayLike, *, splits: int = IS_SPLITS) -> tuple[float, float]:
  """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` contiguous splits.

  Args:
    logits: ``[N, K]`` class logits (softmax is applied here, in float64), N >= splits.
    splits: number of splits; ``p(y)`` is the mean prediction within each split.

  Returns:
    ``(mean, std)`` of the per-split scores.

  Raises:
    ValueError: if ``logits`` is not 2-D or has fewer rows than ``splits``.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
    raise ValueError(f"inception_score expects logits [N, K] with N >= splits >= 1; got shape "
                     f"{logits.shape}, splits={splits}.")
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = np.log(np.exp(part).mean(axis=0))
    kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
    scores.append(math.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# ----------------------------------------------------------------------------- evaluation


def reference_stats(extractor: feature_spaces.FeatureExtractor,
                    images: ArrayLike) -> ReferenceStats:
  """Features and Gaussian statistics of real images, to reuse across evaluations of a run.

  Args:
    extractor: the feature space.
    images: float ``[N, H, W, C]`` in [-1, 1], N >= 2.
  """
  features = extractor.features(images)
  mu, sigma = gaussian_stats(features)
  return ReferenceStats(feature_space=extractor.name, features=features, mu=mu, sigma=sigma)


def feature_metrics(extractor: feature_spaces.FeatureExtractor, reference: ReferenceStats,
                    fake_images: ArrayLike, *, kid_subsets: int = KID_SUBSETS,
                    kid_subset_size: int = KID_SUBSET_SIZE, is_splits: int = IS_SPLITS,
                    seed: int = 0) -> dict[str, float]:
  """FID, KID and IS of generated images, each key naming the feature space.

  Args:
    extractor: the feature space (its ``name`` suffixes every key).
    reference: :func:`reference_stats` of real images in the same feature space.
    fake_images: float ``[N, H, W, C]`` in [-1, 1].
    kid_subsets, kid_subset_size, seed: see :func:`kid`.
    is_splits: see :func:`inception_score`.

  Returns:
    ``{f'fid_{n}', f'kid_{n}', f'kid_std_{n}', f'is_{n}', f'is_std_{n}'}`` (Python floats) with
    ``n = extractor.name``.

  Raises:
    TypeError: if ``reference`` is not a :class:`ReferenceStats`.
    ValueError: if ``reference`` was computed in another feature space.
  """
  if not isinstance(reference, ReferenceStats):
    raise TypeError(f"reference must be metrics.ReferenceStats (from metrics.reference_stats); got "
                    f"{type(reference).__name__}.")
  if reference.feature_space != extractor.name:
    raise ValueError(f"reference statistics are in feature space {reference.feature_space!r} but "
                     f"the extractor is {extractor.name!r}.")
  features, logits = extractor.features_and_logits(fake_images)
  mu, sigma = gaussian_stats(features)
  kid_mean, kid_std = kid(reference.features, features, num_subsets=kid_subsets,
                          subset_size=kid_subset_size, seed=seed)
  is_mean, is_std = inception_score(logits, splits=is_splits)
  n = extractor.name
  return {
      f"fid_{n}": frechet_distance(reference.mu, reference.sigma, mu, sigma),
      f"kid_{n}": kid_mean,
      f"kid_std_{n}": kid_std,
      f"is_{n}": is_mean,
      f"is_std_{n}": is_std,
  }

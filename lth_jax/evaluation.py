"""Evaluating a trained state: FID/KID/IS in a named feature space, reconstruction MSE, test ELBO.

An :class:`Evaluator` is built once per run (feature network and the test images' reference
statistics, :func:`lth_jax.metrics.reference_stats`, are computed once) and then scores any number
of states of the same family; samples are scored by :func:`lth_jax.metrics.feature_metrics`, whose
keys name their feature space (``fid_fmnist_clf``, ``kid_std_inception``, ...). A family that
does not generate (the AutoEncoders) is scored by reconstruction only and needs no feature space:
no classifier is trained and no Inception weights are read for it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from lth_jax import data as data_lib
from lth_jax import families
from lth_jax import feature_spaces
from lth_jax import metrics
from lth_jax import report
from lth_jax import steps as steps_lib

PyTree = Any
# Feature-space names: ``fid_fmnist_clf`` is FID in the Fashion-MNIST classifier's features.
SHORT_NAMES = {"fashion_mnist": "fmnist", "celeb_a": "celeba"}


def default_cache_dir() -> str:
  return os.environ.get("LTH_JAX_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "lth_jax"))


def feature_extractor_from_config(config: ml_collections.ConfigDict,
                                  train_split: data_lib.Split,
                                  test_split: data_lib.Split) -> feature_spaces.FeatureExtractor:
  """The feature network named by ``config.eval.feature_space`` — never a silent fallback."""
  space = config.eval.feature_space
  if space == "inception":
    if not config.eval.inception_weights:
      raise ValueError("eval.feature_space='inception' needs eval.inception_weights: the path of "
                       "the standard FID Inception weights (pt_inception-2015-12-05-6726825d.pth "
                       "or its .npz conversion); or use eval.feature_space='classifier'")
    return feature_spaces.inception_feature_extractor(config.eval.inception_weights)
  if space == "classifier":
    # The classifier's seed is fixed: every run of a data set shares one feature space.
    return feature_spaces.classifier_feature_extractor(
        SHORT_NAMES.get(config.data.name, config.data.name), np.asarray(train_split.images),
        np.asarray(train_split.labels), test_split.images, test_split.labels,
        cache_dir=os.path.join(config.eval.cache_dir or default_cache_dir(), "classifiers"),
        config={"steps": config.eval.classifier_steps})
  raise ValueError(f"unknown eval.feature_space {space!r}; expected 'classifier' or 'inception'")


def primary_metric_key(family: str, feature_name: str) -> str:
  """The key a ticket's quality is judged by (the family's ``Spec.primary_metric``), e.g.
  ``'fid_fmnist_clf'`` or ``'recon_mse'``."""
  base = families.get(family).primary_metric
  return f"{base}_{feature_name}" if base == "fid" else base


def primary_metric_in(family: str, columns) -> str:
  """The primary metric's key among a result row's ``columns`` (its feature space is the one
  the row was evaluated in)."""
  base = families.get(family).primary_metric
  return next(k for k in columns if k == base or base == "fid" and k.startswith("fid_"))


@dataclasses.dataclass
class Evaluator:
  """Scores states of one family against one data set's test split."""
  extractor: feature_spaces.FeatureExtractor | None   # None: the family does not generate
  reference: metrics.ReferenceStats | None  # of test_images, in the extractor's feature space
  test_images: np.ndarray           # float32 [-1, 1], [num_test, H, W, C]
  num_samples: int
  batch_size: int
  grid_size: int
  key: jax.Array

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, train_split: data_lib.Split,
                  test_split: data_lib.Split, *,
                  extractor: feature_spaces.FeatureExtractor | None = None) -> "Evaluator":
    """Reads ``config.eval`` and ``config.seed``; ``extractor`` defaults to the config's (none
    for a family that does not generate)."""
    if config.eval.num_samples < metrics.IS_SPLITS:
      raise ValueError(f"eval.num_samples={config.eval.num_samples} is below the Inception "
                       f"Score's {metrics.IS_SPLITS} splits; use more samples")
    test = data_lib.to_float(np.asarray(test_split.images[:config.eval.num_test]))
    reference = None
    if families.from_config(config).generate is not None:
      extractor = extractor or feature_extractor_from_config(config, train_split, test_split)
      reference = metrics.reference_stats(extractor, test)
    return cls(extractor, reference, test,
               config.eval.num_samples, config.eval.batch_size, config.eval.grid_size,
               jax.random.fold_in(jax.random.key(config.seed), 10_000_019))

  def _jitted(self, fn, *, key=None, **kwargs):
    """One compiled function per family function (or ``key``), shared by the run's evaluations."""
    cache = self.__dict__.setdefault("_compiled", {})
    key = id(fn) if key is None else key
    if key not in cache:
      cache[key] = (fn, jax.jit(fn, **kwargs))
    return cache[key][1]

  def samples(self, family: steps_lib.Family, state: steps_lib.TrainState, n: int,
              key: jax.Array) -> np.ndarray:
    """n generated images (GAN/VAE) in batches, float [-1, 1]."""
    gen = self._jitted(family.generate, static_argnums=3)
    out = [np.asarray(gen(state.params, state.batch_stats, jax.random.fold_in(key, i),
                          min(self.batch_size, n - i * self.batch_size)))
           for i in range(-(-n // self.batch_size))]
    return np.concatenate(out)[:n]

  def reconstructions(self, family: steps_lib.Family, state: steps_lib.TrainState,
                      images: np.ndarray) -> np.ndarray:
    rec = self._jitted(family.reconstruct)
    return np.concatenate([np.asarray(rec(state.params, state.batch_stats,
                                          images[i:i + self.batch_size]))
                           for i in range(0, len(images), self.batch_size)])

  def __call__(self, family: steps_lib.Family, state: steps_lib.TrainState) -> dict:
    """Metrics of ``state``: FID/KID/IS of ``num_samples`` samples (families that generate;
    from :func:`metrics.feature_metrics`), recon MSE of the test images (families that
    reconstruct), the family's test losses (``Family.test_losses``, e.g. the VAE's −ELBO) and
    the feature classifier's test accuracy (families that generate)."""
    out: dict[str, float] = {}
    if family.generate is not None:
      if "test_accuracy" in self.extractor.info:  # how good the feature space itself is
        out[f"{self.extractor.name}_test_accuracy"] = float(self.extractor.info["test_accuracy"])
      fake = self.samples(family, state, self.num_samples, self.key)
      if not np.all(np.isfinite(fake)):
        raise steps_lib.DivergenceError("generated samples contain NaN/Inf; the model has diverged")
      # Each KID subset holds every sample (or test image) when there are fewer than 1000.
      out.update(metrics.feature_metrics(
          self.extractor, self.reference, fake,
          kid_subset_size=min(metrics.KID_SUBSET_SIZE, len(fake), len(self.test_images))))
    if family.reconstruct is not None:
      recon = self.reconstructions(family, state, self.test_images)
      out["recon_mse"] = float(np.mean((recon - self.test_images) ** 2))
    if family.test_losses is not None:
      out.update(self._test_losses(family, state))
    return out

  def _test_losses(self, family, state) -> dict[str, float]:
    """``Family.test_losses`` per test image: batch means weighted by the batch sizes (batch
    ``i`` with key ``fold_in(self.key, i)``)."""
    losses = family.test_losses

    def batch_sums(params, stats, x, key):
      return {k: v * x.shape[0] for k, v in losses(params, stats, x, key).items()}

    batch_sums = self._jitted(batch_sums, key=("test_losses", id(losses)))
    totals: dict[str, float] = {}
    for i in range(0, len(self.test_images), self.batch_size):
      sums = batch_sums(state.params, state.batch_stats, self.test_images[i:i + self.batch_size],
                        jax.random.fold_in(self.key, i))
      for k, v in sums.items():
        totals[k] = totals.get(k, 0) + float(v)
    return {k: v / len(self.test_images) for k, v in totals.items()}

  def save_grid(self, family: steps_lib.Family, state: steps_lib.TrainState, path: str) -> str:
    """Samples (GAN/VAE) or test images above their reconstructions (AE) as one PNG."""
    if family.generate is not None:
      images = self.samples(family, state, self.grid_size, jax.random.fold_in(self.key, 1))
    else:
      half = self.test_images[: self.grid_size // 2]
      images = np.concatenate([half, self.reconstructions(family, state, half)])
    return report.save_image_grid(images, path)

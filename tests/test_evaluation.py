"""Tests for lth_jax.evaluation: the Evaluator scores samples through metrics.feature_metrics."""
import dataclasses

import jax
import numpy as np
import pytest

from lth_jax import configs, data, evaluation, feature_spaces, metrics, runs, validation


def _toy_extractor(name="toy"):
  """A fixed random projection of 32x32x1 images: features [N, 8], logits [N, 5]."""
  rng = np.random.default_rng(0)
  proj = (rng.standard_normal((32 * 32, 8)) / 32).astype(np.float32)
  head = rng.standard_normal((8, 5)).astype(np.float32)

  def features_and_logits(images):
    feats = np.tanh(np.asarray(images, np.float32).reshape(len(images), -1) @ proj)
    return feats, feats @ head

  return feature_spaces.FeatureExtractor(
      name=name, features=lambda x: features_and_logits(x)[0],
      logits=lambda x: features_and_logits(x)[1], features_and_logits=features_and_logits, info={})


def _split(seed, n):
  images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 1), dtype=np.uint8)
  return data.Split(images=images, labels=np.zeros(n, np.int32))


def _config(num_samples=40, num_test=48):
  config = configs.get_config("vae", "fashion_mnist", "smoke")
  config.eval.update(num_samples=num_samples, num_test=num_test, batch_size=16)
  return config


def test_evaluator_scores_are_feature_metrics_of_its_samples():
  config = _config()
  extractor = _toy_extractor()
  evaluator = evaluation.Evaluator.from_config(config, _split(1, 64), _split(2, 64),
                                               extractor=extractor)
  family = runs.family_from_config(config)
  state = family.init(jax.random.key(0))
  scores = evaluator(family, state)
  assert set(scores) == {"fid_toy", "kid_toy", "kid_std_toy", "is_toy", "is_std_toy", "recon_mse",
                         "test_neg_elbo"}

  test = data.to_float(_split(2, 64).images[:48])
  reference = metrics.reference_stats(extractor, test)
  fake = evaluator.samples(family, state, 40, evaluator.key)
  # Fewer than 1000 samples: each KID subset holds all 40.
  expected = metrics.feature_metrics(extractor, reference, fake, kid_subset_size=40)
  assert {k: scores[k] for k in expected} == expected  # bit for bit
  np.testing.assert_array_equal(evaluator.reference.features, reference.features)

  # No fallback: an extractor of another feature space does not match the reference statistics.
  other = dataclasses.replace(evaluator, extractor=_toy_extractor("other"))
  with pytest.raises(ValueError, match="feature space 'toy' but the extractor is 'other'"):
    other(family, state)


def test_evaluator_needs_enough_samples_for_inception_score():
  with pytest.raises(ValueError, match="eval.num_samples=5 .* 10 splits"):
    evaluation.Evaluator.from_config(_config(num_samples=5), _split(1, 16), _split(2, 16),
                                     extractor=_toy_extractor())


def test_feature_space_from_config_never_falls_back():
  config = _config()
  config.eval.feature_space = "inception"
  with pytest.raises(ValueError, match="needs eval.inception_weights"):
    evaluation.feature_extractor_from_config(config, _split(1, 16), _split(2, 16))
  config.eval.feature_space = "pixels"
  with pytest.raises(ValueError, match="unknown eval.feature_space 'pixels'"):
    evaluation.feature_extractor_from_config(config, _split(1, 16), _split(2, 16))


def test_a_family_that_does_not_generate_needs_no_feature_space(monkeypatch):
  """The AE on CIFAR-10 (feature space 'inception', no weights): valid, and scored by
  reconstruction only, with no feature network built or trained."""
  config = configs.get_config("ae", "cifar10", "smoke")
  assert config.eval.feature_space == "inception" and not config.eval.inception_weights
  validation.check(config, "find_tickets")
  monkeypatch.setattr(evaluation, "feature_extractor_from_config",
                      lambda *a, **k: pytest.fail("a feature network was built"))
  images = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
  split = data.Split(images=images, labels=np.zeros(16, np.int32))
  evaluator = evaluation.Evaluator.from_config(config, split, split)
  assert evaluator.extractor is None and evaluator.reference is None
  family = runs.family_from_config(config)
  assert set(evaluator(family, family.init(jax.random.key(0)))) == {"recon_mse"}

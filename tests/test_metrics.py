"""Tests for lth_jax.metrics, lth_jax.feature_spaces and their models (inception, classifier)."""

import hashlib
import json
import os

import flax.serialization
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats

from lth_jax import feature_spaces, metrics
from lth_jax.models import inception


def _random_spd(rng, d, *, rank=None):
  a = rng.standard_normal((d, rank or 2 * d))
  return a @ a.T / a.shape[1]


# ----------------------------------------------------------------------------- gaussian_stats


def test_gaussian_stats_matches_numpy_cov_across_chunks():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((1001, 7)) @ rng.standard_normal((7, 7)) + 3.0
  mu, sigma = metrics.gaussian_stats(x.astype(np.float32), chunk_size=100)
  np.testing.assert_allclose(mu, x.astype(np.float32).mean(0, dtype=np.float64), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32).astype(np.float64), rowvar=False),
                             rtol=1e-6, atol=1e-9)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_array_equal(sigma, sigma.T)


def test_gaussian_stats_no_cancellation_with_large_offset():
  rng = np.random.default_rng(1)
  small = rng.standard_normal((500, 3))
  _, sigma = metrics.gaussian_stats(small + 1e7, chunk_size=64)
  np.testing.assert_allclose(sigma, np.cov(small, rowvar=False), rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 4), (5,), (2, 3, 4)])
def test_gaussian_stats_rejects_bad_shapes(shape):
  with pytest.raises(ValueError, match="N >= 2"):
    metrics.gaussian_stats(np.zeros(shape))


# ----------------------------------------------------------------------------- frechet_distance


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
  got = metrics.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
  assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_closed_form():
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  a, b = rng.uniform(0.01, 2, 8), rng.uniform(0.01, 2, 8)
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  mu = rng.standard_normal(8)
  expected = np.sum(a + b - 2 * np.sqrt(a * b))
  assert metrics.frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [3, 16, 64])
def test_frechet_matches_scipy_sqrtm_on_random_spd(d):
  rng = np.random.default_rng(d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(np.real(covmean)))
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert got == pytest.approx(expected, rel=1e-8, abs=1e-8)
  assert metrics.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-8)


def test_frechet_identical_and_singular():
  rng = np.random.default_rng(4)
  s = _random_spd(rng, 32, rank=5)  # rank-deficient, as with fewer samples than dimensions
  mu = rng.standard_normal(32)
  assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-12
  s2 = _random_spd(rng, 32, rank=5)
  value = metrics.frechet_distance(mu, s, mu, s2)
  assert np.isfinite(value) and value > 0.1


def test_frechet_rejects_mismatched_shapes_and_nan():
  with pytest.raises(ValueError, match="shapes"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match="sigma2 contains NaN"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.full((2, 2), np.nan))


# ----------------------------------------------------------------------------- KID


def _direct_mmd2(x, y):
  """O(n²) double loop, unbiased MMD² with k(a, b) = (a·b/d + 1)³."""
  m, d = x.shape
  k = lambda a, b: (np.dot(a, b) / d + 1.0) ** 3  # noqa: E731
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_matches_direct_computation():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((12, 5))
  y = rng.standard_normal((12, 5)) + 0.5
  # One subset of all rows: the estimate is permutation invariant, so it equals the full statistic.
  mean, std = metrics.kid(x, y, num_subsets=1, subset_size=12)
  assert mean == pytest.approx(_direct_mmd2(x, y), rel=1e-10)
  assert std == 0.0


def test_kid_is_unbiased_for_equal_distributions():
  rng = np.random.default_rng(6)
  unbiased, biased = [], []
  for _ in range(300):
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    unbiased.append(metrics.kid(x, y, num_subsets=1, subset_size=10)[0])
    k = lambda a, b: (a @ b.T / 4 + 1) ** 3  # noqa: E731
    biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
  se = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 3 * se
  # The V-statistic (diagonal included) is visibly biased upwards on the same data: the check has
  # power.
  assert np.mean(biased) > 10 * np.std(biased) / np.sqrt(len(biased))


def test_kid_subsets_deterministic_and_sensitive():
  rng = np.random.default_rng(7)
  a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
  shifted = rng.standard_normal((300, 8)) + 1.0
  same = metrics.kid(a, b, num_subsets=20, subset_size=50, seed=3)
  assert same == metrics.kid(a, b, num_subsets=20, subset_size=50, seed=3)
  assert same != metrics.kid(a, b, num_subsets=20, subset_size=50, seed=4)
  far = metrics.kid(a, shifted, num_subsets=20, subset_size=50, seed=3)
  assert abs(same[0]) < 0.05 * far[0]
  assert same[1] > 0


def test_kid_subsets_and_the_kept_real_sums_give_the_plain_estimate():
  """Several subsets (x then y drawn per subset from ``default_rng(seed)``), against the plain
  formula; a second call reuses the first set's kept sums, another first set of the same shape
  does not."""
  rng = np.random.default_rng(8)
  real, other = rng.standard_normal((60, 6)), rng.standard_normal((60, 6)) + 0.3
  fake = rng.standard_normal((50, 6)) * 1.2

  def plain(a, b, subsets=7, size=20, seed=11):
    draws = np.random.default_rng(seed)
    k = lambda u, v: (u @ v.T / u.shape[1] + 1.0) ** 3  # noqa: E731
    values = []
    for _ in range(subsets):
      x = a[draws.choice(len(a), size, replace=False)]
      y = b[draws.choice(len(b), size, replace=False)]
      off = lambda kk: kk.sum() - np.trace(kk)  # noqa: E731
      values.append((off(k(x, x)) + off(k(y, y))) / (size * (size - 1))
                    - 2 * k(x, y).sum() / size ** 2)
    return np.mean(values), np.std(values)

  for first in (real, real, other):
    got = metrics.kid(first, fake, num_subsets=7, subset_size=20, seed=11)
    np.testing.assert_allclose(got, plain(first, fake), rtol=1e-12)
  assert metrics.kid(real, fake, num_subsets=7, subset_size=20, seed=11) != metrics.kid(
      other, fake, num_subsets=7, subset_size=20, seed=11)


def test_kid_rejects_subset_larger_than_data():
  with pytest.raises(ValueError, match="subset_size=50"):
    metrics.kid(np.zeros((40, 3)), np.zeros((100, 3)), subset_size=50)
  with pytest.raises(ValueError, match="expects features"):
    metrics.kid(np.zeros((40, 3)), np.zeros((40, 4)), subset_size=10)


# ----------------------------------------------------------------------------- Inception Score


def test_inception_score_matches_entropy_formula():
  rng = np.random.default_rng(8)
  logits = 3 * rng.standard_normal((60, 7))
  p = scipy.special.softmax(logits, axis=1)
  expected = [np.exp(scipy.stats.entropy(part.mean(0)) - np.mean(scipy.stats.entropy(part, axis=1)))
              for part in np.split(p, 3)]
  mean, std = metrics.inception_score(logits, splits=3)
  assert mean == pytest.approx(np.mean(expected), rel=1e-9)
  assert std == pytest.approx(np.std(expected), rel=1e-7)


def test_inception_score_extremes():
  assert metrics.inception_score(np.zeros((20, 5)), splits=2)[0] == pytest.approx(1.0)
  confident = 50.0 * np.eye(5)[np.arange(20) % 5]
  assert metrics.inception_score(confident, splits=2)[0] == pytest.approx(5.0, rel=1e-6)
  with pytest.raises(ValueError, match="splits"):
    metrics.inception_score(np.zeros((3, 5)), splits=10)


# ----------------------------------------------------------------------------- classifier space


def _toy_data(rng, n):
  """Two classes: dark vs bright 28x28 images with noise."""
  labels = rng.integers(0, 2, n).astype(np.int32)
  base = np.where(labels[:, None, None, None] == 1, 170.0, 70.0)
  images = np.clip(base + 40 * rng.standard_normal((n, 28, 28, 1)), 0, 255).astype(np.uint8)
  return images, labels


_TOY_CONFIG = {"steps": 40, "batch_size": 32, "width": 4, "feature_dim": 16}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  rng = np.random.default_rng(9)
  train_x, train_y = _toy_data(rng, 256)
  test_x, test_y = _toy_data(rng, 64)
  cache = str(tmp_path_factory.mktemp("clf_cache"))
  extractor = feature_spaces.classifier_feature_extractor(
      "toy", train_x, train_y, test_x, test_y, cache_dir=cache, config=_TOY_CONFIG)
  return dict(data=(train_x, train_y, test_x, test_y), cache=cache, extractor=extractor)


def _as_float(images):
  return images.astype(np.float32) / 127.5 - 1.0


def test_classifier_trains_and_caches(toy, monkeypatch):
  extractor = toy["extractor"]
  assert extractor.name == "toy_clf"
  assert extractor.info["test_accuracy"] >= 0.95
  files = sorted(os.listdir(toy["cache"]))
  assert [os.path.splitext(f)[1] for f in files] == [".json", ".msgpack"]
  with open(os.path.join(toy["cache"], files[0]), encoding="utf-8") as f:
    record = json.load(f)
  assert record["test_accuracy"] == extractor.info["test_accuracy"]
  assert record["config"]["steps"] == 40 and record["feature_space"] == "toy_clf"

  def no_training(*args, **kwargs):
    raise AssertionError("the cached classifier should have been loaded")

  monkeypatch.setattr(feature_spaces, "train_classifier", no_training)
  again = feature_spaces.classifier_feature_extractor(
      "toy", *toy["data"], cache_dir=toy["cache"], config=_TOY_CONFIG)
  images = _as_float(toy["data"][2][:10])
  np.testing.assert_array_equal(again.features(images), extractor.features(images))
  with open(os.path.join(toy["cache"], files[1]), "rb") as f:   # the weights, fingerprinted
    assert extractor.info["weights_sha256"] == hashlib.sha256(f.read()).hexdigest()[:12]
  assert again.info["weights_sha256"] == extractor.info["weights_sha256"]
  with pytest.raises(AssertionError, match="cached"):  # a new config is a new cache entry
    feature_spaces.classifier_feature_extractor(
        "toy", *toy["data"], cache_dir=toy["cache"], config={**_TOY_CONFIG, "steps": 41})


def test_classifier_cache_mismatch_and_bad_options(toy, tmp_path):
  with pytest.raises(ValueError, match="Unknown classifier config keys \\['depth'\\]"):
    feature_spaces.classifier_feature_extractor(
        "toy", *toy["data"], cache_dir=tmp_path, config={"depth": 3})
  with pytest.raises(ValueError, match="dataset_name"):
    feature_spaces.classifier_feature_extractor("Fashion MNIST", *toy["data"], cache_dir=tmp_path)
  train_x, train_y, test_x, test_y = toy["data"]
  with pytest.raises(ValueError, match="at least 2 classes"):
    feature_spaces.classifier_feature_extractor(
        "celeba", train_x, 0 * train_y, test_x, 0 * test_y, cache_dir=tmp_path)
  with pytest.raises(TypeError, match="uint8"):
    feature_spaces.classifier_feature_extractor(
        "toy", _as_float(train_x), train_y, test_x, test_y, cache_dir=tmp_path)
  for f in os.listdir(toy["cache"]):  # corrupt a copy of the cache: wrong param shapes
    with open(os.path.join(toy["cache"], f), "rb") as src:
      (tmp_path / f).write_bytes(src.read())
  weights = next(p for p in tmp_path.iterdir() if p.suffix == ".msgpack")
  weights.write_bytes(flax.serialization.msgpack_serialize({"conv1": {"kernel": np.zeros(3)}}))
  with pytest.raises(ValueError, match="delete it to retrain"):
    feature_spaces.classifier_feature_extractor(
        "toy", *toy["data"], cache_dir=tmp_path, config=_TOY_CONFIG)


def test_extractor_batches_and_validates(toy):
  extractor = toy["extractor"]
  images = _as_float(toy["data"][2][:23])
  feats, logits = extractor.features_and_logits(images)
  assert feats.shape == (23, 16) and logits.shape == (23, 2)
  small = feature_spaces.classifier_feature_extractor(
      "toy", *toy["data"], cache_dir=toy["cache"], config=_TOY_CONFIG, batch_size=5)
  np.testing.assert_allclose(small.features(images), feats, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(extractor.logits(images), logits)
  with pytest.raises(TypeError, match="to_float"):
    extractor.features(toy["data"][2][:4])
  with pytest.raises(ValueError, match="must lie in \\[-1, 1\\]"):
    extractor.features(images * 255)


def test_feature_metrics_keys_and_values(toy):
  extractor = toy["extractor"]
  real = _as_float(toy["data"][0][:120])
  reference = metrics.reference_stats(extractor, real)
  assert reference.feature_space == "toy_clf" and reference.features.shape == (120, 16)
  scores = metrics.feature_metrics(extractor, reference, real, kid_subsets=5, kid_subset_size=50,
                                   is_splits=4)
  assert set(scores) == {"fid_toy_clf", "kid_toy_clf", "kid_std_toy_clf", "is_toy_clf",
                         "is_std_toy_clf"}
  assert abs(scores["fid_toy_clf"]) < 1e-6
  stats = metrics.gaussian_stats(extractor.features(real))
  assert scores["fid_toy_clf"] == pytest.approx(metrics.frechet_distance(*stats, *stats), abs=1e-6)
  bright_only = _as_float(toy["data"][0][toy["data"][1] == 1][:100])
  worse = metrics.feature_metrics(extractor, reference, bright_only, kid_subsets=5,
                                  kid_subset_size=50, is_splits=4)
  assert worse["fid_toy_clf"] > 1.0 and worse["kid_toy_clf"] > scores["kid_toy_clf"]
  assert worse["is_toy_clf"] < scores["is_toy_clf"]
  with pytest.raises(ValueError, match="feature space 'inception'"):
    metrics.feature_metrics(extractor, reference._replace(feature_space="inception"), real)
  with pytest.raises(TypeError, match="ReferenceStats"):
    metrics.feature_metrics(extractor, (reference.mu, reference.sigma), real)


# ----------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def inception_npz(tmp_path_factory):
  rng = np.random.default_rng(10)
  shapes = inception.variable_shapes()

  def fill(path, spec):
    leaf = path[-1].key
    if leaf == "kernel":
      return (rng.standard_normal(spec.shape) * np.sqrt(2 / np.prod(spec.shape[:-1]))).astype(
          np.float32)
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, spec.shape).astype(np.float32)
    return (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)

  variables = jax.tree.map_with_path(fill, shapes)
  state_dict = inception.to_state_dict(variables)
  path = tmp_path_factory.mktemp("inception") / "fid_inception.npz"
  np.savez(path, **state_dict)
  return dict(path=path, variables=variables, state_dict=state_dict)


def test_inception_state_dict_names_and_size(inception_npz):
  sd = inception_npz["state_dict"]
  assert len(sd) == 94 * 5 + 2  # 94 BasicConv2d (conv.weight + 4 BN tensors) + fc
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert sd["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
  assert sd["fc.weight"].shape == (1008, 2048)
  # torchvision's inception_v3 has 27,161,264 params; minus the aux head (3,326,696), plus 8
  # classes.
  n_params = sum(v.size for k, v in sd.items() if "running_" not in k)
  assert n_params == 27_161_264 - 3_326_696 + 8 * 2049
  back = inception.from_state_dict(sd)
  jax.tree.map(np.testing.assert_array_equal, back, inception_npz["variables"])


def _torch_bilinear_matrix(in_size, out_size):
  """Interpolation matrix of torch's F.interpolate(mode='bilinear', align_corners=False)."""
  src = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
  low = np.minimum(np.floor(src).astype(int), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = src - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


@pytest.mark.parametrize("height,width", [(28, 28), (7, 5), (400, 350)])
def test_inception_preprocess_matches_torch_bilinear(height, width):
  rng = np.random.default_rng(12)
  images = rng.uniform(-1, 1, (2, height, width, 1)).astype(np.float32)
  rows, cols = _torch_bilinear_matrix(height, 299), _torch_bilinear_matrix(width, 299)
  expected = np.einsum("ph,nhwc,qw->npqc", rows, images.astype(np.float64), cols, optimize=True)
  got = np.asarray(inception.preprocess(images))
  assert got.shape == (2, 299, 299, 3)
  for channel in range(3):
    np.testing.assert_allclose(got[..., channel], expected[..., 0], atol=1e-4)


def test_inception_extractor_forward(inception_npz):
  extractor = feature_spaces.inception_feature_extractor(inception_npz["path"], batch_size=2)
  assert extractor.name == "inception"
  rng = np.random.default_rng(11)
  gray = rng.uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
  feats, logits = extractor.features_and_logits(gray)
  assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # pool3 averages ReLU outputs
  # Grayscale is repeated to RGB before the network.
  np.testing.assert_allclose(extractor.features(np.repeat(gray, 3, axis=-1)), feats, rtol=1e-5,
                             atol=1e-5)
  w = inception_npz["state_dict"]
  np.testing.assert_allclose(logits, feats @ w["fc.weight"].T + w["fc.bias"], rtol=1e-4, atol=1e-4)


def test_inception_missing_file_wrong_keys_and_format(inception_npz, tmp_path):
  missing = tmp_path / "nope.pth"
  with pytest.raises(FileNotFoundError) as err:
    feature_spaces.inception_feature_extractor(missing)
  assert str(missing) in str(err.value) and "pt_inception-2015-12-05-6726825d.pth" in str(err.value)

  sd = dict(inception_npz["state_dict"])
  del sd["Mixed_6b.branch7x7_2.conv.weight"]
  np.savez(tmp_path / "partial.npz", **sd)
  with pytest.raises(KeyError, match="Mixed_6b.branch7x7_2.conv.weight"):
    inception.load_variables(tmp_path / "partial.npz")

  sd = dict(inception_npz["state_dict"], **{"fc.bias": np.zeros(1000, np.float32)})
  with pytest.raises(ValueError, match="'fc.bias' has shape \\(1000,\\), expected \\(1008,\\)"):
    inception.from_state_dict(sd)

  (tmp_path / "w.ckpt").write_bytes(b"")
  with pytest.raises(ValueError, match="Unknown Inception weights format"):
    inception.load_variables(tmp_path / "w.ckpt")


def test_inception_pth_without_torch_says_what_to_do(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    pytest.skip("torch is installed; the .pth path is exercised by real weights only")
  except ImportError:
    pass
  (tmp_path / "w.pth").write_bytes(b"")
  with pytest.raises(ImportError, match="pip install torch.*\\.npz"):
    inception.load_variables(tmp_path / "w.pth")

"""Feature spaces for FID/KID/IS: the standard Inception-v3 and a per-data-set classifier.

- ``inception``: the standard FID Inception-v3 (2048-d pool3, 1008-class logits), from weights the
  user provides (:func:`inception_feature_extractor`; see :mod:`lth_jax.models.inception`).
- ``<dataset>_clf``: a small CNN trained by lth_jax on the data set itself
  (:func:`classifier_feature_extractor`), cached on disk after the first training.

Images given to a :class:`FeatureExtractor` are float ``[N, H, W, C]`` in [-1, 1] (``data.to_float``
of the uint8 data; generator outputs). Data sets given to :func:`train_classifier` are uint8
``[N, H, W, C]`` as :mod:`lth_jax.data` loads them, mapped to [-1, 1] by ``x / 127.5 - 1``.
The distances computed in these spaces are in :mod:`lth_jax.metrics`.

Example::

  from lth_jax import feature_spaces
  extractor = feature_spaces.classifier_feature_extractor(
      'fmnist', train_x, train_y, test_x, test_y, cache_dir='~/.cache/lth_jax')
  features, logits = extractor.features_and_logits(images)   # [N, 128], [N, 10]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from lth_jax.models import classifier as classifier_lib
from lth_jax.models import inception as inception_lib

ArrayLike = np.ndarray | jax.Array
Images = ArrayLike

# Slack allowed beyond [-1, 1] for float images (rounding in a tanh/sigmoid output).
_RANGE_SLACK = 1e-3

DEFAULT_CLASSIFIER_CONFIG = {
    "steps": 2400,
    "batch_size": 128,
    "learning_rate": 3e-3,
    "width": 32,
    "feature_dim": 128,
    "seed": 0,
}
# Bump when the classifier architecture or training recipe changes, to invalidate old caches.
_CLASSIFIER_CACHE_FORMAT = 1


class FeatureExtractor(NamedTuple):
  """A named feature space for FID/KID (features) and IS (logits).

  Attributes:
    name: feature-space name used in metric keys (``'inception'``, ``'fmnist_clf'``).
    features: images float ``[N, H, W, C]`` in [-1, 1] → ``np.ndarray [N, D]`` float32.
    logits: images → ``np.ndarray [N, K]`` float32 class logits.
    features_and_logits: images → both, in one pass over the network.
    info: facts to report with the metrics (e.g. the classifier's test accuracy, weights path;
      ``weights_sha256``: the first 12 hex digits of the weights file's SHA-256, which names
      the feature space exactly: two classifiers of one config trained on two machines differ).
  """
  name: str
  features: Callable[[Images], np.ndarray]
  logits: Callable[[Images], np.ndarray]
  features_and_logits: Callable[[Images], tuple[np.ndarray, np.ndarray]]
  info: Mapping[str, Any]


def _check_float_images(images: Images, where: str) -> None:
  if getattr(images, "ndim", None) != 4:
    raise ValueError(f"{where}: expected images [N, H, W, C]; got shape {np.shape(images)}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(f"{where}: expected float images in [-1, 1], got dtype {images.dtype}; convert "
                    "uint8 data with lth_jax.data.to_float.")
  xp = np if isinstance(images, np.ndarray) else jnp
  low, high = float(xp.min(images)), float(xp.max(images))
  if not (-1.0 - _RANGE_SLACK <= low and high <= 1.0 + _RANGE_SLACK):
    raise ValueError(f"{where}: images must lie in [-1, 1]; got values in [{low:.4g}, {high:.4g}]. "
                     "Clip or rescale the model's outputs first (e.g. jnp.clip(x, -1, 1)).")


def _make_extractor(name: str, apply_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]], *,
                    batch_size: int, info: Mapping[str, Any]) -> FeatureExtractor:
  """Wraps a jitted ``images -> (features, logits)`` into a batched :class:`FeatureExtractor`."""
  if batch_size < 1:
    raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}.")

  def features_and_logits(images: Images) -> tuple[np.ndarray, np.ndarray]:
    _check_float_images(images, f"feature extractor {name!r}")
    n = images.shape[0]
    size = min(batch_size, n)  # one compiled shape; the last batch is zero-padded to it
    feats, logits = [], []
    for start in range(0, n, size):
      batch = jnp.asarray(images[start:start + size])
      real = batch.shape[0]
      if real < size:
        batch = jnp.pad(batch, ((0, size - real), (0, 0), (0, 0), (0, 0)))
      f, l = apply_fn(batch)
      feats.append(np.asarray(f[:real], np.float32))
      logits.append(np.asarray(l[:real], np.float32))
    return np.concatenate(feats), np.concatenate(logits)

  return FeatureExtractor(
      name=name,
      features=lambda images: features_and_logits(images)[0],
      logits=lambda images: features_and_logits(images)[1],
      features_and_logits=features_and_logits,
      info=dict(info))


def inception_feature_extractor(weights_path: str | os.PathLike, *,
                                batch_size: int = 50) -> FeatureExtractor:
  """The standard FID feature space: Inception-v3 pool3 (2048-d) and 1008-class logits.

  Images of any size and 1 or 3 channels are resized to 299x299 (bilinear, no antialiasing, as
  pytorch-fid) and grayscale is repeated to RGB (:func:`lth_jax.models.inception.preprocess`).

  Args:
    weights_path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (needs torch) or its
      ``.npz`` conversion; nothing is downloaded.
    batch_size: images per forward pass.

  Returns:
    A :class:`FeatureExtractor` named ``'inception'``.

  Raises:
    FileNotFoundError, ValueError (``inception.WeightsFileError``, also a ``KeyError`` or
      ``ImportError`` where the file lacks a key or needs torch): see
      :func:`lth_jax.models.inception.load_variables`.
  """
  variables = jax.device_put(inception_lib.load_variables(weights_path))
  model = inception_lib.InceptionV3()
  apply = jax.jit(lambda v, images: model.apply(v, inception_lib.preprocess(images)))
  apply_fn = functools.partial(apply, variables)  # weights as arguments, not baked-in constants
  return _make_extractor("inception", apply_fn, batch_size=batch_size,
                         info={"weights": os.fspath(weights_path),
                               "weights_sha256": _file_sha256(weights_path)})


def _file_sha256(path: str | os.PathLike) -> str:
  """The first 12 hex digits of the SHA-256 of the file at ``path``."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:12]


def _check_dataset(images: np.ndarray, labels: np.ndarray, split: str) -> None:
  if images.dtype != np.uint8 or images.ndim != 4:
    raise TypeError(f"{split} images must be uint8 [N, H, W, C] (as lth_jax.data loads them); got "
                    f"dtype {images.dtype}, shape {images.shape}.")
  if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{split} labels must be integers [N] matching {images.shape[0]} images; got "
                     f"dtype {labels.dtype}, shape {labels.shape}.")


def _num_classes(train_labels: ArrayLike, test_labels: ArrayLike) -> int:
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  if num_classes < 2:
    raise ValueError("A classifier feature space needs labels of at least 2 classes; these labels "
                     "are all 0 (a data set without labels, e.g. CelebA, has none: use the "
                     "Inception feature space).")
  return num_classes


def _to_float(images: jax.Array) -> jax.Array:
  """uint8 → float32 in [-1, 1], the same map as ``lth_jax.data.to_float``."""
  return images.astype(jnp.float32) / jnp.float32(127.5) - jnp.float32(1.0)


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, test_images: np.ndarray,
                     test_labels: np.ndarray, *, key: jax.Array, steps: int, batch_size: int = 128,
                     learning_rate: float = 3e-3, width: int = 32, feature_dim: int = 128,
                     num_classes: int | None = None) -> tuple[dict, float]:
  """Trains :class:`lth_jax.models.classifier.Classifier` with Adam (cosine-decayed learning rate).

  The training set lives on the default device as uint8; each jitted step gathers its minibatch
  (per-epoch permutations) there. Steps are dispatched from Python rather than fused in a
  ``lax.scan``: XLA:CPU runs convolutions inside loops about 10x slower.

  Args:
    train_images, test_images: uint8 ``[N, H, W, C]`` (28x28 or 32x32, C = 1 or 3).
    train_labels, test_labels: integer ``[N]`` class ids in ``[0, num_classes)``.
    key: PRNG key for the initialisation and the minibatch order.
    steps: optimizer steps.
    batch_size: examples per step.
    learning_rate: peak Adam learning rate.
    width, feature_dim: model size (see the model).
    num_classes: defaults to ``max(label) + 1`` over both splits.

  Returns:
    ``(params, test_accuracy)``: the classifier's ``params`` dict and its accuracy on the test set.

  Raises:
    TypeError, ValueError: on malformed data or options.
  """
  _check_dataset(train_images, train_labels, "train")
  _check_dataset(test_images, test_labels, "test")
  if train_images.shape[1:] != test_images.shape[1:]:
    raise ValueError(f"train and test images differ in shape: {train_images.shape[1:]} vs "
                     f"{test_images.shape[1:]}.")
  if steps < 1 or not 1 <= batch_size <= train_images.shape[0]:
    raise ValueError(f"train_classifier: need steps >= 1 and 1 <= batch_size <= "
                     f"{train_images.shape[0]}; got steps={steps}, batch_size={batch_size}.")
  if num_classes is None:
    num_classes = _num_classes(train_labels, test_labels)
  model = classifier_lib.Classifier(num_classes=num_classes, width=width, feature_dim=feature_dim)
  init_key, order_key = jax.random.split(key)
  params = model.init(init_key, jnp.zeros((1,) + train_images.shape[1:], jnp.float32))["params"]
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  n = train_images.shape[0]
  per_epoch = n // batch_size
  epochs = -(-steps // per_epoch)
  order = np.concatenate([np.asarray(jax.random.permutation(k, n))[:per_epoch * batch_size]
                          for k in jax.random.split(order_key, epochs)])
  order = order.reshape(-1, batch_size)[:steps]

  @jax.jit
  def step(params, opt_state, images, labels, idx):
    def loss_fn(p):
      _, logits = model.apply({"params": p}, _to_float(images[idx]))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  images, labels = jnp.asarray(train_images), jnp.asarray(train_labels)
  opt_state = optimizer.init(params)
  for idx in order:
    params, opt_state, loss = step(params, opt_state, images, labels, idx)
  logging.info("classifier: %d steps, final loss %.4f", steps, float(loss))
  return params, _accuracy(model, params, test_images, test_labels)


def _accuracy(model: classifier_lib.Classifier, params: dict, images: np.ndarray,
              labels: np.ndarray, *, batch_size: int = 1000) -> float:
  predict = jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, _to_float(x))[1], axis=-1))
  correct = 0
  for start in range(0, images.shape[0], batch_size):
    pred = predict(params, jnp.asarray(images[start:start + batch_size]))
    correct += int(np.sum(np.asarray(pred) == np.asarray(labels[start:start + batch_size])))
  return correct / images.shape[0]


def _atomic_write(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _classifier_identity(cfg: Mapping[str, Any], image_shape: list[int], num_classes: int) -> dict:
  return {"format": _CLASSIFIER_CACHE_FORMAT, "config": dict(cfg), "image_shape": image_shape,
          "num_classes": num_classes}


def classifier_cache_path(dataset_name: str, *, image_shape: tuple[int, ...] | list[int],
                          num_classes: int, cache_dir: str | os.PathLike,
                          config: Mapping[str, Any] | None = None) -> str:
  """The weights file :func:`classifier_feature_extractor` caches a classifier in (its JSON
  record is next to it, ``.json``): ``{cache_dir}/{dataset_name}_clf-{hash}.msgpack``, ``hash``
  covering the training config (:data:`DEFAULT_CLASSIFIER_CONFIG` with ``config``'s overrides),
  the image shape ``[H, W, C]`` and the class count; ``~`` in ``cache_dir`` is expanded. Whether
  it exists says whether that classifier must still be trained."""
  cfg = {**DEFAULT_CLASSIFIER_CONFIG, **(config or {})}
  identity = _classifier_identity(cfg, [int(d) for d in image_shape], int(num_classes))
  digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(os.path.expanduser(os.fspath(cache_dir)),
                      f"{dataset_name}_clf-{digest}.msgpack")


def classifier_feature_extractor(dataset_name: str, train_images: np.ndarray,
                                 train_labels: np.ndarray, test_images: np.ndarray,
                                 test_labels: np.ndarray, *, cache_dir: str | os.PathLike,
                                 config: Mapping[str, Any] | None = None,
                                 batch_size: int = 500) -> FeatureExtractor:
  """A domain classifier's feature space, trained once per data set and config, then cached.

  The params are stored as ``{cache_dir}/{dataset_name}_clf-{hash}.msgpack`` (flax.serialization)
  with a JSON record of the config, data shape, test accuracy and training time next to it; ``hash``
  covers the training config, image shape and class count. Later calls with the same arguments load
  them instead of training.

  Args:
    dataset_name: short lowercase name (``'fmnist'``); the feature space is
      ``f'{dataset_name}_clf'``.
    train_images, train_labels, test_images, test_labels: see :func:`train_classifier`.
    cache_dir: directory for the cache (created if missing).
    config: overrides of :data:`DEFAULT_CLASSIFIER_CONFIG` (``steps``, ``batch_size``,
      ``learning_rate``, ``width``, ``feature_dim``, ``seed``).
    batch_size: images per forward pass when extracting features.

  Returns:
    A :class:`FeatureExtractor` named ``f'{dataset_name}_clf'``; ``info`` holds the test accuracy.

  Raises:
    ValueError: on a malformed name, an unknown config key, or a cache file that does not match the
      model (delete it to retrain).
  """
  if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", dataset_name):
    raise ValueError(f"dataset_name must be lowercase letters, digits and '_' (it names metric "
                     f"keys and cache files); got {dataset_name!r}.")
  unknown = sorted(set(config or {}) - set(DEFAULT_CLASSIFIER_CONFIG))
  if unknown:
    raise ValueError(f"Unknown classifier config keys {unknown}; known: "
                     f"{sorted(DEFAULT_CLASSIFIER_CONFIG)}.")
  cfg = {**DEFAULT_CLASSIFIER_CONFIG, **(config or {})}
  _check_dataset(train_images, train_labels, "train")
  _check_dataset(test_images, test_labels, "test")
  num_classes = _num_classes(train_labels, test_labels)
  image_shape = list(train_images.shape[1:])
  identity = _classifier_identity(cfg, image_shape, num_classes)
  name = f"{dataset_name}_clf"
  cache_dir = os.path.expanduser(os.fspath(cache_dir))
  weights_path = classifier_cache_path(dataset_name, image_shape=image_shape,
                                       num_classes=num_classes, cache_dir=cache_dir, config=cfg)
  record_path = weights_path[:-len(".msgpack")] + ".json"

  model = classifier_lib.Classifier(num_classes=num_classes, width=cfg["width"],
                                    feature_dim=cfg["feature_dim"])
  if os.path.isfile(weights_path) and os.path.isfile(record_path):
    with open(record_path, encoding="utf-8") as f:
      record = json.load(f)
    with open(weights_path, "rb") as f:
      params = flax.serialization.msgpack_restore(f.read())
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))["params"]
    same = (jax.tree.structure(params) == jax.tree.structure(expected) and all(
        np.shape(a) == b.shape for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected))))
    if not same:
      raise ValueError(f"Cached classifier {weights_path} does not match the model for config "
                       f"{cfg}; delete it to retrain.")
    logging.info("classifier %s loaded from %s (test accuracy %.4f)", name, weights_path,
                 record["test_accuracy"])
  else:
    start = time.perf_counter()
    params, accuracy = train_classifier(
        train_images, train_labels, test_images, test_labels, key=jax.random.key(cfg["seed"]),
        steps=cfg["steps"], batch_size=cfg["batch_size"], learning_rate=cfg["learning_rate"],
        width=cfg["width"], feature_dim=cfg["feature_dim"], num_classes=num_classes)
    record = {**identity, "dataset": dataset_name, "feature_space": name,
              "test_accuracy": accuracy, "train_seconds": round(time.perf_counter() - start, 2)}
    os.makedirs(cache_dir, exist_ok=True)
    _atomic_write(weights_path, flax.serialization.msgpack_serialize(jax.device_get(params)))
    _atomic_write(record_path, json.dumps(record, indent=2, sort_keys=True).encode())
    logging.info("classifier %s trained in %.1f s, test accuracy %.4f, saved to %s", name,
                 record["train_seconds"], accuracy, weights_path)

  apply = jax.jit(lambda p, images: model.apply({"params": p}, images))
  apply_fn = functools.partial(apply, jax.device_put(params))
  return _make_extractor(name, apply_fn, batch_size=batch_size, info={
      "test_accuracy": record["test_accuracy"], "weights": weights_path,
      "weights_sha256": _file_sha256(weights_path)})

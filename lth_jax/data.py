"""Image data sets for the generative models: loading, preprocessing and batching.

Every data set is read through tfds' random-access data source (``builder.as_data_source``, what
``tfds.data_source`` returns) from an ``array_record`` build, so reading needs no TensorFlow. A
loaded split is held whole in host memory as ``uint8`` (``Split``; CelebA's 162,770 training
images take 0.5 GB at 32x32, 2 GB at 64x64); models see ``float32`` images in ``[-1, 1]``
(``to_float``).

Sources:
  * ``fashion_mnist`` (default ``source='auto'`` = ``'idx'``): built offline, once, from the
    original IDX files installed by Debian's package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist``; another directory via ``idx_dir=`` or the
    environment variable ``LTH_JAX_FMNIST_DIR``; ``lth_jax.fashion_mnist_idx`` reads them). The
    build is cached in ``<data_dir>/fashion_mnist_idx``; delete that directory to rebuild from
    other IDX files. Processes that load it at once build it once (a file lock).
  * ``mnist``, ``cifar10``, ``celeb_a`` and ``fashion_mnist`` with ``source='tfds'``: tfds' own
    builders. They are downloaded and prepared only when ``download=True`` is passed (needs
    internet; tfds' mnist, fashion_mnist and cifar10 builders also need TensorFlow while
    preparing, because they PNG-encode images with ``tf.image``; reading them later does not).

``data_dir`` defaults to ``$LTH_JAX_DATA_DIR`` or ``~/.cache/lth_jax/tensorflow_datasets``.

In tests, ``tfds.testing.mock_data`` serves random examples for the tfds sources; pass
``download=True`` there (mock_data turns the download into a no-op; without it ``load`` reports
the data set as not prepared).

Example:
  >>> train = data.load('fashion_mnist', 'train', image_size=32)   # Split, uint8 [60000,32,32,1]
  >>> images = data.device_put(train).images
  >>> batch = data.sample_batch(key, images, 64)                   # float32 [64,32,32,1]
"""

from collections.abc import Callable, Iterator
import hashlib
import importlib.util
import os
import pathlib
import tempfile
from typing import NamedTuple

from etils import epath
import filelock
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from lth_jax import fashion_mnist_idx

DATASETS = ('fashion_mnist', 'mnist', 'cifar10', 'celeb_a')
SPLITS = ('train', 'test')
SOURCES = ('auto', 'idx', 'tfds')

DATA_DIR_ENV = 'LTH_JAX_DATA_DIR'
FMNIST_DIR_ENV = 'LTH_JAX_FMNIST_DIR'
DEFAULT_DATA_DIR = '~/.cache/lth_jax/tensorflow_datasets'
DEFAULT_FMNIST_DIR = '/usr/share/datasets/fashion-mnist'

# Side of the square centre crop taken from CelebA's 218x178 images before resizing.
CELEB_A_CROP = 140

_NUM_CHANNELS = {'fashion_mnist': 1, 'mnist': 1, 'cifar10': 3, 'celeb_a': 3}
# CelebA has no class labels: every label is 0, hence a single class.
_NUM_CLASSES = {'fashion_mnist': 10, 'mnist': 10, 'cifar10': 10, 'celeb_a': 1}
_IMAGE_SIZES = {'fashion_mnist': (28, 32), 'mnist': (28, 32), 'cifar10': (32,), 'celeb_a': (32, 64)}
# Examples decoded per batched read in `load`: bounds the memory of undecoded CelebA images.
_READ_CHUNK = 512


class DataNotFoundError(FileNotFoundError):
  """A data set is neither prepared in ``data_dir`` nor available to build or download."""


class MissingDependencyError(ModuleNotFoundError):
  """Preparing a data set needs a package that is not installed (the message says which and how
  to install it); the binaries print it as one line."""


class Split(NamedTuple):
  """One split of a data set, whole.

  Attributes:
    images: uint8 [N, H, W, C], 0 is black.
    labels: int32 [N], class ids in ``[0, num_classes(name))``.
  """

  images: np.ndarray | jax.Array
  labels: np.ndarray | jax.Array


def _check_name(name: str) -> None:
  if name not in DATASETS:
    raise ValueError(f'Unknown data set {name!r}; valid names: {", ".join(DATASETS)}.')


def num_channels(name: str) -> int:
  """Number of image channels of data set ``name`` (1 for the MNISTs, 3 for colour)."""
  _check_name(name)
  return _NUM_CHANNELS[name]


def num_classes(name: str) -> int:
  """Number of classes of data set ``name`` (1 for CelebA, whose labels are all 0)."""
  _check_name(name)
  return _NUM_CLASSES[name]


def image_sizes(name: str) -> tuple[int, ...]:
  """Image sides (pixels) that ``load(name, ..., image_size=...)`` accepts."""
  _check_name(name)
  return _IMAGE_SIZES[name]


def default_data_dir() -> epath.Path:
  """``$LTH_JAX_DATA_DIR`` if set, else ``~/.cache/lth_jax/tensorflow_datasets``."""
  return _data_dir_path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _data_dir_path(data_dir: str | os.PathLike) -> epath.Path:
  """A local or cloud (``gs://...``) data directory; ``~`` expanded."""
  return epath.Path(os.path.expanduser(os.fspath(data_dir)))


def default_fmnist_dir() -> pathlib.Path:
  """``$LTH_JAX_FMNIST_DIR`` if set, else Debian's ``/usr/share/datasets/fashion-mnist``."""
  return pathlib.Path(os.environ.get(FMNIST_DIR_ENV) or DEFAULT_FMNIST_DIR).expanduser()


def _check_idx_files(idx_dir: pathlib.Path) -> None:
  """Raises DataNotFoundError unless the four Fashion-MNIST IDX files are in ``idx_dir``."""
  missing = [f for pair in fashion_mnist_idx.FILES.values() for f in pair
             if not (idx_dir / f).is_file()]
  if missing:
    raise DataNotFoundError(
        f'Fashion-MNIST IDX files not found in {idx_dir} (missing: {", ".join(missing)}). '
        "Install Debian's package dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`), "
        f'or set {FMNIST_DIR_ENV} (or idx_dir=) to a directory holding the four *-ubyte.gz files, '
        "or use source='tfds' with download=True.")


def _prepared(make_builder: Callable[[], tfds.core.DatasetBuilder],
              prepare: Callable[[tfds.core.DatasetBuilder], None]) -> tfds.core.DatasetBuilder:
  """``make_builder()``, prepared by ``prepare(builder)`` unless it already is.

  Processes on one host that ask at once (``reproduce.py --workers``, pytest-xdist) prepare it
  once: the others wait on a lock file in the temporary directory named after the build's path,
  then find it prepared (tfds would fail renaming its finished build onto the first one's).
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  digest = hashlib.sha256(os.fspath(builder.data_path).encode()).hexdigest()[:16]
  with filelock.FileLock(os.path.join(tempfile.gettempdir(), f'lth_jax-prepare-{digest}.lock')):
    builder = make_builder()  # Another process may have prepared it while this one waited.
    if not builder.is_prepared():
      prepare(builder)
  return builder


def _idx_data_source(split: str, data_dir: epath.Path, idx_dir: pathlib.Path):
  def prepare(builder):
    _check_idx_files(idx_dir)
    builder.download_and_prepare()
  builder = _prepared(
      lambda: fashion_mnist_idx.FashionMnistIdx(idx_dir=idx_dir, data_dir=data_dir), prepare)
  return builder.as_data_source(split=split)


def _tfds_data_source(name: str, split: str, data_dir: epath.Path, download: bool):
  def prepare(builder):
    if not download:
      hint = " or source='idx' (the default) to build it offline" if name == 'fashion_mnist' else ''
      raise DataNotFoundError(
          f'tfds data set {name!r} is not prepared in {data_dir}. Pass download=True to download '
          f'and prepare it (needs internet){hint}, or point data_dir / {DATA_DIR_ENV} at a '
          'directory where it is prepared in array_record format.')
    try:
      builder.download_and_prepare()
    except ModuleNotFoundError as e:
      # tfds re-raises the import error without its `name`, so ask whether TF is there at all.
      if importlib.util.find_spec('tensorflow') is not None:
        raise
      raise MissingDependencyError(
          f"tfds needs TensorFlow to prepare {name!r} (its builder PNG-encodes images with "
          "tf.image). `pip install tensorflow-cpu`, run once with download=True, and uninstall "
          f"it if you like: reading the prepared data needs no TensorFlow. Downloads are kept in "
          f"{data_dir}/downloads.", name='tensorflow') from e
  builder = _prepared(
      lambda: tfds.builder(name, data_dir=data_dir, file_format='array_record'), prepare)
  return builder.as_data_source(split=split)


def _read_examples(ds, keys: range) -> list[dict[str, np.ndarray]]:
  """Decoded examples ``keys`` of a tfds data source, batched when its storage allows it.

  Batched ``__getitems__`` is ~10x faster than indexing one by one (measured on array_record),
  but the mock storage of ``tfds.testing.mock_data`` (tfds 4.9.10) lacks a working one, so
  storages whose class does not define it are read one by one.
  """
  if getattr(type(ds.data_source), '__getitems__', None) is None:
    return [ds[k] for k in keys]
  return ds.__getitems__(list(keys))


def _centre_crop_resize(image: np.ndarray, crop: int, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> centre ``crop`` square, bilinear (antialiased) resize to [size, size, C]."""
  h, w = image.shape[:2]
  top, left = (h - crop) // 2, (w - crop) // 2
  pil = Image.fromarray(image[top:top + crop, left:left + crop])
  return np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))


def load(name: str,
         split: str,
         *,
         image_size: int = 32,
         data_dir: str | os.PathLike | None = None,
         source: str = 'auto',
         download: bool = False,
         limit: int | None = None,
         idx_dir: str | os.PathLike | None = None) -> Split:
  """Loads a whole split into host memory, in the stored order.

  Args:
    name: one of ``DATASETS``.
    split: ``'train'`` or ``'test'``.
    image_size: side in pixels, one of ``image_sizes(name)``. 28x28 images are zero-padded
      (black border of 2 pixels) to 32; CelebA is centre-cropped to 140x140 then resized.
    data_dir: tfds data directory, local or ``gs://...``; default ``default_data_dir()``.
    source: ``'auto'`` (``'idx'`` for fashion_mnist, ``'tfds'`` otherwise), ``'idx'``
      (fashion_mnist built from local IDX files) or ``'tfds'`` (tfds' own builder).
    download: let tfds download and prepare a data set missing from ``data_dir``. Never
      happens otherwise.
    limit: keep only the first ``limit`` examples (all if None or larger than the split).
    idx_dir: directory of the Fashion-MNIST IDX files; default ``default_fmnist_dir()``.

  Returns:
    ``Split`` with images uint8 [N, image_size, image_size, num_channels(name)] and
    labels int32 [N].

  Raises:
    ValueError: unknown name, split, source or image_size, or a bad ``limit``.
    DataNotFoundError: the data is not prepared and cannot be built or was not to be downloaded.
    fashion_mnist_idx.CorruptDataError: an IDX file is damaged (the message names it).
    MissingDependencyError: tfds needs TensorFlow to prepare the data set (``download=True``).
  """
  _check_name(name)
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid splits: {", ".join(SPLITS)}.')
  if source not in SOURCES:
    raise ValueError(f'Unknown source {source!r}; valid sources: {", ".join(SOURCES)}.')
  if image_size not in _IMAGE_SIZES[name]:
    raise ValueError(f'image_size={image_size!r} is not available for {name}; valid sizes: '
                     f'{", ".join(map(str, _IMAGE_SIZES[name]))}.')
  if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 1):
    raise ValueError(f'limit must be a positive int or None, got {limit!r}.')
  if source == 'auto':
    source = 'idx' if name == 'fashion_mnist' else 'tfds'
  if source == 'idx' and name != 'fashion_mnist':
    raise ValueError(f"source='idx' exists only for fashion_mnist, not {name}; use source='tfds'.")
  data_dir = default_data_dir() if data_dir is None else _data_dir_path(data_dir)

  if source == 'idx':
    idx_dir = default_fmnist_dir() if idx_dir is None else pathlib.Path(idx_dir).expanduser()
    ds = _idx_data_source(split, data_dir, idx_dir)
  else:
    ds = _tfds_data_source(name, split, data_dir, download)

  n = len(ds) if limit is None else min(int(limit), len(ds))
  channels = _NUM_CHANNELS[name]
  stored = image_size if name == 'celeb_a' else _IMAGE_SIZES[name][0]
  images = np.empty((n, stored, stored, channels), np.uint8)
  labels = np.zeros((n,), np.int32)
  for start in range(0, n, _READ_CHUNK):
    for i, example in enumerate(_read_examples(ds, range(start, min(start + _READ_CHUNK, n))),
                                start):
      if name == 'celeb_a':
        images[i] = _centre_crop_resize(example['image'], CELEB_A_CROP, image_size)
      else:
        images[i] = example['image']
        labels[i] = example['label']
  if stored < image_size:
    pad = (image_size - stored) // 2
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  return Split(images=images, labels=labels)


def to_float(images: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
  """uint8 images -> float32 in [-1, 1] (0 -> -1, 255 -> 1); numpy in, numpy out, jax in, jax out.

  Raises:
    TypeError: images are not uint8 (e.g. already converted).
  """
  if images.dtype != np.uint8:
    raise TypeError(f'to_float expects uint8 images, got {images.dtype}.')
  # A multiplication, not a division that XLA would turn into one anyway: numpy and jit then
  # agree bit for bit, and 0 and 255 land exactly on -1 and 1.
  return (images.astype(np.float32) - np.float32(127.5)) * np.float32(1 / 127.5)


def sample_batch(key: jax.Array, images: jax.Array, batch_size: int) -> jax.Array:
  """Draws a batch uniformly **with replacement**, on device; jit-friendly.

  Args:
    key: PRNG key; the same key gives the same batch.
    images: uint8 [N, H, W, C], e.g. ``device_put(split).images``.
    batch_size: B; must be static under ``jax.jit`` (``static_argnums=2``).

  Returns:
    float32 [B, H, W, C] in [-1, 1].
  """
  idx = jax.random.randint(key, (batch_size,), 0, images.shape[0])
  return shard_batch(to_float(jnp.take(images, idx, axis=0)))


def shard_batch(batch: jax.Array) -> jax.Array:
  """Splits ``batch``'s leading axis over the ambient mesh's ``data`` axis, if there is one.

  Inside :class:`lth_jax.parallel.TicketRunner`'s programs the ``('ticket', 'data')`` mesh is
  ambient with ``data`` left to the compiler: this constraint makes each ticket's step data
  parallel over its ``data`` devices (BatchNorm statistics and losses become all-reduces; the
  values are those of the unsharded step). Outside a mesh, or when ``data`` has size 1 or is
  manual, ``batch`` is returned unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.shape.get("data", 1) == 1:
    return batch
  kind = dict(zip(mesh.axis_names, mesh.axis_types))["data"]
  if kind == jax.sharding.AxisType.Manual:
    return batch
  if kind == jax.sharding.AxisType.Explicit:
    return jax.sharding.reshard(batch, jax.sharding.PartitionSpec("data"))
  return jax.lax.with_sharding_constraint(batch, jax.sharding.PartitionSpec("data"))


def device_put(split: Split, sharding: jax.sharding.Sharding | None = None) -> Split:
  """Puts a whole split on device(s), still uint8 (a quarter of float32's memory).

  Args:
    split: from ``load``.
    sharding: where to put it, e.g. a replicated ``NamedSharding(mesh, P())`` for data-parallel
      sampling; default: the default device.

  Returns:
    ``Split`` of jax arrays.
  """
  return jax.device_put(split, sharding)


def batches(split: Split,
            batch_size: int,
            *,
            key: jax.Array,
            epochs: int | None = None,
            drop_remainder: bool = True,
            with_labels: bool = False) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
  """Returns an iterator over shuffled batches on the host, each epoch a fresh permutation.

  Epoch ``e`` is ordered by ``jax.random.permutation(jax.random.fold_in(key, e), N)``, so the
  stream depends only on ``key`` (and the split).

  Args:
    split: from ``load`` (host or device arrays).
    batch_size: B.
    key: PRNG key.
    epochs: number of passes; None for an endless stream.
    drop_remainder: drop each epoch's last batch if smaller than B (else yield it smaller).
    with_labels: yield ``(images, labels)`` instead of images alone.

  Returns:
    Iterator of float32 [B, H, W, C] images in [-1, 1] (of ``(images, int32 [B] labels)`` if
    ``with_labels``).

  Raises:
    ValueError: batch_size is not positive, or larger than the split with drop_remainder
      (which would yield nothing).
  """
  n = len(split.labels)
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if drop_remainder and batch_size > n:
    raise ValueError(f'batch_size={batch_size} exceeds the split size {n} with '
                     'drop_remainder=True: no batch would be produced.')
  stop = n - n % batch_size if drop_remainder else n
  return _batch_stream(split, batch_size, stop, key, epochs, with_labels)


def _batch_stream(split: Split, batch_size: int, stop: int, key: jax.Array, epochs: int | None,
                  with_labels: bool) -> Iterator[np.ndarray | tuple[np.ndarray, np.ndarray]]:
  """The generator behind `batches`, which checks its arguments before the first batch."""
  epoch = 0
  while epochs is None or epoch < epochs:
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(split.labels)))
    for start in range(0, stop, batch_size):
      idx = order[start:start + batch_size]
      images = to_float(split.images[idx])
      yield (images, split.labels[idx]) if with_labels else images
    epoch += 1

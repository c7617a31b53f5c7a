"""Tests of lth_jax.data: offline Fashion-MNIST build, tfds mock path, preprocessing, batching."""

import concurrent.futures
import gzip
import importlib.util
import itertools
import pathlib
import socket
import struct
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from lth_jax import data
from lth_jax import fashion_mnist_idx

DEBIAN_DIR = pathlib.Path(data.DEFAULT_FMNIST_DIR)
N_TRAIN, N_TEST = 20, 10


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Any attempt to reach the network fails at once instead of hanging in tfds' retries."""

  def refuse(*args, **kwargs):
    raise OSError('test_data.py must not use the network')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'getaddrinfo', refuse)


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def fake_fmnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """n random 28x28 images whose pixel [0, 0] is their index, and random labels."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = np.arange(n)
  return images, rng.integers(0, 10, n, dtype=np.uint8)


def write_fake_idx_dir(directory: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {'train': fake_fmnist(N_TRAIN, 0), 'test': fake_fmnist(N_TEST, 1)}
  for prefix, split in (('train', 'train'), ('t10k', 'test')):
    write_idx(directory / f'{prefix}-images-idx3-ubyte.gz', arrays[split][0])
    write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz', arrays[split][1])
  return arrays


@pytest.fixture(scope='module')
def fake(tmp_path_factory):
  """(idx_dir, data_dir, arrays): tiny IDX files and a data_dir where they are already built."""
  root = tmp_path_factory.mktemp('fake_fmnist')
  arrays = write_fake_idx_dir(root / 'idx')
  data.load('fashion_mnist', 'test', idx_dir=root / 'idx', data_dir=root / 'tfds')
  return root / 'idx', root / 'tfds', arrays


def load_fake(fake, split, **kwargs):
  idx_dir, data_dir, _ = fake
  return data.load('fashion_mnist', split, idx_dir=idx_dir, data_dir=data_dir, **kwargs)


# ---------------------------------------------------------------- offline Fashion-MNIST build


@pytest.mark.parametrize('split,n', [('train', N_TRAIN), ('test', N_TEST)])
def test_fake_idx_build_keeps_idx_order_and_values(fake, split, n):
  images, labels = fake[2][split]
  got = load_fake(fake, split, image_size=28)
  chex.assert_shape(got.images, (n, 28, 28, 1))
  chex.assert_type([got.images, got.labels], [np.uint8, np.int32])
  assert isinstance(got.images, np.ndarray)
  np.testing.assert_array_equal(got.images[..., 0], images)
  np.testing.assert_array_equal(got.labels, labels)


def test_pad_to_32_adds_a_black_border(fake):
  small = load_fake(fake, 'train', image_size=28).images
  big = load_fake(fake, 'train', image_size=32).images
  chex.assert_shape(big, (N_TRAIN, 32, 32, 1))
  np.testing.assert_array_equal(big[:, 2:30, 2:30], small)
  border = big.copy()
  border[:, 2:30, 2:30] = 0
  assert not border.any()


def test_limit_takes_the_first_examples(fake):
  full = load_fake(fake, 'train')
  first = load_fake(fake, 'train', limit=5)
  np.testing.assert_array_equal(first.images, full.images[:5])
  np.testing.assert_array_equal(first.labels, full.labels[:5])
  assert len(load_fake(fake, 'train', limit=10 * N_TRAIN).labels) == N_TRAIN


def test_env_vars_choose_idx_and_data_dirs(tmp_path, monkeypatch):
  arrays = write_fake_idx_dir(tmp_path / 'idx')
  monkeypatch.setenv(data.FMNIST_DIR_ENV, str(tmp_path / 'idx'))
  monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / 'tfds'))
  got = data.load('fashion_mnist', 'test', image_size=28)
  np.testing.assert_array_equal(got.labels, arrays['test'][1])
  assert (tmp_path / 'tfds' / 'fashion_mnist_idx' / '1.0.0' / 'dataset_info.json').is_file()


def test_build_is_reused_without_the_idx_files(fake, tmp_path):
  got = data.load('fashion_mnist', 'test', idx_dir=tmp_path / 'absent', data_dir=fake[1])
  np.testing.assert_array_equal(got.labels, fake[2]['test'][1])


def test_loads_at_once_build_once(tmp_path):
  """Workers that load an unbuilt data set at once (reproduce.py --workers) all get it: one
  builds, the others wait for it (without the lock, tfds fails renaming the second build)."""
  arrays = write_fake_idx_dir(tmp_path / 'idx')
  start = threading.Barrier(3)

  def load():
    start.wait()
    return data.load('fashion_mnist', 'test', idx_dir=tmp_path / 'idx', data_dir=tmp_path / 'tfds')

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    splits = [f.result() for f in [pool.submit(load) for _ in range(3)]]
  for split in splits:
    np.testing.assert_array_equal(split.labels, arrays['test'][1])


@pytest.fixture(scope='session')
def debian_data_dir(tmp_path_factory):
  """A data_dir holding the real Fashion-MNIST build (once per session, ~5 s)."""
  if not (DEBIAN_DIR / 'train-images-idx3-ubyte.gz').is_file():
    pytest.skip(f'Debian package dataset-fashion-mnist is not installed ({DEBIAN_DIR}).')
  data_dir = tmp_path_factory.mktemp('debian_tfds')
  data.load('fashion_mnist', 'test', idx_dir=DEBIAN_DIR, data_dir=data_dir, limit=1)
  return data_dir


@pytest.mark.parametrize('split,prefix,n', [('train', 'train', 60000), ('test', 't10k', 10000)])
def test_real_debian_fashion_mnist(debian_data_dir, split, prefix, n):
  got = data.load('fashion_mnist', split, idx_dir=DEBIAN_DIR, data_dir=debian_data_dir)
  chex.assert_shape(got.images, (n, 32, 32, 1))
  images = fashion_mnist_idx.read_idx(DEBIAN_DIR / f'{prefix}-images-idx3-ubyte.gz')
  labels = fashion_mnist_idx.read_idx(DEBIAN_DIR / f'{prefix}-labels-idx1-ubyte.gz')
  np.testing.assert_array_equal(got.images[:, 2:30, 2:30, 0], images)
  np.testing.assert_array_equal(got.labels, labels)
  np.testing.assert_array_equal(np.bincount(got.labels), [n // 10] * 10)


# ---------------------------------------------------------------- tfds' own builders, mocked


@pytest.mark.parametrize('name,size,channels', [
    ('cifar10', 32, 3), ('mnist', 28, 1), ('fashion_mnist', 32, 1), ('celeb_a', 64, 3),
    ('celeb_a', 32, 3)])
def test_tfds_path_with_mock_data(tmp_path, name, size, channels):
  with tfds.testing.mock_data(num_examples=12):
    got = data.load(name, 'train', image_size=size, source='tfds', download=True,
                    data_dir=tmp_path)
    first = data.load(name, 'train', image_size=size, source='tfds', download=True,
                      data_dir=tmp_path, limit=5)
  chex.assert_shape(got.images, (12, size, size, channels))
  chex.assert_type([got.images, got.labels], [np.uint8, np.int32])
  assert got.images.std() > 0
  assert ((got.labels >= 0) & (got.labels < data.num_classes(name))).all()
  np.testing.assert_array_equal(first.images, got.images[:5])
  assert not any(tmp_path.iterdir()), 'mock_data must not write to data_dir'


def test_cifar10_is_the_default_tfds_source(tmp_path):
  with tfds.testing.mock_data(num_examples=3):
    got = data.load('cifar10', 'test', download=True, data_dir=tmp_path)
  chex.assert_shape(got.images, (3, 32, 32, 3))


def test_tfds_without_download_fails_fast(tmp_path):
  with pytest.raises(data.DataNotFoundError, match=r"'cifar10' is not prepared.*download=True"):
    data.load('cifar10', 'train', data_dir=tmp_path)
  with pytest.raises(data.DataNotFoundError, match=r"source='idx'"):
    data.load('fashion_mnist', 'train', source='tfds', data_dir=tmp_path)


def test_tfds_download_without_tensorflow_says_so(tmp_path, monkeypatch):
  if importlib.util.find_spec('tensorflow') is not None:
    pytest.skip('TensorFlow is installed')

  def prepare_without_tf(self, **kwargs):
    raise ModuleNotFoundError("Failed to encode example:\nNo module named 'tensorflow'")

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', prepare_without_tf)
  with pytest.raises(ModuleNotFoundError, match=r"TensorFlow to prepare 'cifar10'.*pip install"):
    data.load('cifar10', 'train', data_dir=tmp_path, download=True)


# ---------------------------------------------------------------- errors


def test_missing_idx_files_error(tmp_path):
  with pytest.raises(data.DataNotFoundError) as info:
    data.load('fashion_mnist', 'train', idx_dir=tmp_path / 'none', data_dir=tmp_path / 'tfds')
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  for part in ('apt-get install dataset-fashion-mnist', 'LTH_JAX_FMNIST_DIR',
               "source='tfds' with download=True", str(tmp_path / 'none'),
               't10k-labels-idx1-ubyte.gz'):
    assert part in message


def _corrupt_not_gzip(path):
  path.write_bytes(b'not a gzip file at all')


def _corrupt_magic(path):
  with gzip.open(path, 'wb') as f:
    f.write(b'\x00\x00\x0d\x03' + b'\x00' * 64)


def _corrupt_truncated(path):
  raw = gzip.decompress(path.read_bytes())
  with gzip.open(path, 'wb') as f:
    f.write(raw[:-7])


@pytest.mark.parametrize('corrupt,match', [
    (_corrupt_not_gzip, 'not a readable gzip file'),
    (_corrupt_magic, 'not an IDX file of unsigned bytes'),
    (_corrupt_truncated, 'IDX header announces shape'),
])
def test_corrupt_idx_file_error_names_the_path(tmp_path, corrupt, match):
  write_fake_idx_dir(tmp_path / 'idx')
  bad = tmp_path / 'idx' / 't10k-images-idx3-ubyte.gz'
  corrupt(bad)
  with pytest.raises(fashion_mnist_idx.CorruptDataError, match=match) as info:
    data.load('fashion_mnist', 'train', idx_dir=tmp_path / 'idx', data_dir=tmp_path / 'tfds')
  assert str(bad) in str(info.value)
  # Nothing half-built is left behind: a repaired directory builds and loads.
  write_fake_idx_dir(tmp_path / 'idx')
  got = data.load('fashion_mnist', 'test', idx_dir=tmp_path / 'idx', data_dir=tmp_path / 'tfds')
  assert len(got.labels) == N_TEST


def test_mismatched_label_count_error(tmp_path):
  write_fake_idx_dir(tmp_path / 'idx')
  bad = tmp_path / 'idx' / 'train-labels-idx1-ubyte.gz'
  write_idx(bad, np.zeros(N_TRAIN - 1, np.uint8))
  with pytest.raises(fashion_mnist_idx.CorruptDataError,
                     match=f'{bad}: expected {N_TRAIN} labels'):
    data.load('fashion_mnist', 'train', idx_dir=tmp_path / 'idx', data_dir=tmp_path / 'tfds')


@pytest.mark.parametrize('kwargs,match', [
    (dict(name='svhn'), 'fashion_mnist, mnist, cifar10, celeb_a'),
    (dict(split='validation'), 'valid splits: train, test'),
    (dict(source='web'), 'valid sources: auto, idx, tfds'),
    (dict(image_size=64), 'valid sizes: 28, 32'),
    (dict(name='cifar10', image_size=28), r'valid sizes: 32\.$'),
    (dict(name='cifar10', source='idx'), "source='tfds'"),
    (dict(limit=0), 'positive int'),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
  args = dict(name='fashion_mnist', split='train') | kwargs
  with pytest.raises(ValueError, match=match):
    data.load(args.pop('name'), args.pop('split'), data_dir=tmp_path, **args)
  assert not any(tmp_path.iterdir())


def test_channels_and_classes():
  assert [data.num_channels(n) for n in data.DATASETS] == [1, 1, 3, 3]
  assert [data.num_classes(n) for n in data.DATASETS] == [10, 10, 10, 1]
  with pytest.raises(ValueError, match='valid names: fashion_mnist, mnist, cifar10, celeb_a'):
    data.num_channels('imagenet')
  with pytest.raises(ValueError, match='valid names'):
    data.num_classes('imagenet')


# ---------------------------------------------------------------- preprocessing and batching


def test_to_float_range_numpy_and_jax():
  x = np.array([0, 1, 127, 128, 254, 255], np.uint8)
  y = data.to_float(x)
  assert isinstance(y, np.ndarray) and y.dtype == np.float32
  np.testing.assert_allclose(y, x / 127.5 - 1, atol=1e-6)
  assert y[0] == -1 and y[-1] == 1
  y_jax = jax.jit(data.to_float)(jnp.asarray(x))
  assert isinstance(y_jax, jax.Array) and y_jax.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(y_jax), y)
  with pytest.raises(TypeError, match='expects uint8 images, got float32'):
    data.to_float(y)


def distinct_split(n: int = 16) -> data.Split:
  """Images whose every pixel is their index: a batch tells which examples it holds."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 4, 4, 2))
  return data.Split(images=np.ascontiguousarray(images), labels=np.arange(n, dtype=np.int32))


def indices_of(batch) -> np.ndarray:
  return np.rint((np.asarray(batch)[:, 0, 0, 0] + 1) * 127.5).astype(int)


def test_device_put_keeps_uint8():
  split = distinct_split()
  on_device = data.device_put(split, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  assert isinstance(on_device, data.Split) and isinstance(on_device.images, jax.Array)
  chex.assert_type([on_device.images, on_device.labels], [jnp.uint8, jnp.int32])
  np.testing.assert_array_equal(np.asarray(on_device.images), split.images)
  assert isinstance(data.device_put(split).labels, jax.Array)


def test_sample_batch_is_deterministic_and_jittable():
  images = data.device_put(distinct_split()).images
  sample = jax.jit(data.sample_batch, static_argnums=2)
  key = jax.random.key(0)
  batch = sample(key, images, 64)
  chex.assert_shape(batch, (64, 4, 4, 2))
  chex.assert_type(batch, jnp.float32)
  assert -1 <= float(batch.min()) and float(batch.max()) <= 1
  idx = indices_of(batch)
  # Whole examples, uniformly with replacement: all 16 show up among 64 draws, some twice.
  np.testing.assert_array_equal(np.asarray(batch), np.asarray(data.to_float(images[idx])))
  assert len(set(idx)) < 64 and set(idx) <= set(range(16))
  np.testing.assert_array_equal(np.asarray(sample(key, images, 64)), np.asarray(batch))
  np.testing.assert_array_equal(np.asarray(data.sample_batch(key, images, 64)), np.asarray(batch))
  assert not np.array_equal(indices_of(sample(jax.random.key(1), images, 64)), idx)


def test_batches_are_epoch_permutations_and_deterministic():
  split = distinct_split()
  key = jax.random.key(3)
  run = list(data.batches(split, 5, key=key, epochs=2))
  assert len(run) == 2 * 3
  for batch in run:
    chex.assert_shape(batch, (5, 4, 4, 2))
    chex.assert_type(batch, np.float32)
  epochs = [np.concatenate([indices_of(b) for b in run[e * 3:(e + 1) * 3]]) for e in range(2)]
  for order in epochs:
    assert len(set(order)) == 15  # a permutation, last example dropped
  assert not np.array_equal(epochs[0], epochs[1])
  again = list(data.batches(split, 5, key=key, epochs=2))
  for a, b in zip(run, again):
    np.testing.assert_array_equal(a, b)
  other = next(data.batches(split, 5, key=jax.random.key(4)))
  assert not np.array_equal(indices_of(other), indices_of(run[0]))


def test_batches_remainder_labels_and_endless_stream():
  split = distinct_split()
  key = jax.random.key(0)
  sizes = [len(b) for b in data.batches(split, 5, key=key, epochs=1, drop_remainder=False)]
  assert sizes == [5, 5, 5, 1]
  for images, labels in data.batches(split, 6, key=key, epochs=1, with_labels=True):
    np.testing.assert_array_equal(indices_of(images), labels)
  endless = list(itertools.islice(data.batches(split, 8, key=key), 10))
  assert len(endless) == 10
  device_batch = next(data.batches(data.device_put(split), 8, key=key))
  np.testing.assert_array_equal(np.asarray(device_batch), endless[0])


def test_batches_errors():
  split = distinct_split()
  with pytest.raises(ValueError, match='exceeds the split size 16'):
    data.batches(split, 17, key=jax.random.key(0))
  with pytest.raises(ValueError, match='batch_size must be positive'):
    data.batches(split, 0, key=jax.random.key(0))

"""Fashion-MNIST from its original IDX files: reading and checking them, and the tfds builder
that stores them in ``array_record`` for :func:`lth_jax.data.load` (``source='idx'``).

Example:
  >>> images = fashion_mnist_idx.read_idx('/usr/share/datasets/fashion-mnist/'
  ...                                     't10k-images-idx3-ubyte.gz')     # uint8 [10000, 28, 28]
"""

import gzip
import os
import pathlib
import struct
import zlib

import numpy as np
import tensorflow_datasets as tfds

CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
           'Sneaker', 'Bag', 'Ankle boot')
# The four files of Debian's dataset-fashion-mnist (and of the original release), per split.
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}


class CorruptDataError(ValueError):
  """A source file exists but does not hold what it should (the message names the path)."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads a gzip-compressed IDX file of unsigned bytes (the MNIST file format).

  Args:
    path: an ``*-ubyte.gz`` file.

  Returns:
    uint8 array shaped as the IDX header says, e.g. [N, 28, 28] for images, [N] for labels.

  Raises:
    CorruptDataError: the file is not gzip, not IDX of unsigned bytes, or its size does not
      match its header.
  """
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise CorruptDataError(f'{path} is not a readable gzip file: {e}') from e
  if len(raw) < 4 or raw[:3] != b'\x00\x00\x08':
    raise CorruptDataError(
        f'{path} is not an IDX file of unsigned bytes (magic number {raw[:4].hex() or "missing"}, '
        'expected 000008 followed by the number of dimensions).')
  ndim = raw[3]
  offset = 4 + 4 * ndim
  if len(raw) < offset:
    raise CorruptDataError(f'{path}: IDX header of {ndim} dimensions is truncated.')
  dims = struct.unpack(f'>{ndim}I', raw[4:offset])
  expected = offset + int(np.prod(dims, dtype=np.int64))
  if len(raw) != expected:
    raise CorruptDataError(
        f'{path}: IDX header announces shape {dims} ({expected} bytes) but the file holds '
        f'{len(raw)} bytes.')
  return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def read_split(images_path: pathlib.Path,
               labels_path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks one split's IDX pair: uint8 [N, 28, 28, 1] images, uint8 [N] labels."""
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (28, 28):
    raise CorruptDataError(f'{images_path}: expected images [N, 28, 28], got {images.shape}.')
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise CorruptDataError(
        f'{labels_path}: expected {images.shape[0]} labels (as many as images in '
        f'{images_path.name}), got shape {labels.shape}.')
  if labels.size and labels.max() >= len(CLASSES):
    raise CorruptDataError(f'{labels_path}: label {labels.max()} is not a class id in [0, 10).')
  return images[..., None], labels


class FashionMnistIdx(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds builder of Fashion-MNIST from the original IDX files, in array_record format.

  Examples keep the IDX order (``disable_shuffling=True``; without it tfds reorders them).
  Images are stored as raw uint8 bytes: no PNG encoding (which would need TensorFlow), and
  ~6x faster to write than tfds' default int64 lists.
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Fashion-MNIST from the original IDX files, IDX order kept.'}

  def __init__(self, *, idx_dir: str | os.PathLike, **kwargs):
    """Args: idx_dir: directory of the four IDX .gz files; kwargs: tfds builder options."""
    self._idx_dir = pathlib.Path(idx_dir)
    super().__init__(file_format='array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Fashion-MNIST (Xiao et al. 2017), 28x28 grey images of 10 clothing classes.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.BYTES),
            'label': tfds.features.ClassLabel(names=CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://github.com/zalandoresearch/fashion-mnist',
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    # Every file is read and checked here, before tfds writes anything.
    arrays = {s: read_split(*(self._idx_dir / f for f in files)) for s, files in FILES.items()}
    return {s: self._generate_examples(*pair) for s, pair in arrays.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}

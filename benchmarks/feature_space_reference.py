r"""Reference FID/KID values in the Fashion-MNIST classifier feature space (what "good" looks like).

  python benchmarks/feature_space_reference.py

Real test images against real train images, and against noisy / blurred copies, in the cached
`fmnist_clf` feature space of the default config (trained on first use).
"""
import numpy as np
from absl import app

from lth_jax import configs, data, evaluation, metrics


def main(argv):
  del argv
  config = configs.get_config("dcgan", "fashion_mnist", "default")
  train, test = data.load("fashion_mnist", "train"), data.load("fashion_mnist", "test")
  extractor = evaluation.feature_extractor_from_config(config, train, test)
  real = data.to_float(test.images[:5000])
  rng = np.random.default_rng(0)
  candidates = {
      "real train images": data.to_float(train.images[:5000]),
      "real test images (other half)": data.to_float(test.images[5000:]),
      "test + Gaussian noise 0.3": np.clip(real + 0.3 * rng.standard_normal(real.shape), -1, 1),
      "test, 2x2 box blur": np.repeat(np.repeat(
          real.reshape(-1, 16, 2, 16, 2, 1).mean((2, 4)), 2, 1), 2, 2).astype(np.float32),
  }
  ref = extractor.features(real)
  stats = metrics.gaussian_stats(ref)
  print(f"feature space {extractor.name}, classifier test accuracy "
        f"{extractor.info['test_accuracy']:.4f}; reference: first 5000 test images")
  for name, images in candidates.items():
    feats = extractor.features(images.astype(np.float32))
    fid = metrics.frechet_distance(*stats, *metrics.gaussian_stats(feats))
    kid, kid_std = metrics.kid(ref, feats, seed=0)
    print(f"| {name} | {fid:.2f} | {kid:.3f} ± {kid_std:.3f} |")


if __name__ == "__main__":
  app.run(main)

"""Training objectives: AE (MSE), β-VAE and GAN (BCE, hinge or Wasserstein, gradient penalty).

Pure functions of arrays; every loss is a float scalar averaged over the batch. Images are
``[B, H, W, C]`` in [-1, 1], logits ``[B]`` (any shape works: losses average over all entries).

Example::

  from lth_jax import objectives
  loss, parts = objectives.vae_loss(x, recon, mean, logvar, beta=4.0)   # parts['recon'], ['kl']
  d_loss = objectives.gan_d_loss(real_logits, fake_logits, kind='bce')
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

GAN_LOSSES = ("bce", "hinge", "wasserstein")


def check_gan_loss(kind: str) -> None:
  """Raises ``ValueError`` unless ``kind`` is one of :data:`GAN_LOSSES`."""
  if kind not in GAN_LOSSES:
    raise ValueError(f"unknown GAN loss kind {kind!r}; expected one of {GAN_LOSSES}")


def _check_same_shape(x: jax.Array, recon: jax.Array, fn: str) -> None:
  if x.shape != recon.shape:
    raise ValueError(f"{fn}: images {x.shape} and reconstructions {recon.shape} differ in shape")


def mse(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per-pixel mean squared error: the AE loss and the "reconstruction MSE" metric.

  The mean over every entry, i.e. the batch mean of each image's mean squared error over its
  ``H * W * C`` values (pixel values in [-1, 1], so at most 4).

  Args:
    x: images ``[B, H, W, C]``.
    recon: reconstructions, same shape.

  Returns:
    float32 scalar.
  """
  _check_same_shape(x, recon, "mse")
  return jnp.mean(jnp.square(x.astype(jnp.float32) - recon.astype(jnp.float32)))


def vae_loss(x: jax.Array, recon: jax.Array, mean: jax.Array, logvar: jax.Array, *,
             beta: float = 4.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """β-VAE loss: per-image squared error sum plus ``beta`` times the KL, averaged over the batch.

  ``recon`` term: ``sum_{h,w,c} (x - recon)^2`` per image (a Gaussian decoder with variance 1/2,
  up to a constant, as the β-VAE reference code's summed MSE). ``kl`` term:
  ``KL(N(mean, exp(logvar)) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mean_j^2 - exp(logvar_j))``
  per image, summed over latent dims. ``beta = 1`` gives the plain VAE.

  Args:
    x: images ``[B, H, W, C]``.
    recon: decoder outputs, same shape.
    mean, logvar: posterior parameters ``[B, z_dim]``.
    beta: KL weight (the paper's β-VAE uses 4).

  Returns:
    ``(loss, {'recon': batch-mean recon term, 'kl': batch-mean KL})``, float32 scalars, with
    ``loss = recon + beta * kl``.
  """
  _check_same_shape(x, recon, "vae_loss")
  if mean.shape != logvar.shape or mean.shape[0] != x.shape[0]:
    raise ValueError(f"vae_loss: mean {mean.shape} and logvar {logvar.shape} must both be "
                     f"[B, z_dim] with B = {x.shape[0]}")
  err = jnp.square(x.astype(jnp.float32) - recon.astype(jnp.float32))
  recon_term = jnp.mean(jnp.sum(err.reshape(err.shape[0], -1), axis=-1))
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mean) - jnp.exp(logvar), axis=-1)
  kl_term = jnp.mean(kl)
  return recon_term + beta * kl_term, {"recon": recon_term, "kl": kl_term}


def gan_d_loss(real_logits: jax.Array, fake_logits: jax.Array, *, kind: str = "bce") -> jax.Array:
  """Discriminator loss, the sum of its real-batch and fake-batch means.

  ``'bce'``: ``mean(softplus(-real)) + mean(softplus(fake))``, i.e. binary cross-entropy with
  targets 1 (real) and 0 (fake), as PyTorch's DCGAN ``errD_real + errD_fake``.
  ``'hinge'``: ``mean(relu(1 - real)) + mean(relu(1 + fake))``.
  ``'wasserstein'``: ``mean(fake) - mean(real)`` (the critic's side of WGAN's estimate; the
  logits are critic scores).

  Args:
    real_logits: D's logits on real images ``[B]``.
    fake_logits: D's logits on generated images ``[B']``.
    kind: 'bce', 'hinge' or 'wasserstein'.

  Returns:
    float32 scalar.

  Raises:
    ValueError: unknown ``kind``.
  """
  check_gan_loss(kind)
  real, fake = real_logits.astype(jnp.float32), fake_logits.astype(jnp.float32)
  if kind == "bce":
    return jnp.mean(-jax.nn.log_sigmoid(real)) + jnp.mean(-jax.nn.log_sigmoid(-fake))
  if kind == "wasserstein":
    return jnp.mean(fake) - jnp.mean(real)
  return jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))


def gan_g_loss(fake_logits: jax.Array, *, kind: str = "bce") -> jax.Array:
  """Generator loss (float32 scalar) from D's logits on generated images ``[B]``.

  ``kind='bce'``: the non-saturating loss ``mean(softplus(-fake)) = -mean(log sigmoid(fake))``
  (cross-entropy with target 1); ``kind='hinge'`` and ``kind='wasserstein'``: ``-mean(fake)``.
  Another kind raises ``ValueError``.
  """
  check_gan_loss(kind)
  fake = fake_logits.astype(jnp.float32)
  if kind == "bce":
    return jnp.mean(-jax.nn.log_sigmoid(fake))
  return -jnp.mean(fake)


def gradient_penalty(critic: Callable[[jax.Array], jax.Array], real: jax.Array, fake: jax.Array,
                     key: jax.Array) -> jax.Array:
  """WGAN-GP's penalty (Gulrajani et al. 2017): ``mean_b (||grad_x critic(x_b)||_2 - 1)^2``.

  ``x_b = e_b real_b + (1 - e_b) fake_b`` with ``e_b ~ U[0, 1]`` per image (drawn with ``key``);
  the gradient is that of ``sum(critic(x))`` w.r.t. the interpolates, its norm taken over each
  image's ``H * W * C`` values (``sqrt(sum g^2 + 1e-12)``, finite at 0). Multiply by the weight
  (WGAN-GP: 10) and add it to the critic's loss.

  Args:
    critic: images ``[B, H, W, C]`` -> scores ``[B]``.
    real, fake: image batches of one shape ``[B, H, W, C]``.
    key: the interpolation's key.

  Returns:
    float32 scalar.
  """
  _check_same_shape(real, fake, "gradient_penalty")
  shape = (real.shape[0],) + (1,) * (real.ndim - 1)
  e = jax.random.uniform(key, shape, jnp.float32)
  x = e * real.astype(jnp.float32) + (1.0 - e) * fake.astype(jnp.float32)
  grads = jax.grad(lambda v: jnp.sum(critic(v).astype(jnp.float32)))(x)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=-1) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))

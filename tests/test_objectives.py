"""Tests for lth_jax.objectives against hand-computed numbers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import objectives


def softplus(v):
  return math.log1p(math.exp(v))


def test_mse_is_per_pixel_mean():
  x = jnp.zeros((2, 2, 2, 1))
  recon = x.at[0, 0, 0, 0].set(2.0).at[1, 1, 1, 0].set(-1.0)
  # Squared errors 4 and 1 over 8 entries.
  np.testing.assert_allclose(objectives.mse(x, recon), 5.0 / 8.0, rtol=1e-6)
  with pytest.raises(ValueError, match="differ in shape"):
    objectives.mse(x, jnp.zeros((2, 2, 2, 3)))


def test_vae_loss_by_hand():
  x = jnp.zeros((2, 1, 2, 1))
  recon = jnp.array([[[[1.0], [2.0]]], [[[0.0], [-1.0]]]])   # per-image SSE: 5 and 1
  mean = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  logvar = jnp.array([[0.0, math.log(2.0)], [0.0, 0.0]])
  # KL per image: -1/2 sum(1 + logvar - mean^2 - exp(logvar)).
  kl0 = -0.5 * ((1 + 0 - 1 - 1) + (1 + math.log(2.0) - 0 - 2))
  kl1 = 0.0
  loss, parts = objectives.vae_loss(x, recon, mean, logvar, beta=4.0)
  np.testing.assert_allclose(parts["recon"], 3.0, rtol=1e-6)
  np.testing.assert_allclose(parts["kl"], (kl0 + kl1) / 2, rtol=1e-6)
  np.testing.assert_allclose(loss, 3.0 + 4.0 * (kl0 + kl1) / 2, rtol=1e-6)
  loss1, _ = objectives.vae_loss(x, recon, mean, logvar, beta=1.0)
  np.testing.assert_allclose(loss1, 3.0 + (kl0 + kl1) / 2, rtol=1e-6)


def test_vae_kl_is_zero_at_the_prior_and_positive_elsewhere():
  x = jnp.zeros((3, 4, 4, 1))
  z = jnp.zeros((3, 5))
  assert float(objectives.vae_loss(x, x, z, z)[1]["kl"]) == 0.0
  assert float(objectives.vae_loss(x, x, z + 0.1, z)[1]["kl"]) > 0.0
  with pytest.raises(ValueError, match="logvar"):
    objectives.vae_loss(x, x, z, jnp.zeros((3, 4)))


def test_gan_bce_losses_by_hand():
  real = jnp.array([0.0, 2.0])
  fake = jnp.array([-1.0, 3.0])
  d = objectives.gan_d_loss(real, fake, kind="bce")
  expected_d = ((softplus(0.0) + softplus(-2.0)) / 2) + ((softplus(-1.0) + softplus(3.0)) / 2)
  np.testing.assert_allclose(d, expected_d, rtol=1e-6)
  g = objectives.gan_g_loss(fake, kind="bce")
  np.testing.assert_allclose(g, (softplus(1.0) + softplus(-3.0)) / 2, rtol=1e-6)


def test_gan_hinge_losses_by_hand():
  real = jnp.array([0.5, 2.0])
  fake = jnp.array([-2.0, 0.5])
  np.testing.assert_allclose(objectives.gan_d_loss(real, fake, kind="hinge"),
                             (0.5 + 0.0) / 2 + (0.0 + 1.5) / 2, rtol=1e-6)
  np.testing.assert_allclose(objectives.gan_g_loss(fake, kind="hinge"), 0.75, rtol=1e-6)


def test_gan_wasserstein_losses_by_hand():
  real = jnp.array([0.5, 2.0, -1.0])
  fake = jnp.array([-2.0, 0.5])
  # Critic: mean(fake) - mean(real) = -0.75 - 0.5; generator: -mean(fake) = 0.75.
  np.testing.assert_allclose(objectives.gan_d_loss(real, fake, kind="wasserstein"), -1.25,
                             rtol=1e-6)
  np.testing.assert_allclose(objectives.gan_g_loss(fake, kind="wasserstein"), 0.75, rtol=1e-6)


def test_gradient_penalty_of_a_linear_critic_by_hand():
  """A linear critic's gradient is its weights at every interpolate: (||w|| - 1)^2 whatever
  the interpolation draws."""
  w = jnp.zeros((2, 2, 1)).at[0, 0, 0].set(2.0).at[1, 1, 0].set(-1.0)      # ||w|| = sqrt(5)
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real, fake = jnp.ones((3, 2, 2, 1)), -jnp.ones((3, 2, 2, 1))
  for seed in range(3):
    np.testing.assert_allclose(
        objectives.gradient_penalty(critic, real, fake, jax.random.key(seed)),
        (math.sqrt(5.0) - 1.0) ** 2, rtol=1e-6)


def test_gradient_penalty_of_a_quadratic_critic_by_hand():
  """critic(x) = sum(x^2): the gradient at the interpolate is 2x; with real = fake = c the
  interpolate is c, so the penalty is (2 |c| sqrt(N) - 1)^2 over N = H*W*C values."""
  c = jnp.full((2, 3, 3, 1), 0.25)
  penalty = objectives.gradient_penalty(lambda x: jnp.sum(x ** 2, axis=(1, 2, 3)), c, c,
                                        jax.random.key(0))
  np.testing.assert_allclose(penalty, (2 * 0.25 * 3.0 - 1.0) ** 2, rtol=1e-5)
  with pytest.raises(ValueError, match="gradient_penalty: images"):
    objectives.gradient_penalty(lambda x: x[:, 0, 0, 0], c, c[:1], jax.random.key(0))


def test_bce_is_stable_for_huge_logits():
  big = jnp.array([1e4, -1e4])
  for value in (objectives.gan_d_loss(big, -big), objectives.gan_g_loss(big),
                jax.grad(lambda f: objectives.gan_g_loss(f))(big)):
    assert np.all(np.isfinite(value))
  np.testing.assert_allclose(objectives.gan_g_loss(big), 1e4 / 2, rtol=1e-6)
  # The non-saturating generator loss keeps a gradient when D rejects the fakes.
  np.testing.assert_allclose(jax.grad(objectives.gan_g_loss)(jnp.array([-30.0])), [-1.0],
                             rtol=1e-6)


@pytest.mark.parametrize("fn,args", [(objectives.gan_d_loss, (jnp.zeros(2), jnp.zeros(2))),
                                     (objectives.gan_g_loss, (jnp.zeros(2),))])
def test_unknown_kind_raises(fn, args):
  with pytest.raises(ValueError, match="wgan"):
    fn(*args, kind="wgan")

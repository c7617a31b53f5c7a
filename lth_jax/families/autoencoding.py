"""The autoencoding builder: masked training steps over any AE or VAE model.

The model's contract (a flax.linen module with params ``{'encoder', 'decoder'}``):
``__call__(x, key, train=...)`` -> reconstructions ``[B, H, W, C]`` (AE) or
``(reconstructions, mean, logvar)`` with ``mean, logvar [B, z_dim]`` (VAE);
``reconstruct(x, train=False)``, ``synflow_forward(x, train=False)`` (the pre-activation output
of the all-ones input) and, for a VAE, ``decode(z, train=False)`` (samples). The loss is
:func:`objectives.mse` (AE) or :func:`objectives.vae_loss` with ``Settings.beta`` (VAE), one
optimizer over all params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lth_jax import data as data_lib
from lth_jax import families
from lth_jax import objectives
from lth_jax import steps

PARTS = ("encoder", "decoder")
# Back-propagated forward passes per image of one step (lth_jax.flops): each part once.
TRAIN_PASSES = {"encoder": 1, "decoder": 1}


def build(name: str, model, settings: families.Settings, *, variational: bool,
          channel_groups=None) -> steps.Family:
  """An AE (``variational=False``) or VAE family of ``model`` trained as ``settings`` says."""
  s = settings
  train_model = model.clone(dtype=s.compute_dtype)   # the training step's passes; the rest fp32
  optimizers = {"all": steps.optimizer(s.optimizer)}
  image = (1, s.image_size, s.image_size, s.channels)   # arrays are made in the functions

  def forward(params, batch_stats, x, key, train, module=model):
    """The model's outputs (float32, whatever the compute dtype) and BatchNorm statistics."""
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      out, new = module.apply(variables, x, key, train=True, mutable=["batch_stats"])
      return steps.to_float32(out), new["batch_stats"]
    return steps.to_float32(module.apply(variables, x, key, train=False)), batch_stats

  def loss_fn(params, batch_stats, x, key, train=True, module=model):
    out, stats = forward(params, batch_stats, x, key, train, module)
    if variational:
      recon, mean, logvar = out
      loss, aux = objectives.vae_loss(x, recon, mean, logvar, beta=s.beta)
    else:
      loss = objectives.mse(x, out)
      aux = {"mse": loss}
    return loss, (stats, aux)

  def train_loss_fn(params, batch_stats, x, key):
    loss, aux = loss_fn(params, batch_stats, x, key, module=train_model)
    for part, weight in s.bn_l1.items():
      if weight:
        loss = loss + steps.bn_l1_penalty(params[part], weight)
    return loss, aux

  def init(key):
    kp, kr = jax.random.split(key)
    variables = model.init(kp, jnp.zeros(image), kr, train=False)
    return steps.init_state(variables["params"], variables.get("batch_stats", {}), optimizers)

  def train_step(state: steps.TrainState, masks, images, key):
    kx, kr = jax.random.split(key)
    x = data_lib.sample_batch(kx, images, s.batch_size)
    (loss, (stats, aux)), grads = jax.value_and_grad(train_loss_fn, has_aux=True)(
        state.params, state.batch_stats, x, kr)
    params, opt_state = steps.masked_update(optimizers["all"], grads, state.opt_state,
                                            state.params, masks)
    return steps.TrainState(state.step + 1, params, stats, opt_state), {"loss": loss, **aux}

  def score_loss(params, batch_stats, batch, key):
    return loss_fn(params, batch_stats, batch, key)[0]

  def synflow_output(params, batch_stats):
    variables = {"params": params, "batch_stats": batch_stats}
    return jnp.sum(model.apply(variables, jnp.ones(image), train=False,
                               method=model.synflow_forward))

  def reconstruct(params, batch_stats, batch):
    variables = {"params": params, "batch_stats": batch_stats}
    return model.apply(variables, batch, train=False, method=model.reconstruct)

  def forward_passes():
    return [("", model, (jnp.zeros(image), jax.random.key(0)), {"train": False})]

  def train_mode_stats(params, batch_stats, batch, key):
    """The model on ``batch`` in train mode (``key``: the VAE's posterior sample)."""
    _, new = model.apply({"params": params, "batch_stats": batch_stats}, batch, key, train=True,
                         mutable=["batch_stats"])
    return new["batch_stats"]

  generate = test_losses = None
  if variational:
    def generate(params, batch_stats, key, n):
      z = jax.random.normal(key, (n, s.z_dim))
      return model.apply({"params": params, "batch_stats": batch_stats}, z, train=False,
                         method=model.decode)

    def test_losses(params, batch_stats, batch, key):
      """−ELBO (β = 1) per image, eval-mode BatchNorm, one posterior sample per image."""
      recon, mean, logvar = model.apply({"params": params, "batch_stats": batch_stats}, batch,
                                        key, train=False)
      return {"test_neg_elbo": objectives.vae_loss(batch, recon, mean, logvar, beta=1.0)[0]}

  return steps.Family(name, PARTS, {"model": model}, optimizers, jax.jit(init), train_step,
                      score_loss, synflow_output, generate, reconstruct, s.batch_size,
                      channel_groups, TRAIN_PASSES, "decoder", forward_passes, train_mode_stats,
                      test_losses)

"""The GAN builder: masked training steps over any generator / discriminator pair.

The modules' contract: ``generator.apply(variables, z [B, z_dim], train=..., activate=True)``
-> images ``[B, H, W, C]`` (``activate=False``: the pre-activation output, for SynFlow) and
``discriminator.apply(variables, images, train=...)`` -> logits ``[B]``; both may hold BatchNorm
statistics (collection ``batch_stats``). Params are ``{'generator', 'discriminator'}``.

One train step (``Settings``):

* ``n_critic`` D steps, each on its own real batch and codes: steps ``i = 1 .. n_critic - 1``
  draw from ``fold_in(step key, i)`` (the generator in train mode, no gradient), the last from
  the step key itself, so ``n_critic = 1`` is the paper's step exactly;
* each D step is a masked update of D's own optimizer, then (``clip`` > 0) every D param is
  clipped to ``[-clip, clip]`` (WGAN; a pruned entry is 0 and stays 0);
* D's loss is :func:`objectives.gan_d_loss` of ``loss_kind`` plus ``gradient_penalty`` times
  :func:`objectives.gradient_penalty` on interpolates of the step's real and fake batches (key
  ``fold_in(codes key, 1)``; D applied to its masked params, in train mode, its statistics
  discarded);
* then one G step through D's updated params on the last D step's fake batch (G's forward pass
  is done once; its VJP is reused, as PyTorch's DCGAN does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lth_jax import data as data_lib
from lth_jax import families
from lth_jax import masks as masks_lib
from lth_jax import objectives
from lth_jax import steps

PARTS = ("generator", "discriminator")


def train_passes(n_critic: int, gradient_penalty: float) -> dict[str, float]:
  """Back-propagated forward passes per image of one step (the :mod:`lth_jax.flops`
  convention: a forward pass without a backward counts 1/3): D on real and fake per D step
  (and, with a penalty, 2 more: its pass on the interpolates and that pass's input gradient,
  both differentiated again), D on the fake batch for G's loss; G once, plus a forward-only
  pass per extra D step."""
  d_step = 2 + (2 if gradient_penalty else 0)
  return {"generator": 1 + (n_critic - 1) / 3, "discriminator": n_critic * d_step + 1}


def build(name: str, generator, discriminator, settings: families.Settings, *,
          channel_groups=None) -> steps.Family:
  """A GAN family of ``generator`` and ``discriminator`` (flax.linen modules, see the module
  docstring) trained as ``settings`` says.

  Raises:
    ValueError: ``n_critic`` < 1, a negative ``clip`` or ``gradient_penalty``, or an unknown
      loss kind (:func:`objectives.gan_d_loss`).
  """
  s = settings
  if s.n_critic < 1:
    raise ValueError(f"train.n_critic must be >= 1, got {s.n_critic}")
  if s.clip < 0 or s.gradient_penalty < 0:
    raise ValueError(f"train.clip and loss.gradient_penalty must be >= 0, got {s.clip} and "
                     f"{s.gradient_penalty}")
  objectives.check_gan_loss(s.loss_kind)
  gen, disc = generator, discriminator
  image = (s.image_size, s.image_size, s.channels)
  # The training step's passes in the compute dtype; init, scoring and sampling in fp32.
  train_gen, train_disc = gen.clone(dtype=s.compute_dtype), disc.clone(dtype=s.compute_dtype)
  optimizers = families.part_optimizers(s, PARTS)
  l1 = s.bn_l1

  def init(key):
    kg, kd = jax.random.split(key)
    vg = gen.init(kg, jnp.zeros((1, s.z_dim)), train=False)
    vd = disc.init(kd, jnp.zeros((1, *image)), train=False)
    params = {"generator": vg["params"], "discriminator": vd["params"]}
    stats = {"generator": vg.get("batch_stats", {}), "discriminator": vd.get("batch_stats", {})}
    return steps.init_state(params, stats, optimizers)

  def g_apply(p, stats, z, train, module=gen):
    if train:
      out, new = module.apply({"params": p, "batch_stats": stats}, z, train=True,
                              mutable=["batch_stats"])
      return out, new["batch_stats"]
    return module.apply({"params": p, "batch_stats": stats}, z, train=False), stats

  def d_apply(p, stats, x, module=disc):
    """Train-mode logits (float32, whatever the compute dtype) and new BatchNorm statistics."""
    out, new = module.apply({"params": p, "batch_stats": stats}, x, train=True,
                            mutable=["batch_stats"])
    return steps.to_float32(out), new["batch_stats"]

  def draw(key, images):
    """A D step's real batch and codes (and the key of its codes) from its key."""
    kx, kz = jax.random.split(key)
    real = data_lib.sample_batch(kx, images, s.batch_size)
    z = data_lib.shard_batch(jax.random.normal(kz, (s.batch_size, s.z_dim)))   # G data-parallel
    return real, z, kz

  def d_update(dp, ds, d_opt, d_masks, real, fake, kz):
    """One masked D step on ``real`` and ``fake``: (params, statistics, opt state, loss)."""
    def d_loss_fn(dp):
      real_logits, new = d_apply(dp, ds, real, train_disc)
      fake_logits, new = d_apply(dp, new, jax.lax.stop_gradient(fake), train_disc)
      loss = objectives.gan_d_loss(real_logits, fake_logits, kind=s.loss_kind)
      if s.gradient_penalty:
        masked = masks_lib.apply(dp, d_masks)
        critic = lambda x: d_apply(masked, new, x, train_disc)[0]
        loss = loss + s.gradient_penalty * objectives.gradient_penalty(
            critic, real, jax.lax.stop_gradient(fake), jax.random.fold_in(kz, 1))
      if l1["discriminator"]:
        loss = loss + steps.bn_l1_penalty(dp, l1["discriminator"])
      return loss, new

    (loss, new_stats), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(dp)
    new_params, d_opt = steps.masked_update(optimizers["discriminator"], grads, d_opt, dp, d_masks)
    if s.clip:
      new_params = jax.tree.map(lambda x: jnp.clip(x, -s.clip, s.clip), new_params)
    return new_params, new_stats, d_opt, loss

  def train_step(state: steps.TrainState, masks, images, key):
    p, stats = state.params, state.batch_stats
    dp, ds, d_opt = p["discriminator"], stats["discriminator"], state.opt_state["discriminator"]
    g_stats, d_losses = stats["generator"], []
    for i in range(1, s.n_critic):     # the extra D steps, each on its own batch
      real, z, kz = draw(jax.random.fold_in(key, i), images)
      fake, g_stats = g_apply(p["generator"], g_stats, z, True, train_gen)
      dp, ds, d_opt, loss = d_update(dp, ds, d_opt, masks["discriminator"], real, fake, kz)
      d_losses.append(loss)
    real, z, kz = draw(key, images)
    # Generator forward once; its VJP is reused for the generator step (as PyTorch's DCGAN does).
    (fake, g_vjp, g_stats) = jax.vjp(lambda gp: g_apply(gp, g_stats, z, True, train_gen),
                                     p["generator"], has_aux=True)
    d_params, d_stats, d_opt, loss = d_update(dp, ds, d_opt, masks["discriminator"], real, fake,
                                              kz)
    d_losses.append(loss)
    d_loss = d_losses[0] if s.n_critic == 1 else jnp.mean(jnp.stack(d_losses))

    def g_loss_fn(fake_images):
      logits, new = d_apply(d_params, d_stats, fake_images, train_disc)
      return objectives.gan_g_loss(logits, kind=s.loss_kind), new

    (g_loss, d_stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(fake_grads)
    if l1["generator"]:
      penalty, penalty_grads = jax.value_and_grad(steps.bn_l1_penalty)(p["generator"],
                                                                      l1["generator"])
      g_loss, g_grads = g_loss + penalty, jax.tree.map(jnp.add, g_grads, penalty_grads)
    g_params, g_opt = steps.masked_update(optimizers["generator"], g_grads,
                                          state.opt_state["generator"], p["generator"],
                                          masks["generator"])
    new_state = steps.TrainState(state.step + 1, {"generator": g_params, "discriminator": d_params},
                                 {"generator": g_stats, "discriminator": d_stats},
                                 {"generator": g_opt, "discriminator": d_opt})
    return new_state, {"d_loss": d_loss, "g_loss": g_loss}

  def score_loss(params, batch_stats, batch, key):
    """D's loss w.r.t. D plus G's loss w.r.t. G (no cross terms): one batch, train-mode BN."""
    z = jax.random.normal(key, (batch.shape[0], s.z_dim))
    sg = jax.lax.stop_gradient
    fake_for_d, _ = g_apply(sg(params["generator"]), batch_stats["generator"], z, True)
    real_logits, new = d_apply(params["discriminator"], batch_stats["discriminator"], batch)
    fake_logits, _ = d_apply(params["discriminator"], new, fake_for_d)
    d_loss = objectives.gan_d_loss(real_logits, fake_logits, kind=s.loss_kind)
    fake, _ = g_apply(params["generator"], batch_stats["generator"], z, True)
    g_logits, _ = d_apply(sg(params["discriminator"]), batch_stats["discriminator"], fake)
    return d_loss + objectives.gan_g_loss(g_logits, kind=s.loss_kind)

  def synflow_output(params, batch_stats):
    """Sum of G's pre-activation output for an all-ones z plus D's logit for an all-ones image."""
    g_out = gen.apply({"params": params["generator"], "batch_stats": batch_stats["generator"]},
                      jnp.ones((1, s.z_dim)), train=False, activate=False)
    d_out = disc.apply({"params": params["discriminator"],
                        "batch_stats": batch_stats["discriminator"]},
                       jnp.ones((1, *image)), train=False)
    return jnp.sum(g_out) + jnp.sum(d_out)

  def generate(params, batch_stats, key, n):
    z = jax.random.normal(key, (n, s.z_dim))
    return g_apply(params["generator"], batch_stats["generator"], z, False)[0]

  def forward_passes():
    return [("generator", gen, (jnp.zeros((1, s.z_dim)),), {"train": False}),
            ("discriminator", disc, (jnp.zeros((1, *image)),), {"train": False})]

  def train_mode_stats(params, batch_stats, batch, key):
    """G on N(0, I) codes drawn with ``key`` and D on ``batch``, both in train mode."""
    def updated(module, part, *inputs):
      _, new = module.apply({"params": params[part], "batch_stats": batch_stats[part]}, *inputs,
                            train=True, mutable=["batch_stats"])
      return new["batch_stats"]
    z = jax.random.normal(key, (batch.shape[0], s.z_dim))
    return {"generator": updated(gen, "generator", z),
            "discriminator": updated(disc, "discriminator", batch)}

  return steps.Family(name, PARTS, {"generator": gen, "discriminator": disc}, optimizers,
                      jax.jit(init), train_step, score_loss, synflow_output, generate, None,
                      s.batch_size, channel_groups,
                      train_passes(s.n_critic, s.gradient_penalty), "generator", forward_passes,
                      train_mode_stats)

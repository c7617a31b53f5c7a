"""WGAN (Arjovsky et al. 2017; WGAN-GP, Gulrajani et al. 2017) on the DCGAN layout.

The paper's WGAN is the DCGAN with a Wasserstein critic, so both networks are the DCGAN's
(:mod:`lth_jax.models.dcgan`), with the same param names and shapes:

* :data:`Generator` is :class:`lth_jax.models.dcgan.Generator`.
* :data:`Critic` is :class:`lth_jax.models.dcgan.Discriminator`: its logits ``[B]`` (no sigmoid)
  are the critic's scores. ``norm='batch'`` (default) is the DCGAN critic of the weight-clipping
  WGAN; a gradient penalty (WGAN-GP) is wrong with BatchNorm (it couples the images of a batch),
  so use ``norm='layer'`` (LayerNorms ``body/ln{i}`` in place of ``body/bn{i}``) or ``'none'``.

Constructor arguments (both): ``width`` (h), ``channels``, ``image_size`` (a power of two >= 8),
``widths`` (hidden channel counts, for channel-pruned models), ``dtype``, ``param_dtype``; the
generator also ``z_dim``, the critic ``norm`` (one of :data:`lth_jax.models.dcgan.NORMS`).
The Wasserstein losses and the weight clipping or gradient penalty belong to the training step.

Example::

  from lth_jax.models import wgan
  gen = wgan.Generator(width=wgan.PAPER_WIDTH, channels=3, image_size=32, z_dim=100)
  critic = wgan.Critic(width=wgan.PAPER_WIDTH, channels=3, image_size=32, norm="layer")
  scores = critic.apply(variables, images, train=False)                    # [B]
"""

from __future__ import annotations

from lth_jax.models import dcgan, layout

# Table 1's 6.5M WGAN at 32x32x3 (z_dim 100): measured 6,086,020 params (-6%; G 3,448,579 and
# critic 2,637,441 with norm 'batch' or 'layer', 2,636,673 with 'none').
PAPER_WIDTH = 128

Generator = dcgan.Generator
Critic = dcgan.Discriminator


def channel_groups(params: dict) -> list[layout.ChannelGroup]:
  """The WGAN's groups (``params`` is ``{'generator', 'discriminator'}``), generator first.

  The critic's groups are listed only with BatchNorm (``norm='batch'``): LayerNorm scales are
  no BatchNorm γ, and a critic without norms has no channel scores.
  """
  groups = dcgan.generator_channel_groups(params["generator"], "generator")
  if any(name.startswith("bn") for name in params["discriminator"]["body"]):
    groups += dcgan.discriminator_channel_groups(params["discriminator"], "discriminator")
  return groups

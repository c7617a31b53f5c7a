"""Flax linen models (NHWC images in [-1, 1]); import the module you need.

* :mod:`lth_jax.models.dcgan` — DCGAN generator, discriminator (body + head), encoder.
* :mod:`lth_jax.models.vae` — β-VAE with the DCGAN halves (decoder = generator).
* :mod:`lth_jax.models.autoencoder` — conv AutoEncoder with the same halves.
* :mod:`lth_jax.models.layout` — :class:`ChannelGroup`, the channel layout a model lists for
  channel pruning (each generative model lists its own: ``dcgan``/``vae``/``autoencoder``
  ``.channel_groups``).
* :mod:`lth_jax.models.classifier` — small CNN, the domain feature space for FID.
* :mod:`lth_jax.models.inception` — Inception-v3 features for standard FID.
"""

"""Flax linen models (NHWC images in [-1, 1]); import the module you need.

Each paper-sized model's width is its module's ``PAPER_WIDTH`` (``resnet.VAE_PAPER_WIDTH`` for the
ResNet-VAE), the width that gives Table 1's parameter count at 32x32x3 (32x32x1 for the linear AE).

* :mod:`lth_jax.models.dcgan` — DCGAN generator, discriminator (body + head), encoder.
* :mod:`lth_jax.models.vae` — β-VAE with the DCGAN halves (decoder = generator).
* :mod:`lth_jax.models.autoencoder` — conv AutoEncoder with the same halves.
* :mod:`lth_jax.models.wgan` — WGAN: the DCGAN generator and the DCGAN discriminator as critic
  (``norm`` 'batch', or 'layer' / 'none' for WGAN-GP).
* :mod:`lth_jax.models.sngan` — SNGAN (Miyato et al.'s CNN): BatchNorm generator, spectrally
  normalised discriminator (:class:`~lth_jax.models.sngan.SNConv`).
* :mod:`lth_jax.models.resnet` — ResNet-DCGAN generator / discriminator (CIFAR ResNets) and the
  ResNet-VAE with those halves (decoder = generator, encoder body = discriminator body).
* :mod:`lth_jax.models.linear_autoencoder` — fully connected AutoEncoder (the paper's MNIST AE).
* :mod:`lth_jax.models.layout` — :class:`ChannelGroup`, the channel layout a model lists for
  channel pruning (each generative model with BatchNorm lists its own: ``dcgan``/``vae``/
  ``autoencoder``/``wgan``/``sngan``/``resnet`` ``.channel_groups``, ``resnet.vae_channel_groups``).
* :mod:`lth_jax.models.classifier` — small CNN, the domain feature space for FID.
* :mod:`lth_jax.models.inception` — Inception-v3 features for standard FID.
"""

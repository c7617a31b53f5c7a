"""Run configurations (``ml_collections.ConfigDict``) for every family, data set and preset.

The common defaults live here; each family's own (``model.z_dim``, ``train.steps``, its
optimizer, ``prune.exclude``, its paper settings) are its registered spec's
(:class:`lth_jax.families.Spec`: ``config``, then ``presets[preset]`` after the preset's
common changes).

The files in ``experiments/configs/`` are thin wrappers around :func:`get_config`, so that
``--config=experiments/configs/dcgan_fmnist.py:smoke`` and a notebook's
``configs.get_config('dcgan', 'fashion_mnist', 'smoke')`` give the same thing.

Each binary reads the common sections (``COMMON``) and its own (``SECTIONS``);
:func:`for_binary` keeps only those, so a binary's ``config.json`` holds what it reads.

Presets:
  * ``default`` — trains a good model on the data set on a 2-core CPU (minutes).
  * ``smoke``   — seconds; for tests and CI.
  * ``paper``   — the authors' settings (20 IMP levels of 20 %, Adam settings, batch 64/128).
"""

from __future__ import annotations

import ml_collections

from lth_jax import families

PRESETS = ("default", "smoke", "paper")
FEATURE_SPACES = ("classifier", "inception")
EARLY_BIRD_KINDS = ("structured", "unstructured")
# transfer.direction -> (source family, target family); the config is the source family's.
TRANSFER_DIRECTIONS = {direction: (name, t.target) for name in families.names()
                       for direction, t in families.get(name).transfers.items()}
TRANSFER_INIT_FROM = ("target", "source")
# Read by every binary; then each binary's own sections.
COMMON = ("family", "seed", "data", "model", "loss", "train", "eval", "prune")
SECTIONS = {"train": (),
            "find_tickets": ("lottery", "tickets"),
            "early_bird": ("early_bird", "lottery", "tickets"),   # lottery: early_bird.imp_levels
            "transfer": ("transfer", "lottery", "tickets")}

def for_binary(config: ml_collections.ConfigDict, binary: str) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` with only the ``COMMON`` sections and ``binary``'s own."""
  if binary not in SECTIONS:
    raise ValueError(f"unknown binary {binary!r}; expected one of {tuple(SECTIONS)}")
  keep = COMMON + SECTIONS[binary]
  return ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k in keep})


def get_config(family: str = "dcgan", dataset: str = "fashion_mnist", preset: str = "default",
               binary: str | None = None) -> ml_collections.ConfigDict:
  """The config for one registered family (``families.names()``), data set and preset: every
  section, or with ``binary`` (a key of ``SECTIONS``) only those that binary reads.

  Raises:
    ValueError: an unknown family or preset.
  """
  spec = families.get(family)
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
  c = ml_collections.ConfigDict()
  c.family = family
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name=dataset, image_size=64 if dataset == "celeb_a" else 32, source="auto", data_dir="",
      download=False, limit=0))

  c.model = ml_collections.ConfigDict(dict(width=32, z_dim=100))

  c.loss = ml_collections.ConfigDict(dict(
      kind="bce",                      # GAN loss: 'bce' | 'hinge' | 'wasserstein'
      beta=4.0,                        # the VAE's KL weight
      gradient_penalty=0.0))           # GAN: WGAN-GP's penalty weight (0: none)

  c.train = ml_collections.ConfigDict(dict(
      steps=5000,
      batch_size=64,
      steps_per_call=1,
      loop="auto",                     # steps of one call: 'unrolled' | 'rolled' | 'auto' (backend)
      precision="fp32",                # or 'bf16': mixed precision (bf16 passes, fp32 weights)
      log_every=250,
      checkpoint_every=1000,
      n_critic=1,                      # GAN: D steps per G step
      clip=0.0,                        # GAN: clip D's params to [-clip, clip] after each update
      optimizer=dict(kind="adam", lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.0)))

  c.eval = ml_collections.ConfigDict(dict(
      feature_space="classifier",      # or 'inception' (needs inception_weights)
      inception_weights="",
      num_samples=5000,
      num_test=5000,
      batch_size=500,
      grid_size=64,
      classifier_steps=3000,
      cache_dir=""))

  c.prune = ml_collections.ConfigDict(dict(
      parts={p: True for p in spec.parts}, exclude=(), scope="global"))

  c.lottery = ml_collections.ConfigDict(dict(
      levels=6,
      rate=0.2,
      rewind_step="0it",               # '500it' or '2ep'; 0 is the original lottery ticket
      rewind_optimizer=True,           # restore step k's optimizer state, as the authors do
      branches=("ticket", "random_reinit", "random_pruning", "snip", "grasp", "synflow"),
      branch_levels="",                # e.g. 'snip,grasp=5,10': those levels only ('': all)
      synflow_iterations=100))

  c.tickets = ml_collections.ConfigDict(dict(
      seeds=(0,),
      execution="auto",                # 'sequential' | 'vmap' | 'auto' (per backend)
      data_parallel=1))                # devices per ticket on the mesh's 'data' axis

  c.early_bird = ml_collections.ConfigDict(dict(
      kind="structured",               # or 'unstructured'
      sparsity=0.7,                    # channel (structured) or weight fraction to prune
      part_sparsity="",                # per part, e.g. 'generator=0.6,discriminator=0.85'
      interval=50,                     # steps between mask checks
      window=5,                        # masks compared (You et al.: the last 5)
      epsilon=0.1,                     # drawn when all their distances to the newest are <= this
      bn_l1=1e-4,                      # network-slimming L1 on BatchNorm scales (structured)
      max_search_steps=0,              # 0 = train.steps; no draw by then: the newest mask
      ticket_steps=0,                  # 0 = train.steps - drawn step (same total as dense)
      rewind=False,                    # True: the ticket starts from the initial weights
      dense_baseline=True,             # also train the dense model for the comparison
      scratch_baseline=False,          # also train the ticket's architecture from a new init
      imp_levels=0))                   # > 0: also run IMP (lottery section) for this many levels

  c.transfer = ml_collections.ConfigDict(dict(
      direction="vae_to_gan",          # or 'gan_to_vae'
      init_from="target",              # or 'source'
      with_discriminator=False))       # also map D's body <-> the encoder body (paper: D dense)

  c.update_from_flattened_dict(dict(spec.config))
  if preset == "smoke":
    c.data.limit = 512
    c.model.width = 8
    c.train.update(steps=6, batch_size=16, steps_per_call=2, log_every=2, checkpoint_every=4)
    c.eval.update(num_samples=64, num_test=64, batch_size=32, grid_size=16, classifier_steps=20)
    c.lottery.update(levels=2, rewind_step="2it", synflow_iterations=5)
    c.early_bird.update(interval=2, window=2, epsilon=0.5)
  elif preset == "paper":
    c.model.width = 64
    c.train.steps = 15000
    c.lottery.levels = 20
    c.eval.update(num_samples=10000, num_test=10000)
  c.update_from_flattened_dict(dict(spec.presets.get(preset, {})))
  if dataset in ("cifar10", "celeb_a"):
    c.eval.feature_space = "inception"  # the standard FID network; needs eval.inception_weights
  return c if binary is None else for_binary(c, binary)

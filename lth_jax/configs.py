"""Run configurations (``ml_collections.ConfigDict``) for every family, data set and preset.

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

PRESETS = ("default", "smoke", "paper")
FEATURE_SPACES = ("classifier", "inception")
EARLY_BIRD_KINDS = ("structured", "unstructured")
# transfer.direction -> (source family, target family); the config is the source family's.
TRANSFER_DIRECTIONS = {"vae_to_gan": ("vae", "dcgan"), "gan_to_vae": ("dcgan", "vae")}
TRANSFER_INIT_FROM = ("target", "source")
# Read by every binary; then each binary's own sections.
COMMON = ("family", "seed", "data", "model", "loss", "train", "eval", "prune")
SECTIONS = {"train": (),
            "find_tickets": ("lottery", "tickets"),
            "early_bird": ("early_bird", "lottery", "tickets"),   # lottery: early_bird.imp_levels
            "transfer": ("transfer", "lottery", "tickets")}

_GAN_OPT = dict(lr=2e-4, b1=0.5, b2=0.999, weight_decay=0.0)
_AE_OPT = dict(lr=1e-3, b1=0.9, b2=0.999, weight_decay=0.0)


def _parts(family: str) -> tuple[str, str]:
  return ("generator", "discriminator") if family == "dcgan" else ("encoder", "decoder")


def for_binary(config: ml_collections.ConfigDict, binary: str) -> ml_collections.ConfigDict:
  """An unlocked copy of ``config`` with only the ``COMMON`` sections and ``binary``'s own."""
  if binary not in SECTIONS:
    raise ValueError(f"unknown binary {binary!r}; expected one of {tuple(SECTIONS)}")
  keep = COMMON + SECTIONS[binary]
  return ml_collections.ConfigDict({k: v for k, v in config.to_dict().items() if k in keep})


def get_config(family: str = "dcgan", dataset: str = "fashion_mnist", preset: str = "default",
               binary: str | None = None) -> ml_collections.ConfigDict:
  """The config for one family ('ae', 'vae', 'dcgan'), data set and preset: every section, or
  with ``binary`` (a key of ``SECTIONS``) only those that binary reads."""
  if family not in ("ae", "vae", "dcgan"):
    raise ValueError(f"unknown family {family!r}; expected 'ae', 'vae' or 'dcgan'")
  if preset not in PRESETS:
    raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
  c = ml_collections.ConfigDict()
  c.family = family
  c.seed = 0

  c.data = ml_collections.ConfigDict(dict(
      name=dataset, image_size=64 if dataset == "celeb_a" else 32, source="auto", data_dir="",
      download=False, limit=0))

  c.model = ml_collections.ConfigDict(dict(
      width=32, z_dim={"dcgan": 100, "vae": 32, "ae": 128}[family]))

  c.loss = ml_collections.ConfigDict(dict(kind="bce", beta=4.0))

  c.train = ml_collections.ConfigDict(dict(
      steps={"dcgan": 5000, "vae": 4000, "ae": 3000}[family],
      batch_size=64,
      steps_per_call=1,
      loop="auto",                     # steps of one call: 'unrolled' | 'rolled' | 'auto' (backend)
      precision="fp32",                # or 'bf16': mixed precision (bf16 passes, fp32 weights)
      log_every=250,
      checkpoint_every=1000,
      optimizer=dict(_GAN_OPT if family == "dcgan" else _AE_OPT)))

  c.eval = ml_collections.ConfigDict(dict(
      feature_space="classifier",      # or 'inception' (needs inception_weights)
      inception_weights="",
      num_samples=5000,
      num_test=5000,
      batch_size=500,
      grid_size=64,
      classifier_steps=3000,
      cache_dir=""))

  parts = _parts(family)
  c.prune = ml_collections.ConfigDict(dict(
      parts={p: True for p in parts},
      # The paper keeps the generator's first layer and the discriminator's last layer dense.
      exclude=("generator/convt0", "discriminator/head") if family == "dcgan" else (),
      scope="global"))

  c.lottery = ml_collections.ConfigDict(dict(
      levels=6,
      rate=0.2,
      rewind_step="0it",               # '500it' or '2ep'; 0 is the original lottery ticket
      rewind_optimizer=True,           # restore step k's optimizer state, as the authors do
      branches=("ticket", "random_reinit", "random_pruning", "snip", "grasp", "synflow"),
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

  if preset == "smoke":
    c.data.limit = 512
    c.model.width = 8
    c.train.update(steps=6, batch_size=16, steps_per_call=2, log_every=2, checkpoint_every=4)
    c.eval.update(num_samples=64, num_test=64, batch_size=32, grid_size=16, classifier_steps=20)
    c.lottery.update(levels=2, rewind_step="2it", synflow_iterations=5)
    c.early_bird.update(interval=2, window=2, epsilon=0.5)
  elif preset == "paper":
    c.model.width = 64
    c.train.update(steps=15000, batch_size=64 if family == "dcgan" else 128)
    c.lottery.update(levels=20, rewind_step="10it" if family == "dcgan" else "0it")
    c.eval.update(num_samples=10000, num_test=10000)
  if dataset in ("cifar10", "celeb_a"):
    c.eval.feature_space = "inception"  # the standard FID network; needs eval.inception_weights
  return c if binary is None else for_binary(c, binary)

"""The model families: one registry, each family registered once by its own module.

A family is a :class:`Spec`: its name, parts, kind, primary metric, config defaults, transfer
partners, paper figures and its builder (settings -> :class:`lth_jax.steps.Family`). Everything
else asks the registry or the built ``Family`` (flops' passes, the sampling part, the channel
layout, BatchNorm passes, test losses), so no driver, report or check names a family or a layer.

Adding a family is one module in this package (discovered at import) that builds its Flax
modules (``lth_jax/models/``) with a generic builder and registers a spec::

  from lth_jax import families
  from lth_jax.families import gan
  from lth_jax.models import sngan

  def build(s):   # s: families.Settings
    return gan.build('sngan', sngan.Generator(...), sngan.Discriminator(...), s)

  families.register(families.Spec(name='sngan', kind='gan', parts=gan.PARTS, build=build,
                                  primary_metric='fid', config={'model.z_dim': 128}))

Builders: :func:`lth_jax.families.gan.build` (any generator / discriminator pair) and
:func:`lth_jax.families.autoencoding.build` (any model with the AE / VAE methods).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from lth_jax import data as data_lib
from lth_jax import steps

KINDS = ("gan", "autoencoding")
METRICS = ("fid", "recon_mse")    # lower is better; 'fid' is named by its feature space


class Settings(NamedTuple):
  """What a builder reads: the data shape, the model's size and how it trains."""
  channels: int
  image_size: int
  width: int                         # base channel count h
  z_dim: int
  optimizer: Mapping[str, Any]       # one train.optimizer dict, or {part: dict}
  batch_size: int
  widths: Mapping[str, Any] | None   # per-part hidden widths (channel-pruned models)
  bn_l1: Mapping[str, float]         # {part: network-slimming λ}
  compute_dtype: Any                 # the training step's passes (None: fp32)
  loss_kind: str = "bce"             # GAN loss: objectives.GAN_LOSSES
  beta: float = 4.0                  # the VAE's KL weight
  n_critic: int = 1                  # GAN: D steps per G step
  clip: float = 0.0                  # GAN: clip D's params to [-clip, clip] (0: off)
  gradient_penalty: float = 0.0      # GAN: weight of the gradient penalty (WGAN-GP; 0: off)


class Transfer(NamedTuple):
  """A ticket transfer to a family sharing layers: ``transfer.direction`` -> this.

  A direction's name is unique over the registry (it names one source and one target). The
  target is built at the source config's ``model.width`` and ``model.z_dim``
  (:func:`lth_jax.transfer.derive_configs`): mapped layers must have equal shapes.
  """
  target: str                        # the target family's name
  name_map: Mapping[str, str]        # own path prefix -> the target's (always transferred)
  extra: Mapping[str, str]           # also mapped with transfer.with_discriminator


class Reproduction(NamedTuple):
  """The family in the paper's reproduction (:mod:`lth_jax.reproduction`)."""
  winning: float                     # the paper's Table 1 winning-ticket sparsity (%)
  levels: Mapping[str, int]          # IMP levels per scale ('smoke', 'cpu', 'gpu')
  overrides: Mapping[str, Mapping[str, Any]] = {}   # dotted config changes per scale
  claims: tuple[int, ...] = (1, 2, 7)               # the claims whose jobs include it
  seeds: Mapping[str, tuple[int, ...]] = {}         # seeds per scale (absent: the scale's)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A registered family.

  Attributes:
    name: the config's ``family``.
    kind: 'gan' or 'autoencoding' (which config fields apply: ``train.n_critic`` etc. for GANs).
    parts: the params' top-level parts, e.g. ``('generator', 'discriminator')``.
    build: ``Settings -> steps.Family``.
    primary_metric: 'fid' or 'recon_mse' (lower is better), what a ticket is judged by.
    config: dotted config defaults over :func:`lth_jax.configs.get_config`'s common ones, e.g.
      ``{'model.z_dim': 100, 'prune.exclude': ('generator/convt0',)}``.
    presets: dotted changes per preset, applied after the preset's common changes.
    transfers: ``{transfer.direction: Transfer}`` with this family as the source.
    reproduction: how the paper's reproduction runs it (None: not part of it).
  """
  name: str
  kind: str
  parts: tuple[str, ...]
  build: Callable[[Settings], steps.Family]
  primary_metric: str
  config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  transfers: Mapping[str, Transfer] = dataclasses.field(default_factory=dict)
  reproduction: Reproduction | None = None


_REGISTRY: dict[str, Spec] = {}


def register(spec: Spec) -> Spec:
  """Adds ``spec`` to the registry (once per name) and returns it.

  Raises:
    ValueError: the name is taken, the spec's kind or primary metric is unknown, or another
      family already declares one of its transfer directions.
  """
  if spec.name in _REGISTRY:
    raise ValueError(f"model family {spec.name!r} is already registered")
  if spec.kind not in KINDS:
    raise ValueError(f"family {spec.name!r}: unknown kind {spec.kind!r}; expected one of {KINDS}")
  if spec.primary_metric not in METRICS:
    raise ValueError(f"family {spec.name!r}: unknown primary metric {spec.primary_metric!r}; "
                     f"expected one of {METRICS}")
  declared = {d: other.name for other in _REGISTRY.values() for d in other.transfers}
  for direction in spec.transfers:
    if direction in declared:
      raise ValueError(f"family {spec.name!r}: transfer direction {direction!r} is already "
                       f"declared by family {declared[direction]!r}; a transfer.direction names "
                       f"one (source, target) pair: give this one its own name")
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Removes a family (tests that register a throw-away family)."""
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  """The registered families, in registration order."""
  return tuple(_REGISTRY)


def get(name: str) -> Spec:
  """The spec of family ``name``.

  Raises:
    ValueError: no such family.
  """
  if name not in _REGISTRY:
    raise ValueError(f"unknown model family {name!r}; expected one of {names()}")
  return _REGISTRY[name]


def build(name: str, *, channels: int, image_size: int, width: int, z_dim: int,
          optimizer: Mapping[str, Any], batch_size: int, loss_kind: str = "bce",
          beta: float = 4.0, widths: Mapping[str, Any] | None = None,
          bn_l1: float | Mapping[str, float] = 0.0, precision: str = "fp32", n_critic: int = 1,
          clip: float = 0.0, gradient_penalty: float = 0.0) -> steps.Family:
  """Builds family ``name``'s pure functions.

  Args:
    name: a registered family (:func:`names`).
    channels, image_size: data shape (1 or 3 channels; 32 or 64 pixels).
    width: base channel count h of the architecture.
    z_dim: latent size.
    optimizer: one ``train.optimizer`` dict for every part (``kind``, lr, b1, b2, weight_decay;
      :func:`lth_jax.steps.optimizer`), or ``{part: dict}`` (a GAN's parts may differ).
    batch_size: images per step.
    loss_kind: GAN loss, 'bce' (non-saturating, the paper's), 'hinge' or 'wasserstein'.
    beta: the VAE's KL weight (the paper's β-VAE uses 4).
    widths: per-part hidden channel tuples, e.g. ``{'generator': (96, 40, 20)}``, for
      physically smaller (channel-pruned) models.
    bn_l1: network slimming's L1 weight λ: ``λ * sum |γ|`` over a part's BatchNorm scales is
      added to the training loss that updates that part (GAN: D's loss for D's BNs, G's loss for
      G's BNs; AE/VAE: the one loss). One λ for every part or ``{part: λ}``; 0 adds nothing.
      Reported losses include the penalty.
    precision: the training step's compute dtype, a key of :data:`steps.PRECISIONS`. 'bf16' is
      mixed precision: forward and backward passes in bfloat16; params, gradients, optimizer
      state, BatchNorm statistics (flax reduces in fp32) and losses in fp32, so masked entries
      stay exactly 0 and no loss scaling is needed. Scoring (SNIP, GraSP, SynFlow), sampling and
      reconstructions for evaluation run in fp32.
    n_critic, clip, gradient_penalty: GAN training (:func:`lth_jax.families.gan.build`).

  Raises:
    ValueError: an unknown family, precision or ``bn_l1`` part.
  """
  spec = get(name)
  if precision not in steps.PRECISIONS:
    raise ValueError(f"unknown train.precision {precision!r}; expected one of "
                     f"{tuple(steps.PRECISIONS)}")
  settings = Settings(channels, image_size, width, z_dim, optimizer, batch_size, widths,
                      steps.bn_l1_weights(bn_l1, spec.parts), steps.PRECISIONS[precision],
                      loss_kind, beta, n_critic, clip, gradient_penalty)
  return spec.build(settings)


def from_config(config, *, widths: Mapping[str, Any] | None = None,
                bn_l1: float | Mapping[str, float] = 0.0) -> steps.Family:
  """The config's family (reads ``family``, ``data``, ``model``, ``train``, ``loss``)."""
  return build(config.family, channels=data_lib.num_channels(config.data.name),
               image_size=config.data.image_size, width=config.model.width,
               z_dim=config.model.z_dim, optimizer=dict(config.train.optimizer),
               batch_size=config.train.batch_size, loss_kind=config.loss.kind,
               beta=config.loss.beta, widths=widths, bn_l1=bn_l1,
               precision=config.train.precision, n_critic=config.train.n_critic,
               clip=config.train.clip, gradient_penalty=config.loss.gradient_penalty)


def part_optimizers(settings: Settings, parts: tuple[str, ...]) -> dict:
  """``{part: optax transformation}`` from ``settings.optimizer`` (one dict or one per part)."""
  per_part = set(settings.optimizer) <= set(parts) and settings.optimizer
  return {p: steps.optimizer(settings.optimizer[p] if per_part else settings.optimizer)
          for p in parts}


def _discover() -> None:
  """Imports every module of this package: a family module registers itself at import. The
  paper's three come first, in the paper's order (registration order is report order)."""
  found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
  for module in sorted(found, key=lambda m: (("ae", "vae", "dcgan") + (m,)).index(m)):
    importlib.import_module(f"{__name__}.{module}")


_discover()

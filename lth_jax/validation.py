"""Checks a binary's config before any work.

``check(config, binary)`` reads every field that ``binary`` (a key of ``configs.SECTIONS``) reads:
its type, its range and its relation to other fields, section by section in config order (so
``train.steps`` is blamed before the ``lottery.rewind_step`` that must come before it). The first
problem raises ``config_fields.ConfigError`` with one message naming the field. Sections of other
binaries are ignored, so the full ``configs.get_config(...)`` of a notebook passes too.

Beyond the fields themselves, the checks look at what a run would meet first: ``prune.exclude``
against the model's layers (their shapes from ``jax.eval_shape``: nothing is compiled and no JAX
backend is started, so ``jax.distributed.initialize`` may follow), the Inception weights file's
format, and whether a small ``data.limit`` can train the feature classifier (or it is cached).
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import os
from collections.abc import Callable, Sequence

import jax
import ml_collections

from lth_jax import branches as branches_lib
from lth_jax import config_fields
from lth_jax import configs
from lth_jax import data as data_lib
from lth_jax import families
from lth_jax import feature_spaces
from lth_jax import masks as masks_lib
from lth_jax import metrics
from lth_jax import objectives
from lth_jax import parallel
from lth_jax import pruning
from lth_jax import steps as steps_lib


# ------------------------------------------------------------------------- field checks
def _get(config, field: str):
  node = config
  for key in field.split("."):
    node = node[key]
  return node


def _int(config, field: str, minimum: int | None = None) -> int:
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise config_fields.ConfigError(f"{field} must be an int, got {value!r} "
                                    f"({type(value).__name__})")
  if minimum is not None and value < minimum:
    raise config_fields.ConfigError(f"{field} must be >= {minimum}, got {value}")
  return int(value)


def _number(config, field: str, ok: Callable[[float], bool], expected: str) -> float:
  """A finite int or float with ``ok(value)``; ``expected`` says which (e.g. 'in (0, 1)')."""
  value = _get(config, field)
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise config_fields.ConfigError(f"{field} must be a number, got {value!r} "
                                    f"({type(value).__name__})")
  if not (math.isfinite(value) and ok(value)):
    raise config_fields.ConfigError(f"{field} must be {expected}, got {value}")
  return float(value)


def _typed(config, field: str, kind: type):
  value = _get(config, field)
  if not isinstance(value, kind):
    raise config_fields.ConfigError(f"{field} must be a {kind.__name__}, got {value!r} "
                                    f"({type(value).__name__})")
  return value


def _choice(config, field: str, options: Sequence[str]) -> str:
  value = _typed(config, field, str)
  if value not in options:
    raise config_fields.ConfigError(f"unknown {field} {value!r}; expected one of {tuple(options)}")
  return value


def _strings(config, field: str) -> tuple[str, ...]:
  value = _get(config, field)
  if isinstance(value, str) or not isinstance(value, (tuple, list)) or not all(
      isinstance(v, str) for v in value):
    raise config_fields.ConfigError(f"{field} must be a tuple of strings, got {value!r}")
  return tuple(value)


def _section(config, path: str, like: ml_collections.ConfigDict) -> None:
  """The section at ``path`` has exactly the fields of ``like`` (its defaults)."""
  parent, _, name = path.rpartition(".")
  if name not in (_get(config, parent) if parent else config):
    raise config_fields.ConfigError(f"the config has no {path} section")
  have = _get(config, path)
  if not isinstance(have, (ml_collections.ConfigDict, dict)):
    raise config_fields.ConfigError(f"{path} must be a section (ConfigDict), got {have!r}")
  unknown = sorted(set(have.keys()) - set(like.keys()))
  missing = sorted(set(like.keys()) - set(have.keys()))
  if unknown or missing:
    field = f"{path}.{(unknown or missing)[0]}"
    raise config_fields.ConfigError(f"{field} is "
                                    f"{'not a config field' if unknown else 'missing'}; {path} "
                                    f"has the fields {sorted(like.keys())}")


# --------------------------------------------------------------------------- sections
def _data(config) -> None:
  name = _choice(config, "data.name", data_lib.DATASETS)
  # The models need a power of two >= 8 (28x28 data is padded to 32).
  sizes = tuple(s for s in data_lib.image_sizes(name) if s >= 8 and not s & (s - 1))
  size = _int(config, "data.image_size")
  if size not in sizes:
    raise config_fields.ConfigError(f"data.image_size={size} is not available for {name}; "
                                    f"expected one of {sizes}")
  if _choice(config, "data.source", data_lib.SOURCES) == "idx" and name != "fashion_mnist":
    raise config_fields.ConfigError("data.source='idx' exists only for fashion_mnist, not "
                                    f"{name}; use 'tfds' or 'auto'")
  _typed(config, "data.data_dir", str)
  _typed(config, "data.download", bool)
  _int(config, "data.limit", 0)


def _train(config) -> None:
  for field, minimum in (("steps", 1), ("batch_size", 1), ("steps_per_call", 1),
                         ("log_every", 0), ("checkpoint_every", 0)):
    _int(config, "train." + field, minimum)
  _choice(config, "train.loop", steps_lib.LOOPS)
  _choice(config, "train.precision", tuple(steps_lib.PRECISIONS))
  _int(config, "train.n_critic", 1)
  _number(config, "train.clip", lambda x: x >= 0, ">= 0")
  _section(config, "train.optimizer", configs.get_config(config.family).train.optimizer)
  _choice(config, "train.optimizer.kind", steps_lib.OPTIMIZERS)
  _number(config, "train.optimizer.lr", lambda x: x > 0, "> 0")
  for field in ("b1", "b2"):
    _number(config, "train.optimizer." + field, lambda x: 0 <= x < 1, "in [0, 1)")
  _number(config, "train.optimizer.weight_decay", lambda x: x >= 0, ">= 0")


def _gan_only(config, kind: str) -> None:
  """The GAN training fields keep their defaults in a family of another kind."""
  if kind == "gan":
    return
  defaults = configs.get_config(config.family)
  for field in ("train.n_critic", "train.clip", "loss.gradient_penalty"):
    if _get(config, field) != _get(defaults, field):
      raise config_fields.ConfigError(f"{field}={_get(config, field)!r} applies to GAN families "
                                      f"only; family {config.family!r} is of kind {kind!r}: leave "
                                      f"it at {_get(defaults, field)!r}")


def _eval(config, family: str) -> None:
  space = _choice(config, "eval.feature_space", configs.FEATURE_SPACES)
  weights = _typed(config, "eval.inception_weights", str)
  # A family that does not generate needs no feature space (evaluation.Evaluator).
  generates = families.from_config(config).generate is not None
  if space == "inception" and generates:
    _inception_weights(weights)
  # Evaluator.from_config needs the Inception Score's splits (every family builds it).
  samples = _int(config, "eval.num_samples")
  if samples < metrics.IS_SPLITS:
    raise config_fields.ConfigError(f"eval.num_samples must be >= {metrics.IS_SPLITS} (the "
                                    f"Inception Score's {metrics.IS_SPLITS} splits), got {samples}")
  _int(config, "eval.num_test", 2)   # FID needs a covariance
  _int(config, "eval.batch_size", 1)
  # A family that does not generate shows half test images, half their reconstructions.
  _int(config, "eval.grid_size", 1 if generates else 2)
  _int(config, "eval.classifier_steps", 1)
  _typed(config, "eval.cache_dir", str)
  if space == "classifier" and generates:
    _classifier_data(config)


def _inception_weights(weights: str) -> None:
  """``eval.inception_weights`` is a file the loader can read (``inception.load_variables``);
  whether it holds the right keys is known only once it is read, when the run starts."""
  if not weights:
    raise config_fields.ConfigError("eval.feature_space='inception' needs eval.inception_weights: "
                                    "the path of the standard FID Inception weights "
                                    "(pt_inception-2015-12-05-6726825d.pth or its .npz "
                                    "conversion); or use eval.feature_space='classifier'")
  if not os.path.isfile(os.path.expanduser(weights)):
    raise config_fields.ConfigError(f"eval.inception_weights={weights!r} is not a file")
  if not weights.endswith((".pth", ".pt", ".npz")):
    raise config_fields.ConfigError(f"eval.inception_weights={weights!r} is neither a pytorch-fid "
                                    ".pth state dict nor its .npz conversion (the name must end "
                                    "in .pth, .pt or .npz)")
  if weights.endswith((".pth", ".pt")) and importlib.util.find_spec("torch") is None:
    raise config_fields.ConfigError(f"eval.inception_weights={weights!r} is a PyTorch file and "
                                    "torch is not installed: pip install torch, or convert the "
                                    "file to .npz once where torch is (one line, see "
                                    "lth_jax/models/inception.py) and pass the .npz path")


def _classifier_data(config) -> None:
  """With ``data.limit`` below the feature classifier's batch, the classifier cannot be trained:
  refused unless it is already cached (the path ``feature_spaces.classifier_feature_extractor``
  would load, for the data set's class count)."""
  batch = feature_spaces.DEFAULT_CLASSIFIER_CONFIG["batch_size"]
  limit = config.data.limit
  if not 0 < limit < batch:
    return
  from lth_jax import evaluation  # pylint: disable=import-outside-toplevel  # heavy imports
  name = config.data.name
  cache_dir = os.path.join(config.eval.cache_dir or evaluation.default_cache_dir(), "classifiers")
  path = feature_spaces.classifier_cache_path(
      evaluation.SHORT_NAMES.get(name, name),
      image_shape=(config.data.image_size, config.data.image_size, data_lib.num_channels(name)),
      num_classes=data_lib.num_classes(name), cache_dir=cache_dir,
      config={"steps": config.eval.classifier_steps})
  if not (os.path.isfile(path) and os.path.isfile(path[:-len(".msgpack")] + ".json")):
    raise config_fields.ConfigError(f"data.limit={limit} leaves {limit} training images, fewer "
                                    f"than the feature classifier's batch of {batch} "
                                    "(eval.feature_space='classifier', not cached in "
                                    f"{cache_dir}); set data.limit >= {batch} or 0 (the whole "
                                    "split)")


def _prune(config, family: str, prunes: bool) -> list[str]:
  """Checks ``prune``; returns the parts it prunes (``prunes``: the binary needs one)."""
  parts = families.get(family).parts
  switches = config.prune.parts
  if not isinstance(switches, (ml_collections.ConfigDict, dict)):
    raise config_fields.ConfigError("prune.parts must be a section {part: bool}, got "
                                    f"{switches!r}")
  for name, on in switches.items():
    if name not in parts:
      raise config_fields.ConfigError(f"prune.parts names {name!r}, which is not a part of "
                                      f"{family} (parts: {parts})")
    if not isinstance(on, bool):
      raise config_fields.ConfigError(f"prune.parts.{name} must be a bool, got {on!r}")
  pruned = [p for p, on in switches.items() if on]
  if prunes and not pruned:
    raise config_fields.ConfigError(f"prune.parts switches every part off: {dict(switches)}")
  exclude = _strings(config, "prune.exclude")
  for entry in exclude:
    if entry.split("/", 1)[0] not in parts:
      raise config_fields.ConfigError(f"prune.exclude entry {entry!r} is not a layer path of "
                                      f"{family} ('<part>/<layer>', parts: {parts})")
  kernels = _kernel_paths(config)
  covers = lambda path, entry: path == entry or path.startswith(entry + "/")
  for entry in exclude:
    if not any(covers(path, entry) for path in kernels):
      layers = ", ".join(sorted({path.rsplit("/", 1)[0] for path in kernels}))
      hint = (" (a comma list on the command line is one string: quote each entry, "
              "\"--config.prune.exclude='a/b','c/d'\")" if "," in entry else "")
      raise config_fields.ConfigError(f"prune.exclude entry {entry!r} matches no layer of "
                                      f"{family}{hint}; its layers: {layers}")
  if not any(switches.get(path.split("/", 1)[0], False)
             and not any(covers(path, entry) for entry in exclude) for path in kernels):
    raise config_fields.ConfigError("prune.parts and prune.exclude leave nothing to prune: pruned "
                                    f"parts {pruned}, exclude {list(exclude)}; switch a part on "
                                    "or exclude fewer layers")
  _choice(config, "prune.scope", pruning.SCOPES)
  return pruned


# Kernel paths per architecture (see _kernel_paths).
_KERNELS: dict[tuple, tuple[str, ...]] = {}


def _kernel_paths(config) -> tuple[str, ...]:
  """Paths of the model's kernels (params of >= 2 dims, the leaves ``steps.dense_masks`` can
  prune), from ``jax.eval_shape`` of the family's init: no compilation, and no JAX backend is
  started (``jax.distributed.initialize`` comes after the checks)."""
  key = (config.family, config.data.name, config.data.image_size, config.model.width,
         config.model.z_dim, config.loss.kind, config.train.precision)
  if key not in _KERNELS:
    # Built inside the trace: the family's constants and the key stay abstract.
    state = jax.eval_shape(lambda: families.from_config(config).init(jax.random.key(0)))
    _KERNELS[key] = tuple(path for path, leaf in masks_lib.leaves_with_paths(state.params)
                          if len(leaf.shape) >= 2)
  return _KERNELS[key]


def _tickets(config) -> None:
  seeds = _get(config, "tickets.seeds")
  if isinstance(seeds, (int, str)) or not isinstance(seeds, (tuple, list)) or not all(
      isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in seeds):
    raise config_fields.ConfigError(f"tickets.seeds must be a tuple of ints >= 0, got {seeds!r}")
  if not seeds:
    raise config_fields.ConfigError("tickets.seeds is empty")
  if len(set(seeds)) != len(seeds):
    raise config_fields.ConfigError(f"tickets.seeds has repeats: {tuple(seeds)}")
  _choice(config, "tickets.execution", parallel.EXECUTIONS)
  shards = _int(config, "tickets.data_parallel", 1)
  if config.train.batch_size % shards:
    raise config_fields.ConfigError(f"tickets.data_parallel={shards} does not divide "
                                    f"train.batch_size={config.train.batch_size}")


def _lottery(config) -> None:
  _int(config, "lottery.levels", 0)
  _number(config, "lottery.rate", lambda x: 0 < x < 1, "in (0, 1)")
  config_fields.rewind_step(config)
  _typed(config, "lottery.rewind_optimizer", bool)
  branches = _strings(config, "lottery.branches")
  unknown = [b for b in branches if b not in branches_lib.names()]
  if unknown:
    raise config_fields.ConfigError(f"unknown lottery.branches {unknown}; valid: "
                                    f"{branches_lib.names()}")
  if "ticket" not in branches:
    raise config_fields.ConfigError("lottery.branches must contain 'ticket' (every baseline is "
                                    "defined by the ticket's sparsity)")
  if len(set(branches)) != len(branches):
    raise config_fields.ConfigError(f"lottery.branches has repeats: {branches}")
  _int(config, "lottery.synflow_iterations", 1)
  _typed(config, "lottery.branch_levels", str)
  config_fields.branch_levels(config.lottery)


def _early_bird(config, pruned: list[str]) -> None:
  _choice(config, "early_bird.kind", configs.EARLY_BIRD_KINDS)
  _number(config, "early_bird.sparsity", lambda x: 0 < x < 1, "in (0, 1)")
  _typed(config, "early_bird.part_sparsity", str)
  config_fields.part_sparsity(config.early_bird, pruned)
  _int(config, "early_bird.interval", 1)
  if _int(config, "early_bird.window") < 2:
    raise config_fields.ConfigError("early_bird.window must be >= 2 (masks to compare), got "
                                    f"{config.early_bird.window}")
  _number(config, "early_bird.epsilon", lambda x: 0 <= x <= 1, "in [0, 1]")
  _number(config, "early_bird.bn_l1", lambda x: x >= 0, ">= 0")
  if _int(config, "early_bird.max_search_steps", 0) > config.train.steps:
    raise config_fields.ConfigError(
        f"early_bird.max_search_steps={config.early_bird.max_search_steps} exceeds "
        f"train.steps={config.train.steps}")
  _int(config, "early_bird.ticket_steps", 0)
  for field in ("rewind", "dense_baseline", "scratch_baseline"):
    _typed(config, "early_bird." + field, bool)
  _int(config, "early_bird.imp_levels", 0)


def _transfer(config) -> None:
  direction = _choice(config, "transfer.direction", configs.TRANSFER_DIRECTIONS)
  source = configs.TRANSFER_DIRECTIONS[direction][0]
  if config.family != source:
    raise config_fields.ConfigError(f"transfer.direction={direction!r} needs a {source} config as "
                                    f"the source, but family={config.family!r}; use "
                                    f"experiments/configs/{source}_<dataset>.py or the other "
                                    "direction")
  _choice(config, "transfer.init_from", configs.TRANSFER_INIT_FROM)
  _typed(config, "transfer.with_discriminator", bool)


def check(config: ml_collections.ConfigDict, binary: str) -> None:
  """Checks every field ``binary`` reads ('train', 'find_tickets', 'early_bird', 'transfer').

  Raises:
    config_fields.ConfigError: the first bad field, named in the message with what it must be.
    ValueError: an unknown ``binary``.
  """
  if binary not in configs.SECTIONS:
    raise ValueError(f"unknown binary {binary!r}; expected one of {tuple(configs.SECTIONS)}")
  known = set(configs.COMMON).union(*configs.SECTIONS.values())
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise config_fields.ConfigError(f"{unknown[0]} is not a config field or section; expected "
                                    f"{sorted(known)}")
  for field in ("family", "seed"):
    if field not in config:
      raise config_fields.ConfigError(f"the config has no {field}")
  family = _typed(config, "family", str)
  if family not in families.names():
    raise config_fields.ConfigError(f"family: unknown model family {family!r}; expected one of "
                                    f"{families.names()}")
  _int(config, "seed", 0)
  defaults = configs.get_config(family)
  for name in configs.COMMON[2:] + configs.SECTIONS[binary]:
    _section(config, name, defaults[name])
  _data(config)
  _int(config, "model.width", 1)
  _int(config, "model.z_dim", 1)
  _choice(config, "loss.kind", objectives.GAN_LOSSES)
  _number(config, "loss.beta", lambda x: x >= 0, ">= 0")
  _number(config, "loss.gradient_penalty", lambda x: x >= 0, ">= 0")
  _train(config)
  _gan_only(config, families.get(family).kind)
  _eval(config, family)
  pruned = _prune(config, family, prunes=binary != "train")
  if binary == "train":
    return
  _tickets(config)
  _lottery(config)
  if binary == "early_bird":
    _early_bird(config, pruned)
  if binary == "transfer":
    _transfer(config)

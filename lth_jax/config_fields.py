"""Config fields that the drivers parse, and the error every config problem raises.

``ConfigError`` names the field at fault (``validation.check`` raises it too). The parsers turn a
field's text into what a driver uses: ``lottery.rewind_step`` into a step count,
``early_bird.part_sparsity`` into per-part fractions, ``lottery.branch_levels`` into the levels
each baseline trains at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import ml_collections

_STEPS_RE = re.compile(r"^\s*(\d+)\s*(it|ep)?\s*$")
# Training examples per data set (tfds 'train' splits), for rewind steps given in epochs.
_TRAIN_SIZES = {"fashion_mnist": 60_000, "mnist": 60_000, "cifar10": 50_000, "celeb_a": 162_770}


class ConfigError(ValueError):
  """A config field is missing, of the wrong type, out of range or at odds with another field."""


def parse_steps(spec, steps_per_epoch: int) -> int:
  """``'500it'``, ``'2ep'`` or an int (``lottery.rewind_step``) → a step count.

  Raises:
    ConfigError: the spec is not of that form.
  """
  match = _STEPS_RE.match(str(spec))
  if not match:
    raise ConfigError(f"lottery.rewind_step={spec!r} is not a step count like '500it', '2ep' or "
                      f"500")
  value, unit = int(match.group(1)), match.group(2) or "it"
  return value * steps_per_epoch if unit == "ep" else value


def rewind_step(config: ml_collections.ConfigDict, num_train: int | None = None) -> int:
  """The rewind step k of ``lottery.rewind_step``; epochs count ``ceil(num_train /
  train.batch_size)`` steps (default ``num_train``: the data set's train split, or
  ``data.limit`` when smaller).

  Raises:
    ConfigError: a malformed spec, or k is not before the end of training (``train.steps``).
  """
  if num_train is None:
    size = _TRAIN_SIZES[config.data.name]
    num_train = min(size, config.data.limit) if config.data.limit else size
  k = parse_steps(config.lottery.rewind_step, -(-num_train // config.train.batch_size))
  if k >= config.train.steps:
    raise ConfigError(f"lottery.rewind_step={config.lottery.rewind_step!r} is step {k}, not before "
                      f"the end of training (train.steps={config.train.steps})")
  return k


def part_sparsity(early_bird: ml_collections.ConfigDict,
                  parts: Sequence[str]) -> float | dict[str, float]:
  """The target of an early-bird search: ``early_bird.sparsity``, or per part when
  ``early_bird.part_sparsity`` (``'generator=0.6,discriminator=0.85'``) names parts (the parts
  it does not name get ``early_bird.sparsity``).

  Raises:
    ConfigError: a malformed entry, an unknown or unpruned part, or a fraction outside (0, 1).
  """
  text = early_bird.part_sparsity.strip()
  if not text:
    return float(early_bird.sparsity)
  out = {part: float(early_bird.sparsity) for part in parts}
  for entry in text.split(","):
    name, sep, value = entry.partition("=")
    name = name.strip()
    try:
      fraction = float(value)
    except ValueError:
      fraction = None
    if not sep or fraction is None:
      raise ConfigError(f"early_bird.part_sparsity entry {entry!r} is not 'part=fraction' (e.g. "
                        f"'generator=0.6,discriminator=0.85')")
    if name not in out:
      raise ConfigError(f"early_bird.part_sparsity names {name!r}, which is not a pruned part "
                        f"(pruned parts: {sorted(parts)})")
    if not 0.0 < fraction < 1.0:
      raise ConfigError(f"early_bird.part_sparsity of {name!r} must be in (0, 1), got {fraction}")
    out[name] = fraction
  return out


def branch_levels(lottery: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
  """The levels each baseline branch trains at: ``{branch: levels}`` for the branches
  ``lottery.branch_levels`` names (``'snip,grasp,synflow=5,10,15,20;one_shot=10,20'``: groups of
  ``branches=levels`` separated by ``;``); the branches it does not name train at every level.

  Raises:
    ConfigError: a malformed group, a branch not in ``lottery.branches`` (or ``ticket``, which
      every later level prunes from), a branch named twice, or a level outside
      ``[1, lottery.levels]``.
  """
  out: dict[str, tuple[int, ...]] = {}
  text = lottery.branch_levels.strip()
  for group in filter(None, (g.strip() for g in text.split(";"))):
    names, sep, levels = group.partition("=")
    try:
      numbers_ = tuple(int(x) for x in levels.split(","))
    except ValueError:
      numbers_ = ()
    if not sep or not numbers_:
      raise ConfigError(f"lottery.branch_levels group {group!r} is not 'branches=levels' (e.g. "
                        "'snip,grasp=5,10,15,20')")
    for name in (n.strip() for n in names.split(",")):
      if name == "ticket" or name not in lottery.branches:
        raise ConfigError(f"lottery.branch_levels names {name!r}, which is not a baseline in "
                          f"lottery.branches {tuple(b for b in lottery.branches if b != 'ticket')}")
      if name in out:
        raise ConfigError(f"lottery.branch_levels names {name!r} twice")
      bad = [n for n in numbers_ if not 1 <= n <= lottery.levels]
      if bad:
        raise ConfigError(f"lottery.branch_levels levels {bad} are outside [1, lottery.levels="
                          f"{lottery.levels}]")
      out[name] = tuple(sorted(set(numbers_)))
  return out

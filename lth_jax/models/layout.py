"""What a model tells channel surgery about its layers (:mod:`lth_jax.channels`).

A model lists its prunable channel groups beside its definition (e.g.
:func:`lth_jax.models.dcgan.generator_channel_groups`); a family exposes them as
``steps.Family.channel_groups``. Paths are ``/``-joined keys into the two-part params tree
``{part: ...}``; the first key is the part.
"""

from __future__ import annotations

from typing import NamedTuple


class ChannelGroup(NamedTuple):
  """The output channels of one hidden layer, as ``/``-joined paths into the params tree.

  Its channels live on the producer's kernel output axis (-1) and bias, on the BatchNorm's
  ``scale``, ``bias``, ``mean`` and ``var``, and on the consumer's kernel input axis (-2).
  """
  name: str                  # the producing layer (also the channel mask's key)
  bn: str | None             # the BatchNorm normalising its output (None: no BatchNorm, no γ)
  consumer: str              # the layer reading the channels
  size: int                  # number of channels
  bn_epsilon: float | None   # the BatchNorm's epsilon (None without BatchNorm)


def part(group: ChannelGroup) -> str:
  """The part (first path key) the group belongs to."""
  return group.name.split("/", 1)[0]

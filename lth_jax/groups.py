"""A group of tickets (runs of one architecture trained side by side) and its checkpoints.

A :class:`Ticket` is one run: where it writes, its starting state and masks, its data stream and
its labels. A group checkpoint (:func:`save`) holds the whole group, so a killed stage resumes
from it without building a ticket again (:func:`resume`); :func:`restore_states` reads the older
layouts, which held states only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lth_jax import checkpointing
from lth_jax import masks as masks_lib
from lth_jax import parallel
from lth_jax import steps as steps_lib

PyTree = Any
STATES_KEY = "stacked"   # a group checkpoint's tree: {STATES_KEY: states, MASKS_KEY: masks}
MASKS_KEY = "masks"


class Spent(NamedTuple):
  """Wall-clock and process CPU seconds a group has taken (building and training) up to a
  checkpoint, over every process that trained it before: a resumed stage's timing adds them."""
  seconds: float = 0.0
  cpu_seconds: float = 0.0


class Ticket(NamedTuple):
  """One training run of a group: where it writes, where it starts, what labels it."""
  name: str                       # directory below the stage's, e.g. 'ticket_seed0'
  state: steps_lib.TrainState     # starting state (all tickets of a group at one step)
  masks: PyTree
  run_key: jax.Array              # step s trains on fold_in(run_key, s)
  tags: dict                      # columns of its result row and labels of its scalars


def _stack(trees: Sequence[PyTree]) -> PyTree:
  """Trees of one structure, stacked on a leading axis as NumPy (``None`` leaves kept): the
  host twin of ``parallel.stack``, so a group's stacked copy never takes device memory."""
  return jax.tree.map(lambda *xs: np.stack(xs), *jax.device_get(list(trees)))


def _key_record(key: jax.Array) -> dict:
  """A PRNG key (typed or raw ``uint32``) as JSON."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return {"impl": str(jax.random.key_impl(key)),
            "data": np.asarray(jax.random.key_data(key)).tolist()}
  return {"data": np.asarray(key).tolist()}


def _plain(tags: dict) -> dict:
  """``tags`` with NumPy/JAX scalars as Python numbers, for the checkpoint's JSON metadata."""
  return {k: v.item() if isinstance(v, (np.generic, jax.Array)) and np.ndim(v) == 0 else v
          for k, v in tags.items()}


def _key_from(record: dict) -> jax.Array:
  data = jnp.asarray(record["data"], jnp.uint32)
  return jax.random.wrap_key_data(data, impl=record["impl"]) if "impl" in record else data


def save(manager: checkpointing.Manager, step: int, tickets: Sequence[Ticket],
         states: Sequence[PyTree], spent: Spent = Spent()) -> None:
  """Saves a group as checkpoint ``step``, whole: a resume reads it back and rebuilds nothing.

  The tree is ``{STATES_KEY: states, MASKS_KEY: masks}``, every ticket's state and masks stacked
  on a leading axis on the host; the step's metadata holds each ticket's name, tags and run key
  (``'tickets'``), which params leaves have a mask (``'masked_leaves'``) and the group's
  ``spent`` time so far (``'spent'``: ``[seconds, cpu_seconds]``). One tree, not one
  per ticket: Orbax's cost grows with the number of arrays (~3 ms per array per save on CPU;
  six AE tickets: 1.28 s one tree each, 0.17 s stacked; ``benchmarks/checkpoint_cost.py``).
  """
  masks = [t.masks for t in tickets]
  metadata = {
      "tickets": [{"name": t.name, "tags": _plain(t.tags), "run_key": _key_record(t.run_key)}
                  for t in tickets],
      "masked_leaves": [m is not None
                        for m in jax.tree.leaves(masks[0], is_leaf=masks_lib.is_none)],
      "spent": [float(spent.seconds), float(spent.cpu_seconds)]}
  manager.save(step, {STATES_KEY: _stack(states), MASKS_KEY: _stack(masks)}, metadata=metadata,
               force=True)


def _empty(shape: jax.ShapeDtypeStruct, *lead: int, dtype=None) -> np.ndarray:
  """A NumPy restore target (``np.empty`` allocates nothing until written)."""
  return np.empty((*lead, *shape.shape), dtype or shape.dtype)


def load(manager: checkpointing.Manager, state_shape: PyTree,
         metadata: dict | None = None) -> list[Ticket] | None:
  """The tickets of the newest :func:`save` checkpoint, their states at its step (NumPy),
  or None for a checkpoint of an older layout (states only: its tickets must be rebuilt).

  Args:
    state_shape: one ticket's state, as arrays or ShapeDtypeStructs (e.g. ``jax.eval_shape``
      of the family's ``init``).
    metadata: the checkpoint's metadata, if the caller has read it (else read here).
  """
  metadata = manager.metadata() if metadata is None else metadata
  if "tickets" not in metadata:
    return None
  records, n = metadata["tickets"], len(metadata["tickets"])
  params = jax.tree.leaves(state_shape.params)
  masks_like = jax.tree.unflatten(
      jax.tree.structure(state_shape.params),
      [_empty(p, n, dtype=bool) if masked else None
       for p, masked in zip(params, metadata["masked_leaves"], strict=True)])
  like = {STATES_KEY: jax.tree.map(lambda x: _empty(x, n), state_shape), MASKS_KEY: masks_like}
  tree = manager.restore(like=like)[0]
  return [Ticket(r["name"], state, masks, _key_from(r["run_key"]), r["tags"])
          for r, state, masks in zip(records, parallel.unstack(tree[STATES_KEY]),
                                     parallel.unstack(tree[MASKS_KEY]))]


def restore_states(manager: checkpointing.Manager, states: Sequence[PyTree]) -> list[PyTree]:
  """The states of the newest group checkpoint of a layout that holds no masks, one NumPy
  state per ticket (``states``: arrays or ShapeDtypeStructs of the tickets' shapes).

  Two layouts: the states stacked (written on 2026-11-29), and ``{'tickets': [state, ...]}``,
  one tree per ticket (before).
  """
  shapes = jax.eval_shape(lambda s: s, states[0])
  try:
    like = jax.tree.map(lambda x: _empty(x, len(states)), shapes)
    return parallel.unstack(manager.restore(like={STATES_KEY: like})[0][STATES_KEY])
  except ValueError:   # the layout of one tree per ticket
    like = [jax.tree.map(_empty, shapes)] * len(states)
    return manager.restore(like={"tickets": like})[0]["tickets"]


def resume(checkpoint_dir: str, state_shape: Callable[[], PyTree],
           make_tickets: Callable[[], list[Ticket]]) -> tuple[list[Ticket], Spent | None]:
  """``(tickets, spent)``: a group's tickets at the newest checkpoint in ``checkpoint_dir`` and
  the time the group had taken when it was saved (:func:`save`; zero in a checkpoint written
  before 2026-11-29's second layout), else ``(make_tickets(), None)``. ``state_shape()`` gives
  one ticket's state shape (see :func:`load`); it is called only when there is a checkpoint.

  A checkpoint of :func:`save` holds the whole group, so nothing is rebuilt (rebuilding
  re-scored SNIP/GraSP/SynFlow, minutes per seed on CPU, and would silently pair the saved states
  with masks of the current code); one of an older layout holds only states, so its tickets are
  rebuilt and given those states.
  """
  with checkpointing.Manager(checkpoint_dir, max_to_keep=2) as manager:
    if manager.latest_step() is None:
      return make_tickets(), None
    metadata = manager.metadata()
    tickets = load(manager, state_shape(), metadata)
    if tickets is None:
      tickets = make_tickets()
      states = restore_states(manager, [t.state for t in tickets])
      tickets = [t._replace(state=s) for t, s in zip(tickets, states)]
  return tickets, Spent(*metadata.get("spent", ()))

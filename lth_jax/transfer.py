"""Ticket transfer between families that share layers (DCGAN or WGAN and β-VAE; the ResNet pair).

A family names its transfer partners in its registered spec (``families.Spec.transfers``:
``transfer.direction`` -> target family, the always-mapped layers and those
``transfer.with_discriminator`` adds). The VAE's decoder has exactly the generator's names and
shapes and its encoder body the discriminator body's (:data:`lth_jax.models.dcgan.GAN_TO_VAE`),
so a mask, weights or BatchNorm statistics found for one family can be copied onto the other:

* :func:`map_masks` / :func:`gan_to_vae_masks` / :func:`vae_to_gan_masks` — the target's own mask
  tree with the mapped layers replaced by the source's masks;
* :func:`map_params` — the same for params or ``batch_stats`` trees.

Layers without a counterpart (the discriminator's head, the encoder's head: 1 vs ``2 * z_dim``
outputs) keep the target's own masks and weights. Which leaves are prunable is the *target's*
decision: a mapped leaf the target does not prune stays ``None``, and a mapped leaf the source
does not prune keeps the target's own mask. Mismatched architectures (missing layers, different
shapes from a different ``width``, ``z_dim``, image size or channel count) raise
:class:`TransferMismatchError` naming every offending layer.

``run(config, workdir)`` is the paper's transfer experiment. ``config`` is the *source* family's
config with ``transfer.direction`` (a key of ``configs.TRANSFER_DIRECTIONS``: 'vae_to_gan' |
'gan_to_vae' for the β-VAE and DCGAN, 'vae_to_wgan' | 'wgan_to_vae' for the β-VAE and the WGAN,
'resnet_vae_to_gan' | 'resnet_gan_to_vae' for the ResNet pair); the target family's config is
derived from it (:func:`derive_configs`), at the source's width and z_dim, with the target's own
loss and optimizer. It

1. runs (or resumes) the source's IMP search, branch ``ticket`` only, in ``workdir/source/``;
2. runs (or resumes) the target's own IMP search with the config's baselines in
   ``workdir/target/``;
3. at every level maps each seed's source ticket onto the target and trains it, as branch
   ``transferred``, with the target ticket's budget (steps k..T), data stream and evaluation, in
   ``workdir/transferred/level_LL/transferred_seed<s>/``; it starts from the target's θ_k like
   the target's ticket, or (``transfer.init_from='source'``) from the source's θ_k weights on
   the mapped layers (:func:`initial_state`);
4. writes ``results.csv``, ``metric_vs_sparsity.png`` and ``summary.md`` over the target's rows
   and the transferred rows to ``workdir``.

Both searches prune the same layers (mapped through the name map), so at every level the
transferred mask has exactly the sparsity of the target's own ticket: the prunable layers are the
generator / decoder kernels (plus the discriminator / encoder bodies with
``transfer.with_discriminator``) that are prunable both under the source config's ``prune``
section and under the target family's default one (so the generator's first layer stays dense,
as the paper does). By default, as in the paper, the discriminator / encoder stays dense in
every run of the experiment.

Example::

  from lth_jax import configs, transfer
  config = configs.get_config('vae', 'fashion_mnist', 'smoke')
  config.transfer.direction = 'vae_to_gan'
  rows = transfer.run(config, '/tmp/transfer')       # rows of branches ticket, ..., transferred
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import ml_collections

from lth_jax import branches
from lth_jax import configs
from lth_jax import families
from lth_jax import groups
from lth_jax import lottery
from lth_jax import masks as masks_lib
from lth_jax import runs
from lth_jax import steps as steps_lib
from lth_jax import validation
from lth_jax.models import dcgan

PyTree = Any
BRANCH = "transferred"
SOURCE_BRANCHES = ("ticket",)   # the source search trains its tickets only


class TransferMismatchError(ValueError):
  """Two trees cannot be mapped onto each other (missing layers or different shapes)."""


# --------------------------------------------------------------------------- mapping trees
def _rename(path: str, name_map: dict[str, str]) -> str | None:
  """``path`` with its mapped prefix replaced, or None when no prefix of ``name_map`` covers it."""
  for src, dst in name_map.items():
    if path == src or path.startswith(src + "/"):
      return dst + path[len(src):]
  return None


def _under(flat: list[tuple[str, Any]], prefix: str) -> dict[str, Any]:
  """``{path relative to prefix: leaf}`` for the leaves below ``prefix``."""
  return {p[len(prefix):]: x for p, x in flat if p == prefix or p.startswith(prefix + "/")}


def _shape(x) -> tuple[int, ...] | None:
  return None if x is None else tuple(x.shape)


def _mapped_leaves(source: PyTree, target: PyTree, name_map: dict[str, str]) -> dict[str, Any]:
  """``{target path: source leaf}`` for every mapped leaf, after checking names and shapes.

  Raises:
    TransferMismatchError: listing every missing layer and every shape difference (shapes are
      compared where both leaves are arrays).
  """
  src_flat = masks_lib.leaves_with_paths(source)
  tgt_flat = masks_lib.leaves_with_paths(target)
  tops = lambda flat: sorted({p.split("/", 1)[0] for p, _ in flat})
  problems, mapped = [], {}
  for src_prefix, tgt_prefix in name_map.items():
    src = _under(src_flat, src_prefix)
    tgt = _under(tgt_flat, tgt_prefix)
    if not src:
      problems.append(f"'{src_prefix}' is not in the source tree (top-level names: "
                      f"{tops(src_flat)})")
    if not tgt:
      problems.append(f"'{tgt_prefix}' is not in the target tree (top-level names: "
                      f"{tops(tgt_flat)})")
    if not src or not tgt:
      continue
    for rel in sorted(set(src) - set(tgt)):
      problems.append(f"source layer '{src_prefix + rel}' has no counterpart "
                      f"'{tgt_prefix + rel}' in the target")
    for rel in sorted(set(tgt) - set(src)):
      problems.append(f"target layer '{tgt_prefix + rel}' has no counterpart "
                      f"'{src_prefix + rel}' in the source")
    for rel in sorted(set(src) & set(tgt)):
      a, b = _shape(src[rel]), _shape(tgt[rel])
      if a is not None and b is not None and a != b:
        problems.append(f"'{src_prefix + rel}' has shape {a} but '{tgt_prefix + rel}' has {b}")
      mapped[tgt_prefix + rel] = src[rel]
  if problems:
    raise TransferMismatchError(
        "cannot map the source onto the target (both models need the same width, z_dim, "
        "image size and channels):\n  " + "\n  ".join(problems))
  return mapped


def _rebuild(target: PyTree, leaf_fn) -> PyTree:
  """``target`` with each leaf replaced by ``leaf_fn(path, leaf)`` (``None`` leaves included)."""
  flat = masks_lib.leaves_with_paths(target)
  treedef = jax.tree.structure(target, is_leaf=lambda x: x is None)
  return jax.tree.unflatten(treedef, [leaf_fn(p, x) for p, x in flat])


def map_masks(source_masks: PyTree, target_masks: PyTree, name_map: dict[str, str]) -> PyTree:
  """The target's mask tree with every mapped layer's mask taken from the source.

  Args:
    source_masks: the source family's mask tree (e.g. its ticket).
    target_masks: the target's own mask tree (usually its dense masks): it fixes the result's
      structure, which leaves are prunable, and the masks of layers without a counterpart.
    name_map: source path prefix -> target path prefix, e.g. :data:`dcgan.VAE_TO_GAN`.

  Returns:
    A mask tree shaped like ``target_masks``. Per mapped leaf: ``None`` where the target does not
    prune it; the target's own mask where the source does not prune it; otherwise the source's.

  Raises:
    TransferMismatchError: a mapped layer is missing on one side or masks differ in shape.
  """
  mapped = _mapped_leaves(source_masks, target_masks, name_map)

  def leaf(path, own):
    if path not in mapped or own is None or mapped[path] is None:
      return own
    return jax.numpy.asarray(mapped[path], bool)

  return _rebuild(target_masks, leaf)


def map_params(source: PyTree, target: PyTree, name_map: dict[str, str]) -> PyTree:
  """``target`` (params or ``batch_stats``) with every mapped leaf taken from ``source``.

  Also the full architecture check: every mapped layer must exist on both sides with the same
  shape (works on ``jax.eval_shape`` trees too).

  Raises:
    TransferMismatchError: naming each missing layer and each shape difference.
  """
  mapped = _mapped_leaves(source, target, name_map)
  return _rebuild(target, lambda path, own: mapped.get(path, own))


def gan_to_vae_masks(gan_masks: PyTree, vae_masks: PyTree, *,
                     name_map: dict[str, str] = dcgan.GAN_TO_VAE) -> PyTree:
  """A GAN mask tree (``{'generator', 'discriminator'}``) onto the VAE's own mask tree.

  The generator's masks become the decoder's and the discriminator body's the encoder body's;
  the encoder head keeps ``vae_masks``' masks. See :func:`map_masks`.
  """
  return map_masks(gan_masks, vae_masks, name_map)


def vae_to_gan_masks(vae_masks: PyTree, gan_masks: PyTree, *,
                     name_map: dict[str, str] = dcgan.VAE_TO_GAN) -> PyTree:
  """A VAE mask tree (``{'encoder', 'decoder'}``) onto the GAN's own mask tree.

  The decoder's masks become the generator's and the encoder body's the discriminator body's;
  the discriminator head keeps ``gan_masks``' masks. See :func:`map_masks`.
  """
  return map_masks(vae_masks, gan_masks, name_map)


def initial_state(family: steps_lib.Family, target_theta_k: steps_lib.TrainState, masks: PyTree,
                  *, init_from: str, source_theta_k: steps_lib.TrainState | None = None,
                  name_map: dict[str, str] | None = None,
                  restore_optimizer: bool = True) -> steps_lib.TrainState:
  """The transferred ticket's starting state, at the target's rewind step k.

  Args:
    family: the target family.
    target_theta_k: the target's dense state at its rewind step (as its own ticket starts).
    masks: the transferred masks (target-shaped).
    init_from: 'target' — exactly as the target's own ticket is reset (:func:`branches.rewind`):
      θ_k weights, BatchNorm statistics and (with ``restore_optimizer``) optimizer state;
      'source' — the mapped layers' weights and BatchNorm statistics from ``source_theta_k``
      (the others from ``target_theta_k``) and a fresh optimizer (the families' optimizers
      differ).
    source_theta_k: the source's dense state at its rewind step ('source' only).
    name_map: source prefix -> target prefix of the transferred layers ('source' only).
    restore_optimizer: 'target' only, as in :func:`branches.rewind`.

  Raises:
    ValueError: unknown ``init_from`` or missing source arguments.
  """
  if init_from == "target":
    return branches.rewind(family, target_theta_k, masks, restore_optimizer=restore_optimizer)
  if init_from != "source":
    raise ValueError(f"unknown transfer.init_from {init_from!r}; expected one of "
                     f"{configs.TRANSFER_INIT_FROM}")
  if source_theta_k is None or name_map is None:
    raise ValueError("init_from='source' needs source_theta_k and name_map")
  params = map_params(source_theta_k.params, target_theta_k.params, name_map)
  stats = map_params(source_theta_k.batch_stats, target_theta_k.batch_stats, name_map)
  return steps_lib.TrainState(target_theta_k.step, masks_lib.apply(params, masks), stats,
                              steps_lib.fresh_opt_state(family, params))


# ---------------------------------------------------------------------------------- configs
class Spec(NamedTuple):
  """A validated ``transfer`` section."""
  direction: str
  source_family: str
  target_family: str
  init_from: str
  with_discriminator: bool
  name_map: dict[str, str]        # source prefix -> target prefix of the transferred layers


def spec_from_config(config: ml_collections.ConfigDict) -> Spec:
  """Reads and checks ``config.transfer`` against ``config.family``.

  The layers come from the source family's spec (``families.Spec.transfers[direction]``);
  ``transfer.with_discriminator`` (default False, the paper's setting) adds its ``extra`` ones
  (the discriminator body <-> encoder body); otherwise only generator <-> decoder carries a
  ticket.

  Raises:
    config_fields.ConfigError: a bad field of the config (:func:`validation.check`), named.
  """
  validation.check(config, "transfer")
  t = config.transfer
  source, target = configs.TRANSFER_DIRECTIONS[t.direction]
  with_d = bool(t.with_discriminator)
  pair = families.get(source).transfers[t.direction]
  name_map = {**pair.name_map, **(pair.extra if with_d else {})}
  return Spec(t.direction, source, target, t.init_from, with_d, name_map)


def _prunable(family: steps_lib.Family, params_shape: PyTree,
              prune: ml_collections.ConfigDict) -> set[str]:
  """Paths of the leaves ``prune`` (parts, exclude) makes prunable in ``family``."""
  tree = steps_lib.dense_masks(family, params_shape, dict(prune.parts), tuple(prune.exclude))
  return {p for p, m in masks_lib.leaves_with_paths(tree) if m is not None}


def _prune_section(params_shape: PyTree, prunable: set[str], parts: tuple[str, ...],
                   scope: str) -> ml_collections.ConfigDict:
  """A ``prune`` section whose prunable leaves are exactly ``prunable`` (kernel paths)."""
  on = {part: any(p.startswith(part + "/") for p in prunable) for part in parts}
  exclude = sorted({p.rsplit("/", 1)[0] for p, x in masks_lib.leaves_with_paths(params_shape)
                    if len(x.shape) >= 2 and on[p.split("/", 1)[0]] and p not in prunable})
  return ml_collections.ConfigDict(dict(parts=on, exclude=tuple(exclude), scope=scope))


def derive_configs(config: ml_collections.ConfigDict
                   ) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """The source and target lottery configs of a transfer run of the source config ``config``.

  Both keep ``config``'s data, model (width, z_dim: the decoder must be exactly the generator),
  train schedule, eval, lottery and tickets sections. The target trains with its own family's
  recipe at its default preset (``configs.get_config``): its ``loss`` section, optimizer,
  ``train.n_critic`` and ``train.clip`` (a VAE -> WGAN target gets the Wasserstein loss, 5
  critic steps, clipping and RMSprop; a WGAN -> VAE target none of them). The source searches
  branch 'ticket' only. Both ``prune`` sections are rewritten to prune exactly the corresponding
  layers: the transferred parts' kernels prunable under ``config.prune`` *and* under the target
  family's default ``prune``.

  Raises:
    ValueError: a bad ``transfer`` section, or no layer is prunable on both sides.
    TransferMismatchError: the two architectures differ (naming the layers).
  """
  spec = spec_from_config(config)
  source = configs.for_binary(config, "find_tickets")     # the searches are lottery runs
  source.lottery.branches = SOURCE_BRANCHES
  target = configs.for_binary(config, "find_tickets")
  target.family = spec.target_family
  defaults = configs.get_config(spec.target_family, config.data.name)
  target.loss = defaults.loss.to_dict()
  target.train.update(optimizer=defaults.train.optimizer.to_dict(),
                      n_critic=defaults.train.n_critic, clip=defaults.train.clip)
  src_family = runs.family_from_config(source)
  tgt_family = runs.family_from_config(target)
  src_shape = jax.eval_shape(src_family.init, jax.random.key(0)).params
  tgt_shape = jax.eval_shape(tgt_family.init, jax.random.key(0)).params
  map_params(src_shape, tgt_shape, spec.name_map)
  src_prunable = _prunable(src_family, src_shape, config.prune)
  tgt_prunable = _prunable(tgt_family, tgt_shape, defaults.prune)
  renamed = {_rename(p, spec.name_map) for p in src_prunable} - {None}
  both = renamed & tgt_prunable
  if not both:
    raise ValueError(
        f"no transferred layer is prunable in both families: the source's prune section makes "
        f"{sorted(src_prunable)} prunable, the target's defaults {sorted(tgt_prunable)} (mapped "
        f"parts: {spec.name_map}); check prune.parts and prune.exclude")
  inverse = {v: k for k, v in spec.name_map.items()}
  scope = config.prune.scope
  source.prune = _prune_section(src_shape, {_rename(p, inverse) for p in both},
                                families.get(spec.source_family).parts, scope)
  target.prune = _prune_section(tgt_shape, both, families.get(spec.target_family).parts, scope)
  for cfg, fam, shape, want in ((source, src_family, src_shape,
                                 {_rename(p, inverse) for p in both}),
                                (target, tgt_family, tgt_shape, both)):
    got = _prunable(fam, shape, cfg.prune)
    if got != want:
      raise ValueError(f"the derived {cfg.family} prune section {cfg.prune.to_dict()} prunes "
                       f"{sorted(got)} instead of {sorted(want)}")
  return source, target


# ---------------------------------------------------------------------------- the experiment
def _transferred_level(ctx: runs.Context, spec: Spec, source: ml_collections.ConfigDict,
                       workdir: str, level: int) -> list[dict]:
  """Level ``level``'s ``transferred`` tickets (one per seed), a stage in
  ``transferred/level_LL/``: each seed's source ticket mapped onto the target and trained with
  the target ticket's budget, data stream (its run key) and evaluation."""
  config = ctx.config
  source_family = runs.family_from_config(source)
  source_shape = jax.eval_shape(source_family.init, jax.random.key(0))
  source_dense = runs.dense_masks(source, source_family, source_shape.params)
  theta_k_path = lambda search, seed: os.path.join(workdir, search, "level_00",
                                                   f"dense_seed{seed}", "theta_k")

  def make_tickets(names):
    tickets = []
    for name in names:
      seed = int(name.rsplit("_seed", 1)[1])
      source_ticket = masks_lib.load(
          os.path.join(workdir, "source", lottery.level_name(level), f"ticket_seed{seed}",
                       "masks.npz"), like=source_dense)
      theta_k = ctx.load_state(theta_k_path("target", seed))
      m = map_masks(source_ticket, ctx.dense_masks(theta_k.params), spec.name_map)
      source_theta_k = (ctx.load_state(theta_k_path("source", seed), like=source_shape)
                        if spec.init_from == "source" else None)
      state = initial_state(ctx.family, theta_k, m, init_from=spec.init_from,
                            source_theta_k=source_theta_k, name_map=spec.name_map,
                            restore_optimizer=config.lottery.rewind_optimizer)
      tickets.append(groups.Ticket(name, state, m, runs.seed_keys(seed)["run"],
                                   {"level": level, "branch": BRANCH, "seed": seed}))
    return tickets

  def columns(ticket, state, timing):
    return {"sparsity": float(masks_lib.sparsity(ticket.masks)), "steps": int(state.step),
            "group_train_seconds": timing.seconds}

  level_dir = os.path.join(ctx.workdir, lottery.level_name(level))
  return ctx.run_stage(
      level_dir, _transferred_runs(config), make_tickets,
      until_step=config.train.steps, columns=columns,
      done_file=os.path.join(level_dir, "done.json"),
      grid=os.path.join(ctx.workdir, f"samples_level{level}.png"),
      label=f"level {level} {BRANCH}: ", scalar_step=lambda t, s: level)


def _transferred_runs(config: ml_collections.ConfigDict) -> list[str]:
  return [f"{BRANCH}_seed{int(s)}" for s in config.tickets.seeds]


def planned_outputs(config: ml_collections.ConfigDict) -> list[str]:
  """Every run's output file, relative to the workdir, in :func:`run`'s order: the source
  search's (ticket branch), the target search's, then each level's transferred tickets."""
  source = ml_collections.ConfigDict(config.to_dict())
  source.lottery.branches = SOURCE_BRANCHES
  return ([os.path.join("source", p) for p in lottery.planned_outputs(source)]
          + [os.path.join("target", p) for p in lottery.planned_outputs(config)]
          + [runs.run_output(os.path.join(BRANCH, lottery.level_name(level)), name)
             for level in range(1, config.lottery.levels + 1)
             for name in _transferred_runs(config)])


def _describe(spec: Spec, source: ml_collections.ConfigDict,
              target: ml_collections.ConfigDict) -> str:
  """The Markdown section explaining what the ``transferred`` rows are."""
  def pruned(cfg):
    on = [p for p, v in cfg.prune.parts.items() if v]
    off = [p for p, v in cfg.prune.parts.items() if not v]
    excluded = f" except {', '.join(cfg.prune.exclude)}" if cfg.prune.exclude else ""
    return (f"{cfg.family}: {' and '.join(on)} kernels{excluded}"
            + (f"; {' and '.join(off)} dense" if off else ""))

  pairs = ", ".join(f"`{s}` → `{t}`" for s, t in spec.name_map.items())
  start = {"target": "from the target's own rewind point θ_k, as its ticket "
                     "(`transfer.init_from='target'`)",
           "source": "from the source's θ_k weights on the mapped layers, the target's elsewhere "
                     "and a fresh optimizer (`transfer.init_from='source'`)"}
  return (f"\n## Transfer ({spec.direction})\n\n"
          f"Branch `transferred`: each level's {spec.source_family} ticket (`source/`) mapped "
          f"onto the {spec.target_family} ({pairs}) and trained {start[spec.init_from]} with "
          f"the target ticket's budget and data. "
          f"Every other row is the {spec.target_family}'s own search (`target/`).\n\n"
          f"Prunable layers (every row): {pruned(target)}. Source search: {pruned(source)}.\n")


def run(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs (or resumes) the transfer experiment of the source config ``config``.

  Returns:
    The target search's rows followed by the ``transferred`` rows (one per level >= 1 and seed).
  """
  spec = spec_from_config(config)
  source, target = derive_configs(config)
  runs.prepare_workdir(workdir, config, extendable=lottery.EXTENDABLE)
  lottery.run(source, os.path.join(workdir, "source"))
  rows = lottery.run(target, os.path.join(workdir, "target"))
  ctx = runs.Context(target, os.path.join(workdir, BRANCH))
  for level in range(1, config.lottery.levels + 1):
    rows = rows + _transferred_level(ctx, spec, source, workdir, level)
  ctx.writer.close()
  if ctx.is_main:
    summary = lottery.write_reports(workdir, rows, ctx.metric)
    summary += _describe(spec, source, target)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
      f.write(summary)
    print(summary)
    print(f"plots and samples in {os.path.abspath(workdir)}")
  return rows

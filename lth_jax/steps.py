"""Pure, jit-compiled masked training steps for the three families: AE, VAE and DCGAN.

Everything a training loop needs from a family is a :class:`Family` of pure functions over
``(TrainState, masks, images, key)``; masks are traced arguments, so pruning rounds never
recompile. Params of every family are one dict with two parts (``'generator'``/``'discriminator'``
or ``'encoder'``/``'decoder'``); the mask tree is shaped like that dict.

Data stays on device as uint8 ``[N, H, W, C]``; each step draws its batch from its own key
(``fold_in(run_key, step)``), so the data stream depends only on the step number: rewinding to
step k and fusing n steps per call both reproduce the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lth_jax import data as data_lib
from lth_jax import masks as masks_lib
from lth_jax import objectives
from lth_jax import optim
from lth_jax.models import autoencoder, dcgan, layout, vae

PyTree = Any
FAMILIES = ("ae", "vae", "dcgan")
PARTS = {"ae": ("encoder", "decoder"), "vae": ("encoder", "decoder"),
         "dcgan": ("generator", "discriminator")}
# train.precision -> the compute dtype of the training step's passes (None: the params' fp32).
PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}


class DivergenceError(FloatingPointError):
  """A loss or parameter became NaN/Inf during training (the one error every loop raises)."""


class TrainState(NamedTuple):
  """Everything that changes during training (a pytree; stackable on a leading ticket axis)."""
  step: jax.Array        # int32 scalar: number of steps taken
  params: PyTree         # {part: linen params}
  batch_stats: PyTree    # {part: BatchNorm running statistics}
  opt_state: PyTree      # {part: optax state} (GAN) or one optax state over all params


class Family(NamedTuple):
  """A model family's pure functions. ``images`` are uint8 [N, H, W, C]; batches float [-1, 1]."""
  name: str
  parts: tuple[str, str]
  modules: dict                     # {part or 'model': linen module}
  optimizers: dict                  # {part: optax transformation} ('all' for AE/VAE)
  init: Callable[[jax.Array], TrainState]
  train_step: Callable[..., tuple[TrainState, dict]]   # (state, masks, images, key) -> ...
  score_loss: Callable[..., jax.Array]                 # (params, batch_stats, batch, key) -> scalar
  synflow_output: Callable[..., jax.Array]             # (params, batch_stats) -> array
  generate: Callable[..., jax.Array] | None            # (params, batch_stats, key, n) -> images
  reconstruct: Callable[..., jax.Array] | None         # (params, batch_stats, batch) -> images
  batch_size: int
  # params -> the prunable channel groups of every part, in ``parts`` order (the model's layout,
  # e.g. lth_jax.models.dcgan.channel_groups); None: no BatchNorm channels to score.
  channel_groups: Callable[[PyTree], list[layout.ChannelGroup]] | None = None


def _adam(cfg: dict) -> optax.GradientTransformation:
  """Adam (or AdamW with ``weight_decay`` > 0) from a plain dict of settings."""
  if cfg.get("weight_decay", 0.0):
    return optax.adamw(cfg["lr"], b1=cfg["b1"], b2=cfg["b2"], weight_decay=cfg["weight_decay"])
  return optax.adam(cfg["lr"], b1=cfg["b1"], b2=cfg["b2"])


def _init_state(params, batch_stats, optimizers) -> TrainState:
  if "all" in optimizers:
    opt_state = optimizers["all"].init(params)
  else:
    opt_state = {k: optimizers[k].init(params[k]) for k in params}
  return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, opt_state)


def mask_opt_state(family: Family, opt_state, masks) -> PyTree:
  """Zeroes optimizer moments of pruned entries (used when late resetting restores step k)."""
  if "all" in family.optimizers:
    return optim.mask_state(family.optimizers["all"], opt_state, masks)
  return {k: optim.mask_state(family.optimizers[k], opt_state[k], masks[k]) for k in opt_state}


def map_opt_params(family: Family, opt_state, f, *rest) -> PyTree:
  """Applies ``f(leaf, *rest_leaves)`` to every params-shaped tree in ``opt_state`` (moments,
  traces; counts untouched); ``rest`` are trees shaped like the whole params."""
  if "all" in family.optimizers:
    return optax.tree_utils.tree_map_params(family.optimizers["all"], f, opt_state, *rest)
  return {k: optax.tree_utils.tree_map_params(family.optimizers[k], f, opt_state[k],
                                              *(r[k] for r in rest)) for k in opt_state}


def fresh_opt_state(family: Family, params) -> PyTree:
  """A new optimizer state for ``params`` (rewinding without the optimizer)."""
  if "all" in family.optimizers:
    return family.optimizers["all"].init(params)
  return {k: family.optimizers[k].init(params[k]) for k in params}


def _masked_update(tx, grads, opt_state, params, masks):
  updates, opt_state = optim.with_masks(tx).update(grads, opt_state, params, masks=masks)
  return optim.apply_updates(params, updates, masks), opt_state


def to_float32(tree: PyTree) -> PyTree:
  """Every floating leaf of ``tree`` as float32 (a mixed-precision pass's outputs, for losses)."""
  return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating)
                      else x, tree)


def _bn_l1_weights(bn_l1: float | Mapping[str, float], parts: tuple[str, str]) -> dict:
  """``{part: λ}`` from one λ for every part or a ``{part: λ}`` mapping (missing parts: 0)."""
  weights = dict(bn_l1) if isinstance(bn_l1, Mapping) else {p: bn_l1 for p in parts}
  unknown = set(weights) - set(parts)
  if unknown:
    raise ValueError(f"bn_l1 names {sorted(unknown)}, which are not parts {parts}")
  if any(float(w) < 0.0 for w in weights.values()):
    raise ValueError(f"bn_l1 must be >= 0, got {bn_l1}")
  return {p: float(weights.get(p, 0.0)) for p in parts}


def bn_l1_penalty(params: PyTree, weight: float) -> jax.Array:
  """Network slimming's sparsity term ``weight * sum |γ|`` over the BatchNorm scales of ``params``
  (every leaf named ``scale``; in these models only BatchNorm has one)."""
  scales = [x for path, x in jax.tree_util.tree_leaves_with_path(params)
            if masks_lib.key_name(path[-1]) == "scale"]
  return weight * sum((jnp.sum(jnp.abs(x)) for x in scales), jnp.zeros((), jnp.float32))


# ----------------------------------------------------------------------------------- DCGAN
def _gan_family(*, channels, image_size, width, z_dim, widths, optimizer, loss_kind, batch_size,
                bn_l1, compute_dtype):
  gen = dcgan.Generator(width=width, channels=channels, image_size=image_size, z_dim=z_dim,
                        widths=widths.get("generator") if widths else None)
  disc = dcgan.Discriminator(width=width, channels=channels, image_size=image_size,
                             widths=widths.get("discriminator") if widths else None)
  # The training step's passes in the compute dtype; init, scoring and sampling in fp32.
  train_gen, train_disc = gen.clone(dtype=compute_dtype), disc.clone(dtype=compute_dtype)
  optimizers = {"generator": _adam(optimizer), "discriminator": _adam(optimizer)}

  def init(key):
    kg, kd = jax.random.split(key)
    vg = gen.init(kg, jnp.zeros((1, z_dim)), train=False)
    vd = disc.init(kd, jnp.zeros((1, image_size, image_size, channels)), train=False)
    params = {"generator": vg["params"], "discriminator": vd["params"]}
    stats = {"generator": vg.get("batch_stats", {}), "discriminator": vd.get("batch_stats", {})}
    return _init_state(params, stats, optimizers)

  def g_apply(p, s, z, train, module=gen):
    if train:
      out, new = module.apply({"params": p, "batch_stats": s}, z, train=True,
                              mutable=["batch_stats"])
      return out, new["batch_stats"]
    return module.apply({"params": p, "batch_stats": s}, z, train=False), s

  def d_apply(p, s, x, module=disc):
    """Train-mode logits (float32, whatever the compute dtype) and new BatchNorm statistics."""
    out, new = module.apply({"params": p, "batch_stats": s}, x, train=True,
                            mutable=["batch_stats"])
    return to_float32(out), new["batch_stats"]

  def train_step(state: TrainState, masks, images, key):
    kx, kz = jax.random.split(key)
    real = data_lib.sample_batch(kx, images, batch_size)
    z = data_lib.shard_batch(jax.random.normal(kz, (batch_size, z_dim)))   # G data-parallel too
    p, s = state.params, state.batch_stats
    # Generator forward once; its VJP is reused for the generator step (as PyTorch's DCGAN does).
    (fake, g_vjp, g_stats) = jax.vjp(lambda gp: g_apply(gp, s["generator"], z, True, train_gen),
                                     p["generator"], has_aux=True)

    def d_loss_fn(dp):
      real_logits, ds = d_apply(dp, s["discriminator"], real, train_disc)
      fake_logits, ds = d_apply(dp, ds, jax.lax.stop_gradient(fake), train_disc)
      loss = objectives.gan_d_loss(real_logits, fake_logits, kind=loss_kind)
      if bn_l1["discriminator"]:
        loss = loss + bn_l1_penalty(dp, bn_l1["discriminator"])
      return loss, ds

    (d_loss, d_stats), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(p["discriminator"])
    d_params, d_opt = _masked_update(optimizers["discriminator"], d_grads,
                                     state.opt_state["discriminator"], p["discriminator"],
                                     masks["discriminator"])

    def g_loss_fn(fake_images):
      logits, ds = d_apply(d_params, d_stats, fake_images, train_disc)
      return objectives.gan_g_loss(logits, kind=loss_kind), ds

    (g_loss, d_stats), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
    (g_grads,) = g_vjp(fake_grads)
    if bn_l1["generator"]:
      penalty, penalty_grads = jax.value_and_grad(bn_l1_penalty)(p["generator"], bn_l1["generator"])
      g_loss, g_grads = g_loss + penalty, jax.tree.map(jnp.add, g_grads, penalty_grads)
    g_params, g_opt = _masked_update(optimizers["generator"], g_grads,
                                     state.opt_state["generator"], p["generator"],
                                     masks["generator"])
    new_state = TrainState(state.step + 1, {"generator": g_params, "discriminator": d_params},
                           {"generator": g_stats, "discriminator": d_stats},
                           {"generator": g_opt, "discriminator": d_opt})
    return new_state, {"d_loss": d_loss, "g_loss": g_loss}

  def score_loss(params, batch_stats, batch, key):
    """D's loss w.r.t. D plus G's loss w.r.t. G (no cross terms): one batch, train-mode BN."""
    z = jax.random.normal(key, (batch.shape[0], z_dim))
    sg = jax.lax.stop_gradient
    fake_for_d, _ = g_apply(sg(params["generator"]), batch_stats["generator"], z, True)
    real_logits, ds = d_apply(params["discriminator"], batch_stats["discriminator"], batch)
    fake_logits, _ = d_apply(params["discriminator"], ds, fake_for_d)
    d_loss = objectives.gan_d_loss(real_logits, fake_logits, kind=loss_kind)
    fake, _ = g_apply(params["generator"], batch_stats["generator"], z, True)
    g_logits, _ = d_apply(sg(params["discriminator"]), batch_stats["discriminator"], fake)
    return d_loss + objectives.gan_g_loss(g_logits, kind=loss_kind)

  def synflow_output(params, batch_stats):
    """Sum of G's pre-tanh output for an all-ones z plus D's logit for an all-ones image."""
    g_out = gen.apply({"params": params["generator"], "batch_stats": batch_stats["generator"]},
                      jnp.ones((1, z_dim)), train=False, activate=False)
    d_out = disc.apply({"params": params["discriminator"],
                        "batch_stats": batch_stats["discriminator"]},
                       jnp.ones((1, image_size, image_size, channels)), train=False)
    return jnp.sum(g_out) + jnp.sum(d_out)

  def generate(params, batch_stats, key, n):
    z = jax.random.normal(key, (n, z_dim))
    return g_apply(params["generator"], batch_stats["generator"], z, False)[0]

  return Family("dcgan", PARTS["dcgan"], {"generator": gen, "discriminator": disc}, optimizers,
                jax.jit(init), train_step, score_loss, synflow_output, generate, None, batch_size,
                dcgan.channel_groups)


# ------------------------------------------------------------------------------ VAE and AE
def _autoencoding_family(name, *, channels, image_size, width, z_dim, widths, optimizer, beta,
                         batch_size, bn_l1, compute_dtype):
  kwargs = dict(width=width, channels=channels, image_size=image_size, z_dim=z_dim,
                encoder_widths=widths.get("encoder") if widths else None,
                decoder_widths=widths.get("decoder") if widths else None)
  model = vae.VAE(**kwargs) if name == "vae" else autoencoder.AutoEncoder(**kwargs)
  train_model = model.clone(dtype=compute_dtype)   # the training step's passes; the rest fp32
  optimizers = {"all": _adam(optimizer)}
  dummy = jnp.zeros((1, image_size, image_size, channels))

  def forward(params, batch_stats, x, key, train, module=model):
    """The model's outputs (float32, whatever the compute dtype) and BatchNorm statistics."""
    variables = {"params": params, "batch_stats": batch_stats}
    if train:
      out, new = module.apply(variables, x, key, train=True, mutable=["batch_stats"])
      return to_float32(out), new["batch_stats"]
    return to_float32(module.apply(variables, x, key, train=False)), batch_stats

  def loss_fn(params, batch_stats, x, key, train=True, module=model):
    out, stats = forward(params, batch_stats, x, key, train, module)
    if name == "vae":
      recon, mean, logvar = out
      loss, aux = objectives.vae_loss(x, recon, mean, logvar, beta=beta)
    else:
      loss = objectives.mse(x, out)
      aux = {"mse": loss}
    return loss, (stats, aux)

  def train_loss_fn(params, batch_stats, x, key):
    loss, aux = loss_fn(params, batch_stats, x, key, module=train_model)
    for part, weight in bn_l1.items():
      if weight:
        loss = loss + bn_l1_penalty(params[part], weight)
    return loss, aux

  def init(key):
    kp, kr = jax.random.split(key)
    variables = model.init(kp, dummy, kr, train=False)
    return _init_state(variables["params"], variables.get("batch_stats", {}), optimizers)

  def train_step(state: TrainState, masks, images, key):
    kx, kr = jax.random.split(key)
    x = data_lib.sample_batch(kx, images, batch_size)
    (loss, (stats, aux)), grads = jax.value_and_grad(train_loss_fn, has_aux=True)(
        state.params, state.batch_stats, x, kr)
    params, opt_state = _masked_update(optimizers["all"], grads, state.opt_state, state.params,
                                       masks)
    return TrainState(state.step + 1, params, stats, opt_state), {"loss": loss, **aux}

  def score_loss(params, batch_stats, batch, key):
    return loss_fn(params, batch_stats, batch, key)[0]

  def synflow_output(params, batch_stats):
    variables = {"params": params, "batch_stats": batch_stats}
    return jnp.sum(model.apply(variables, jnp.ones_like(dummy), train=False,
                               method=model.synflow_forward))

  def reconstruct(params, batch_stats, batch):
    variables = {"params": params, "batch_stats": batch_stats}
    return model.apply(variables, batch, train=False, method=model.reconstruct)

  generate = None
  if name == "vae":
    def generate(params, batch_stats, key, n):
      z = jax.random.normal(key, (n, z_dim))
      return model.apply({"params": params, "batch_stats": batch_stats}, z, train=False,
                         method=model.decode)

  return Family(name, PARTS[name], {"model": model}, optimizers, jax.jit(init), train_step,
                score_loss,
                synflow_output, generate, reconstruct, batch_size,
                vae.channel_groups if name == "vae" else autoencoder.channel_groups)


def make_family(name: str, *, channels: int, image_size: int, width: int, z_dim: int,
                optimizer: dict, batch_size: int, loss_kind: str = "bce", beta: float = 4.0,
                widths: dict | None = None,
                bn_l1: float | Mapping[str, float] = 0.0, precision: str = "fp32") -> Family:
  """Builds a family's pure functions.

  Args:
    name: 'ae', 'vae' or 'dcgan'.
    channels, image_size: data shape (1 or 3 channels; 32 or 64 pixels).
    width: base channel count h of the DCGAN-style architecture.
    z_dim: latent size.
    optimizer: dict with lr, b1, b2 and optional weight_decay (Adam / AdamW).
    batch_size: images per step.
    loss_kind: GAN loss, 'bce' (non-saturating, the paper's) or 'hinge'.
    beta: the VAE's KL weight (the paper's β-VAE uses 4).
    widths: per-part hidden channel tuples, e.g. ``{'generator': (96, 40, 20)}``, for
      physically smaller (channel-pruned) models.
    bn_l1: network slimming's L1 weight λ: ``λ * sum |γ|`` over a part's BatchNorm scales is
      added to the training loss that updates that part (GAN: D's loss for D's BNs, G's loss for
      G's BNs; AE/VAE: the one loss). One λ for every part or ``{part: λ}``; 0 adds nothing.
      Reported losses include the penalty.
    precision: the training step's compute dtype, a key of :data:`PRECISIONS`. 'bf16' is mixed
      precision: forward and backward passes in bfloat16; params, gradients, optimizer state,
      BatchNorm statistics (flax reduces in fp32) and losses in fp32, so masked entries stay
      exactly 0 and no loss scaling is needed (bfloat16 has fp32's exponent range). Scoring
      (SNIP, GraSP, SynFlow), sampling and reconstructions for evaluation run in fp32.
  """
  if name not in FAMILIES:
    raise ValueError(f"unknown model family {name!r}; expected one of {FAMILIES}")
  l1 = _bn_l1_weights(bn_l1, PARTS[name])
  if precision not in PRECISIONS:
    raise ValueError(f"unknown train.precision {precision!r}; expected one of "
                     f"{tuple(PRECISIONS)}")
  compute_dtype = PRECISIONS[precision]
  if name == "dcgan":
    return _gan_family(channels=channels, image_size=image_size, width=width, z_dim=z_dim,
                       widths=widths, optimizer=optimizer, loss_kind=loss_kind,
                       batch_size=batch_size, bn_l1=l1, compute_dtype=compute_dtype)
  return _autoencoding_family(name, channels=channels, image_size=image_size, width=width,
                              z_dim=z_dim, widths=widths, optimizer=optimizer, beta=beta,
                              batch_size=batch_size, bn_l1=l1, compute_dtype=compute_dtype)


LOOPS = ("auto", "unrolled", "rolled")


def resolve_loop(loop: str, platform: str | None = None) -> str:
  """'unrolled' or 'rolled' for ``train.loop`` on ``platform`` (default: JAX's backend).

  'auto' is 'unrolled' on CPU, where XLA runs convolutions inside rolled loops
  (``lax.scan``/``fori_loop``) 40-70x slower than the same step alone, and 'rolled' on GPU/TPU,
  where one compiled loop of many steps removes per-step dispatch and host round trips and
  compiles once whatever ``steps_per_call`` is.
  """
  if loop not in LOOPS:
    raise ValueError(f"unknown train.loop {loop!r}; expected one of {LOOPS}")
  if loop != "auto":
    return loop
  return "unrolled" if (platform or jax.default_backend()) == "cpu" else "rolled"


def multi_step(family: Family, steps_per_call: int, loop: str = "unrolled") -> Callable:
  """``steps_per_call`` train steps in one (unjitted) function.

  Args:
    steps_per_call: steps per call.
    loop: 'unrolled' (a Python loop: the steps are inlined one after another) or 'rolled' (one
      ``lax.scan`` over the steps: the program's size does not grow with ``steps_per_call``); see
      :func:`resolve_loop` for which is fast where. Step i uses the key ``fold_in(run_key, step)``
      in both, so both train on the same batches.

  Returns:
    ``f(state, masks, images, run_key) -> (state, metrics)``; metrics are averaged over the steps
    and include ``finite`` (1.0 when every loss and parameter is finite after the call).
  """
  if steps_per_call < 1:
    raise ValueError(f"train.steps_per_call must be >= 1, got {steps_per_call}")
  if loop not in LOOPS[1:]:
    raise ValueError(f"multi_step needs loop 'unrolled' or 'rolled', got {loop!r}")

  def step(state, masks, images, run_key):
    return family.train_step(state, masks, images, jax.random.fold_in(run_key, state.step))

  def run(state, masks, images, run_key):
    if loop == "rolled":
      state, history = jax.lax.scan(lambda s, _: step(s, masks, images, run_key), state,
                                    length=steps_per_call)
      metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), history)
    else:
      history = []
      for _ in range(steps_per_call):
        state, m = step(state, masks, images, run_key)
        history.append(m)
      metrics = jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *history)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in
                                jax.tree.leaves((metrics, state.params))]))
    metrics["finite"] = finite.astype(jnp.float32)
    return state, metrics

  return run


def jit_multi_step(family: Family, steps_per_call: int, loop: str = "unrolled") -> Callable:
  """:func:`multi_step`, jitted with the state donated."""
  return jax.jit(multi_step(family, steps_per_call, loop), donate_argnums=0)


def dense_masks(family: Family, params: PyTree, prune: dict[str, bool],
                exclude: tuple[str, ...] = ()) -> PyTree:
  """All-kept masks over the prunable kernels of the parts switched on in ``prune``.

  Args:
    params: ``{part: params}``.
    prune: ``{part: bool}``: which parts are pruned at all.
    exclude: path prefixes kept dense, e.g. ``('generator/convt0', 'discriminator/head')``.
  """
  unknown = set(prune) - set(family.parts)
  if unknown:
    raise ValueError(f"prune switches {sorted(unknown)} are not parts of {family.name}; "
                     f"its parts are {family.parts}")

  def rule(path: str, leaf) -> bool:
    part = path.split("/", 1)[0]
    if not prune.get(part, False) or getattr(leaf, "ndim", 0) < 2:
      return False
    return not any(path == e or path.startswith(e + "/") for e in exclude)

  result = masks_lib.init(params, prunable=rule)
  if not [m for m in jax.tree.leaves(result) if m is not None]:
    raise ValueError(f"nothing to prune: prune={prune}, exclude={exclude} leave no kernels")
  return result

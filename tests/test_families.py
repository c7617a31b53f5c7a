"""Tests for lth_jax.families: the registry, a family added by registration alone, and the GAN
builder's options (n_critic, RMSprop, weight clipping, Wasserstein loss with gradient penalty)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lth_jax import configs, evaluation, families, flops, masks, pruning, steps, validation
from lth_jax.families import gan

OPT = dict(lr=1e-3, b1=0.5, b2=0.999)


def images(n=32, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 1)), jnp.uint8)


# ---------------------------------------------------------------------------- the registry
def test_registry_round_trip():
  assert families.names()[:3] == ("ae", "vae", "dcgan")
  for name in families.names():
    spec = families.get(name)
    assert spec.name == name and spec.kind in families.KINDS
    assert configs.get_config(name).prune.parts.to_dict() == dict.fromkeys(spec.parts, True)
  assert steps.PARTS["dcgan"] == families.get("dcgan").parts == ("generator", "discriminator")
  with pytest.raises(ValueError, match="unknown model family 'nope'; expected one of"):
    families.get("nope")
  with pytest.raises(ValueError, match="model family 'vae' is already registered"):
    families.register(families.get("vae"))
  paper_pair = {"vae_to_gan": ("vae", "dcgan"), "gan_to_vae": ("dcgan", "vae")}
  assert paper_pair.items() <= configs.TRANSFER_DIRECTIONS.items()


class TinyGenerator(nn.Module):
  """z -> one dense layer -> 32x32x1 images (the GAN builder's generator contract)."""
  z_dim: int = 8
  dtype: object = None

  @nn.compact
  def __call__(self, z, *, train, activate=True):
    x = nn.Dense(32 * 32, dtype=self.dtype, name="fc")(z).reshape(z.shape[0], 32, 32, 1)
    return jnp.tanh(x) if activate else x


class TinyDiscriminator(nn.Module):
  """Images -> one dense layer -> logits [B]."""
  dtype: object = None

  @nn.compact
  def __call__(self, x, *, train):
    return nn.Dense(1, dtype=self.dtype, name="head")(x.reshape(x.shape[0], -1))[:, 0]


@pytest.fixture
def tiny_family():
  """A family that exists only in this test: registered here, and no other module changed."""
  def build(s):
    return gan.build("tiny", TinyGenerator(z_dim=s.z_dim), TinyDiscriminator(), s)

  families.register(families.Spec(name="tiny", kind="gan", parts=gan.PARTS, build=build,
                                  primary_metric="fid",
                                  config={"model.z_dim": 8, "prune.exclude": ("generator/fc",)}))
  yield "tiny"
  families.unregister("tiny")


def test_a_registered_family_runs_without_any_driver_edit(tiny_family):
  config = configs.get_config(tiny_family, "fashion_mnist", "smoke")
  assert config.model.z_dim == 8 and tuple(config.prune.exclude) == ("generator/fc",)
  validation.check(config, "find_tickets")
  assert evaluation.primary_metric_key(tiny_family, "fmnist_clf") == "fid_fmnist_clf"
  fam = steps.make_family(tiny_family, channels=1, image_size=32, width=4, z_dim=8,
                          optimizer=OPT, batch_size=4)
  state = fam.init(jax.random.key(0))
  m = steps.dense_masks(fam, state.params, {"generator": True, "discriminator": True},
                        tuple(config.prune.exclude))
  assert m["generator"]["fc"]["kernel"] is None
  m = pruning.magnitude(state.params, m, 0.5)
  state = state._replace(params=masks.apply(state.params, m))
  state, metrics = jax.jit(steps.multi_step(fam, 1))(state, m, images(), jax.random.key(1))
  assert int(state.step) == 1 and float(metrics["finite"]) == 1.0
  kernel = np.asarray(state.params["discriminator"]["head"]["kernel"])
  assert np.all(kernel[~np.asarray(m["discriminator"]["head"]["kernel"])] == 0.0)
  # flops: D (1024 -> 1) on real, fake and fake again; G (8 -> 1024) once.
  forward = flops.family_forward(fam)
  assert forward == {"generator": 2 * 8 * 1024 + 1024, "discriminator": 2 * 1024 + 1}
  assert flops.train_step(fam) == 3 * 4 * (forward["generator"] + 3 * forward["discriminator"])
  assert flops.sample(fam) == forward["generator"]


# ------------------------------------------------------------------------ the GAN builder
def tiny(name, **kw):
  """The GAN builder's options on the one-layer family (they are model-agnostic; the zoo's tests
  run them on SNGAN and WGAN): programs that compile in a fraction of a DCGAN's time."""
  kw.setdefault("optimizer", OPT)
  return steps.make_family(name, channels=1, image_size=32, width=4, z_dim=8, batch_size=4, **kw)


def pruned_start(fam, rate=0.5):
  """Half of every layer pruned (per layer: G's and D's weights differ in scale)."""
  state = fam.init(jax.random.key(0))
  m = pruning.magnitude(state.params, steps.dense_masks(fam, state.params,
                                                        dict.fromkeys(fam.parts, True)), rate,
                        scope="layerwise")
  return state._replace(params=masks.apply(state.params, m)), m


def pruned_entries(params, m):
  kept = jax.tree.leaves(m)
  values = jax.tree.leaves(jax.tree.map(lambda mm, p: None if mm is None else p, m, params,
                                        is_leaf=lambda v: v is None))
  return np.concatenate([np.asarray(v)[~np.asarray(k)] for k, v in zip(kept, values)])


def adam_count(opt_state):
  return int(next(s.count for s in opt_state if isinstance(s, optax.ScaleByAdamState)))


def test_n_critic_takes_that_many_d_steps_per_g_step(tiny_family):
  one, three = tiny(tiny_family), tiny(tiny_family, n_critic=3)
  state, m = pruned_start(one)
  x, key = images(), jax.random.key(1)
  after_one, _ = jax.jit(one.train_step)(state, m, x, key)
  after_three, metrics = jax.jit(three.train_step)(state, m, x, key)
  assert adam_count(after_three.opt_state["discriminator"]) == 3
  assert adam_count(after_three.opt_state["generator"]) == 1
  assert np.isfinite(float(metrics["d_loss"])) and np.isfinite(float(metrics["g_loss"]))
  assert not np.array_equal(after_one.params["discriminator"]["head"]["kernel"],
                            after_three.params["discriminator"]["head"]["kernel"])
  assert np.all(pruned_entries(after_three.params, m) == 0.0)
  assert three.train_passes == {"generator": 1 + 2 / 3, "discriminator": 7}
  assert one.train_passes == {"generator": 1, "discriminator": 3}


def test_rmsprop_matches_a_hand_computed_step(tiny_family):
  tx = steps.optimizer(dict(kind="rmsprop", lr=0.1, b1=0.0, b2=0.9, weight_decay=0.0))
  params, grads = jnp.array([1.0, -2.0]), jnp.array([0.5, -4.0])
  updates, _ = tx.update(grads, tx.init(params), params)
  nu = 0.1 * grads ** 2                                # (1 - decay) g^2 from nu_0 = 0
  np.testing.assert_allclose(updates, -0.1 * grads / (jnp.sqrt(nu) + 1e-8), rtol=1e-6)
  fam = tiny(tiny_family,
             optimizer=dict(kind="rmsprop", lr=5e-5, b1=0.0, b2=0.99, weight_decay=0.0))
  state, m = pruned_start(fam)
  state, _ = jax.jit(fam.train_step)(state, m, images(), jax.random.key(1))
  assert isinstance(state.opt_state["discriminator"][0], optax.ScaleByRmsState)
  assert np.all(pruned_entries(state.params, m) == 0.0)
  with pytest.raises(ValueError, match="unknown train.optimizer.kind 'sgd'"):
    steps.optimizer(dict(kind="sgd", lr=0.1))


def test_per_part_optimizers(tiny_family):
  fam = tiny(tiny_family, optimizer={"generator": dict(OPT, kind="adam"),
                         "discriminator": dict(kind="rmsprop", lr=1e-4, b1=0.0, b2=0.99)})
  state = fam.init(jax.random.key(0))
  assert isinstance(state.opt_state["discriminator"][0], optax.ScaleByRmsState)
  assert adam_count(state.opt_state["generator"]) == 0


def test_weight_clipping_bounds_d_and_keeps_pruned_entries_zero(tiny_family):
  fam = tiny(tiny_family, clip=0.01, loss_kind="wasserstein", n_critic=2)
  state, m = pruned_start(fam)
  state, _ = jax.jit(fam.train_step)(state, m, images(), jax.random.key(1))
  d = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params["discriminator"])])
  assert np.max(np.abs(d)) <= 0.01 and np.max(np.abs(d)) == pytest.approx(0.01)
  assert np.all(pruned_entries(state.params, m) == 0.0)
  g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params["generator"])])
  assert np.max(np.abs(g)) > 0.5                       # G is not clipped (its init is wider)


def test_wasserstein_with_gradient_penalty_trains_masked(tiny_family):
  plain = tiny(tiny_family, loss_kind="wasserstein")
  penalised = tiny(tiny_family, loss_kind="wasserstein", gradient_penalty=10.0)
  state, m = pruned_start(plain)
  x, key = images(), jax.random.key(1)
  _, base = jax.jit(plain.train_step)(state, m, x, key)
  after, metrics = jax.jit(penalised.train_step)(state, m, x, key)
  assert float(metrics["d_loss"]) > float(base["d_loss"])        # the penalty is added, >= 0
  assert np.all(pruned_entries(after.params, m) == 0.0)
  assert penalised.train_passes["discriminator"] == 5
  assert flops.train_step(penalised) > flops.train_step(plain)


@pytest.mark.parametrize("kw, message", [
    (dict(n_critic=0), "train.n_critic must be >= 1"),
    (dict(clip=-1.0), "train.clip and loss.gradient_penalty must be >= 0"),
    (dict(loss_kind="least_squares"), "unknown GAN loss kind 'least_squares'"),
])
def test_bad_gan_settings(kw, message):
  with pytest.raises(ValueError, match=message):
    tiny("dcgan", **kw)

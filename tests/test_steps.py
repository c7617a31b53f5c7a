"""Tests for lth_jax.steps: fused steps equal single steps, masks hold, no recompilation."""
import functools
import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, pruning, steps

OPT = dict(lr=1e-3, b1=0.5, b2=0.999)


def family(name, **kw):
  return steps.make_family(name, channels=1, image_size=32, width=8,
                           z_dim=16, optimizer=OPT, batch_size=8, **kw)


def images(n=64, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randint(0, 256, (n, 32, 32, 1)), jnp.uint8)


@pytest.mark.parametrize("name,loop", [("dcgan", "unrolled"), ("dcgan", "rolled")])
def test_fused_steps_equal_single_steps(name, loop):
  """Two steps in one call, unrolled or as a rolled ``lax.scan`` (the GPU/TPU default), equal two
  single-step calls within float tolerance (XLA fuses the steps differently: last bits)."""
  fam = family(name)
  state = fam.init(jax.random.key(0))
  m = pruning.magnitude(state.params, steps.dense_masks(fam, state.params,
                                                        {p: True for p in fam.parts}), 0.5)
  state = state._replace(params=masks.apply(state.params, m))
  x, key = images(), jax.random.key(1)
  fused, fused_metrics = jax.jit(steps.multi_step(fam, 2, loop))(state, m, x, key)
  single = jax.jit(steps.multi_step(fam, 1))
  s, per_step = state, []
  for _ in range(2):
    s, metrics = single(s, m, x, key)
    per_step.append(metrics)
  assert int(fused.step) == int(s.step) == 2
  chex.assert_trees_all_close(fused.params, s.params, atol=1e-5, rtol=1e-5)
  chex.assert_trees_all_close(fused.batch_stats, s.batch_stats, atol=1e-5, rtol=1e-5)
  for k in per_step[0]:
    np.testing.assert_allclose(fused_metrics[k], np.mean([p[k] for p in per_step]), rtol=1e-4)
  # Pruned weights are exactly zero after training.
  for leaf_mask, leaf in zip(jax.tree.leaves(m), jax.tree.leaves(
      jax.tree.map(lambda mm, p: None if mm is None else p, m, fused.params,
                   is_leaf=lambda v: v is None))):
    assert np.all(np.asarray(leaf)[~np.asarray(leaf_mask)] == 0.0)


def test_loop_resolution_and_bad_values():
  assert steps.resolve_loop("auto", "cpu") == "unrolled"
  assert steps.resolve_loop("auto", "gpu") == steps.resolve_loop("auto", "tpu") == "rolled"
  assert steps.resolve_loop("rolled", "cpu") == "rolled"
  with pytest.raises(ValueError, match="unknown train.loop 'spiral'"):
    steps.resolve_loop("spiral")
  with pytest.raises(ValueError, match="multi_step needs loop 'unrolled' or 'rolled'"):
    steps.multi_step(family("ae"), 2, "auto")


def test_new_mask_does_not_recompile():
  fam = family("dcgan")
  state = fam.init(jax.random.key(0))
  dense = steps.dense_masks(fam, state.params, {"generator": True, "discriminator": True})
  fn = jax.jit(steps.multi_step(fam, 1))
  x, key = images(), jax.random.key(1)
  state, _ = fn(state, dense, x, key)
  m = dense
  for _ in range(2):
    m = pruning.magnitude(state.params, m, 0.2)
    state, _ = fn(state, m, x, key)
  assert fn._cache_size() == 1


def test_dense_masks_exclusions_and_switches():
  fam = family("dcgan")
  params = fam.init(jax.random.key(0)).params
  m = steps.dense_masks(fam, params, {"generator": True, "discriminator": False},
                        exclude=("generator/convt0",))
  paths = [r.path for r in masks.summary(m)]
  assert "generator/convt0/kernel" not in paths and "generator/convt1/kernel" in paths
  assert not any(p.startswith("discriminator") for p in paths)
  with pytest.raises(ValueError, match="not parts of dcgan"):
    steps.dense_masks(fam, params, {"encoder": True})
  with pytest.raises(ValueError, match="nothing to prune"):
    steps.dense_masks(fam, params, {"generator": False})


def test_unknown_family_and_bad_steps_per_call():
  with pytest.raises(ValueError, match="unknown model family"):
    family("nope")
  with pytest.raises(ValueError, match="steps_per_call"):
    steps.multi_step(family("ae"), 0)


@pytest.mark.parametrize("name", ("ae", "vae", "dcgan"))
def test_scoring_functions_are_finite(name):
  fam = family(name)
  state = fam.init(jax.random.key(0))
  batch = jnp.zeros((4, 32, 32, 1))
  assert np.isfinite(float(fam.score_loss(state.params, state.batch_stats, batch,
                                          jax.random.key(2))))
  assert float(fam.synflow_output(jax.tree.map(jnp.abs, state.params), state.batch_stats)) > 0


@pytest.mark.parametrize("name", ("ae", "vae", "dcgan"))
def test_family_channel_layout_matches_its_params(name):
  """Every group the family lists has ``size`` channels on its producer's kernel outputs, its
  consumer's kernel inputs and its BatchNorm; groups come in ``parts`` order, and every
  BatchNorm of the family belongs to one."""
  fam = family(name)
  shapes = jax.eval_shape(fam.init, jax.random.key(0))
  groups = fam.channel_groups(shapes.params)
  at = lambda tree, path: functools.reduce(operator.getitem, path.split("/"), tree)
  parts = [g.name.split("/", 1)[0] for g in groups]
  assert parts == sorted(parts, key=fam.parts.index) and set(parts) == set(fam.parts)
  for g in groups:
    assert at(shapes.params, g.name)["kernel"].shape[-1] == g.size
    assert at(shapes.params, g.consumer)["kernel"].shape[-2] == g.size
    if g.bn is not None:
      assert at(shapes.params, g.bn)["scale"].shape == at(shapes.batch_stats, g.bn)["var"].shape
      assert at(shapes.params, g.bn)["scale"].shape == (g.size,)
  scales = [p for p, _ in masks.leaves_with_paths(shapes.params) if p.endswith("/scale")]
  assert sorted(g.bn + "/scale" for g in groups if g.bn is not None) == sorted(scales)


@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_bf16_mixed_precision_keeps_fp32_state_and_exact_zeros(name):
  """train.precision='bf16': bf16 convolutions in the step, fp32 params, optimizer state and
  BatchNorm statistics; pruned weights stay exactly 0; losses close to the fp32 step's."""
  kwargs = dict(channels=1, image_size=32, width=8, z_dim=16,
                optimizer=dict(lr=2e-4, b1=0.5, b2=0.999), batch_size=16)
  full, half = (steps.make_family(name, precision=p, **kwargs) for p in ("fp32", "bf16"))
  state = full.init(jax.random.key(0))
  m = pruning.magnitude(state.params, steps.dense_masks(full, state.params,
                                                        {p: True for p in full.parts}), 0.5)
  state = state._replace(params=masks.apply(state.params, m))
  x, key = images(), jax.random.key(1)
  fn = jax.jit(steps.multi_step(half, 1))
  assert "bf16" in fn.lower(state, m, x, key).as_text()
  trained, metrics = fn(state, m, x, key)
  assert {leaf.dtype for leaf in jax.tree.leaves((trained.params, trained.batch_stats))} == {
      jnp.dtype(jnp.float32)}
  assert {leaf.dtype for leaf in jax.tree.leaves(trained.opt_state)} <= {
      jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}
  for leaf_mask, leaf in zip(jax.tree.leaves(m), jax.tree.leaves(
      jax.tree.map(lambda mm, p: None if mm is None else p, m, trained.params,
                   is_leaf=lambda v: v is None))):
    assert np.all(np.asarray(leaf)[~np.asarray(leaf_mask)] == 0.0)
  if name == "dcgan":    # one fp32 reference compile is enough to bound the bf16 losses
    _, reference = jax.jit(steps.multi_step(full, 1))(state, m, x, key)
    for k in reference:
      np.testing.assert_allclose(metrics[k], reference[k], rtol=0.05, atol=0.02)
  with pytest.raises(ValueError, match="unknown train.precision 'fp8'"):
    steps.make_family(name, precision="fp8", **kwargs)

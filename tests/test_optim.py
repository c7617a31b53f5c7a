"""Tests for lth_jax.optim: no leakage into pruned weights, zero state, no recompilation."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lth_jax import masks, optim, pruning


def setup(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  params = {"w": jax.random.normal(k1, (16, 8)), "b": jnp.zeros(8),
            "v": jax.random.normal(k2, (8, 4))}
  m = pruning.magnitude(params, masks.init(params), 0.5)
  return masks.apply(params, m), m


def loss(params, x):
  return jnp.mean((jnp.tanh(x @ params["w"] + params["b"]) @ params["v"] - 1.0) ** 2)


@pytest.mark.parametrize("inner", [
    optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1), optax.sgd(1e-2, momentum=0.9),
    optax.chain(optax.add_decayed_weights(1e-2), optax.adam(1e-2))])
def test_pruned_entries_stay_exactly_zero(inner):
  params, m = setup()
  tx = optim.with_masks(inner)
  state = tx.init(params)

  @jax.jit
  def step(params, state, m, x):
    g = jax.grad(loss)(params, x)
    u, state = tx.update(g, state, params, masks=m)
    return optim.apply_updates(params, u, m), state

  x = jax.random.normal(jax.random.key(1), (32, 16))
  for _ in range(100):
    params, state = step(params, state, m, x)
  for name in ("w", "v"):
    assert np.all(np.asarray(params[name])[~np.asarray(m[name])] == 0.0)
    assert np.any(np.asarray(params[name])[np.asarray(m[name])] != 0.0)
  # Per-parameter optimizer state of pruned entries is zero.
  def check(x, mm):
    if mm is not True:
      assert np.all(np.asarray(x)[~np.asarray(mm)] == 0.0)
    return x
  optax.tree_utils.tree_map_params(inner, check, state, optim._full(m))


def test_mask_state_clears_rewound_moments():
  params, m = setup()
  dense = masks.init(params)
  inner = optax.adam(1e-2)
  tx = optim.with_masks(inner)
  state = tx.init(params)
  g = jax.grad(loss)(params, jnp.ones((4, 16)))
  _, state = tx.update(g, state, params, masks=dense)
  assert float(jnp.abs(state[0].mu["w"]).sum()) > 0
  cleared = optim.mask_state(inner, state, m)
  assert np.all(np.asarray(cleared[0].mu["w"])[~np.asarray(m["w"])] == 0)
  chex.assert_trees_all_equal(cleared[0].mu["b"], state[0].mu["b"])


def test_new_mask_does_not_recompile():
  params, m = setup()
  tx = optim.with_masks(optax.adam(1e-3))
  state = tx.init(params)
  traces = []

  @jax.jit
  def step(params, state, m):
    traces.append(1)
    g = jax.grad(loss)(params, jnp.ones((4, 16)))
    u, state = tx.update(g, state, params, masks=m)
    return optim.apply_updates(params, u, m), state

  params, state = step(params, state, m)
  for _ in range(3):
    m = pruning.magnitude(params, m, 0.2)
    params, state = step(params, state, m)
  assert len(traces) == 1
  assert step._cache_size() == 1


def test_update_requires_masks():
  params, _ = setup()
  tx = optim.with_masks(optax.adam(1e-3))
  with pytest.raises(ValueError, match="masks"):
    tx.update(params, tx.init(params), params)

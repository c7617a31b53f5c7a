"""Tests for lth_jax.pruning: exact counts, global vs layerwise, ties, random, scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lth_jax import masks, pruning


def params_tree(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {"g": {"first": {"kernel": jax.random.normal(k1, (10, 50))},
                "conv": {"kernel": 3.0 * jax.random.normal(k2, (3, 3, 8, 16)),
                         "bias": jnp.ones(16)}},
          "d": {"kernel": 0.1 * jax.random.normal(k3, (64, 32))}}


def kept_per_leaf(m):
  return {r.path: r.kept for r in masks.summary(m)}


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_imp_rounds_keep_point_eight_to_the_k(scope):
  params = params_tree()
  m = masks.init(params)
  _, total = masks.counts(m)
  sizes = {r.path: r.total for r in masks.summary(m)}
  for k in range(1, 8):
    before = int(masks.counts(m)[0])
    m = pruning.magnitude(params, m, 0.2, scope=scope)
    kept = int(masks.counts(m)[0])
    if scope == "global":
      assert before - kept == round(0.2 * before)
      # Each round rounds by <= 0.5 and earlier errors shrink by 0.8: |error| < 0.5 / 0.2.
      assert abs(kept - total * 0.8 ** k) < 2.5
    else:
      for path, n in kept_per_leaf(m).items():
        assert abs(n - sizes[path] * 0.8 ** k) < 2.5


def test_global_threshold_prunes_small_layer_first():
  params = params_tree()
  m = pruning.magnitude(params, masks.init(params), 0.3, scope="global")
  per = {r.path: r.sparsity for r in masks.summary(m)}
  assert per["d/kernel"] > 0.5 and per["g/conv/kernel"] < 0.05  # d has 30x smaller weights
  layer = pruning.magnitude(params, masks.init(params), 0.3, scope="layerwise")
  for r in masks.summary(layer):
    assert r.sparsity == pytest.approx(0.3, abs=1.0 / r.total)


def test_global_threshold_is_a_threshold():
  params = params_tree()
  m = pruning.magnitude(params, masks.init(params), 0.5)
  kept_vals = jnp.concatenate([jnp.abs(p[k]).ravel() for p, k in
                               [(params["g"]["first"], "kernel")]] + [])
  del kept_vals
  mags = [(jnp.abs(params["g"]["first"]["kernel"]), m["g"]["first"]["kernel"]),
          (jnp.abs(params["g"]["conv"]["kernel"]), m["g"]["conv"]["kernel"]),
          (jnp.abs(params["d"]["kernel"]), m["d"]["kernel"])]
  max_pruned = max(float(jnp.max(jnp.where(k, -1, a))) for a, k in mags)
  min_kept = min(float(jnp.min(jnp.where(k, a, jnp.inf))) for a, k in mags)
  assert max_pruned <= min_kept


def test_pruned_stay_pruned_even_if_large():
  params = params_tree()
  m = masks.init(params)
  m["d"]["kernel"] = m["d"]["kernel"].at[0, 0].set(False)
  params["d"]["kernel"] = params["d"]["kernel"].at[0, 0].set(1e6)
  new = pruning.magnitude(params, m, 0.2)
  assert not bool(new["d"]["kernel"][0, 0])


def test_ties_broken_by_position():
  params = {"a": jnp.ones((4, 4)), "b": jnp.ones((2, 8))}
  m = pruning.magnitude(params, masks.init(params), 0.25)
  # 8 of 32 equal weights removed: the first 8 in flattening order (all of leaf a's first rows).
  assert not bool(jnp.any(m["a"][:2])) and bool(jnp.all(m["a"][2:])) and bool(jnp.all(m["b"]))
  again = pruning.magnitude(params, masks.init(params), 0.25)
  np.testing.assert_array_equal(m["a"], again["a"])


def test_none_leaves_and_exclusions():
  params = params_tree()
  m = masks.init(params, prunable=lambda p, x: x.ndim >= 2 and not p.startswith("g/first"))
  new = pruning.magnitude(params, m, 0.5)
  assert new["g"]["first"]["kernel"] is None and new["g"]["conv"]["bias"] is None


def test_random_pruning_rate_like_and_determinism():
  params = params_tree()
  m = masks.init(params)
  key = jax.random.key(7)
  r1 = pruning.random(key, m, 0.2)
  r2 = pruning.random(key, m, 0.2)
  for a, b in zip(jax.tree.leaves(r1), jax.tree.leaves(r2)):
    np.testing.assert_array_equal(a, b)
  assert int(masks.counts(r1)[0]) == masks.counts(m)[1] - round(0.2 * masks.counts(m)[1])
  ticket = pruning.magnitude(params, pruning.magnitude(params, m, 0.2), 0.2)
  like = pruning.random(jax.random.key(1), m, like=ticket)
  assert kept_per_leaf(like) == kept_per_leaf(ticket)
  assert float(masks.distance(like, ticket)) > 0.05


def test_to_sparsity_and_remove_lowest():
  scores = {"a": jnp.arange(10.0).reshape(2, 5), "b": -jnp.arange(6.0)}
  m = {"a": jnp.ones((2, 5), bool), "b": jnp.ones(6, bool)}
  out = pruning.to_sparsity(scores, m, 0.5)
  assert int(masks.counts(out)[0]) == 8
  # -5..-1 go first, then the tie at 0 (a[0] before b[0] in flattening order), then a[1].
  assert not bool(jnp.any(out["b"]))
  np.testing.assert_array_equal(out["a"].ravel(), [False, False] + [True] * 8)
  lw = pruning.to_sparsity(scores, m, 0.5, scope="layerwise")
  assert [int(lw["a"].sum()), int(lw["b"].sum())] == [5, 3]


def test_jit_and_traced_rate():
  params = params_tree()
  m = masks.init(params)
  f = jax.jit(lambda p, m, r: pruning.magnitude(p, m, r))
  a = f(params, m, 0.2)
  b = pruning.magnitude(params, m, 0.2)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("kwargs,msg", [(dict(rate=1.5), "rate"),
                                        (dict(rate=0.2, scope="row"), "scope")])
def test_bad_arguments(kwargs, msg):
  params = params_tree()
  with pytest.raises(ValueError, match=msg):
    pruning.magnitude(params, masks.init(params), **kwargs)

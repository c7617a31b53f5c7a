"""Tests for lth_jax.early_bird and its pieces (early_bird_detection, channels): drawing rule,
channel pruning, small = masked big, binary smoke."""
import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lth_jax import channels, configs, early_bird, masks, meshes, parallel, report, steps
from lth_jax import config_fields, validation
from lth_jax import early_bird_detection as detection
from tests.conftest import needs_fmnist, run_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT = dict(lr=1e-3, b1=0.5, b2=0.999)


def family(name, image_size=16, **kw):
  """A small family; 16x16 images keep compilation short (2 hidden layers per network)."""
  return steps.make_family(name, channels=1, image_size=image_size, width=8, z_dim=16,
                           optimizer=OPT, batch_size=8, **kw)


def first_k(k, n=20):
  return {"m": np.arange(n) < k}


# ------------------------------------------------------------------------------- detection
def test_detector_draws_when_window_is_within_epsilon():
  det = detection.Detector(window=3, epsilon=0.1)
  # Kept counts out of 20: each step changes 2 entries (distance 0.1) until 16, then stays.
  kept = [8, 10, 12, 14, 16, 16, 16]
  drawn = [det.update(10 * (i + 1), first_k(k)) for i, k in enumerate(kept)]
  distances = [h["max_distance"] for h in det.history]
  assert distances[:2] == [None, None]
  np.testing.assert_allclose(distances[2:], [0.2, 0.2, 0.2, 0.1, 0.0])
  # Window at step 60 holds 14, 16, 16: max distance 0.1 <= epsilon -> drawn there, not later.
  assert drawn == [False] * 5 + [True, True]
  assert det.drawn_step == 60
  np.testing.assert_array_equal(det.drawn_mask["m"], first_k(16)["m"])


def test_detector_compares_with_the_newest_mask_only():
  det = detection.Detector(window=3, epsilon=0.1)
  # 0.1 between neighbours but 0.15 from the oldest to the newest: not drawn.
  for step, k in ((1, 10), (2, 12), (3, 13)):
    assert not det.update(step, first_k(k))
  assert det.history[-1]["max_distance"] == pytest.approx(0.15)
  assert det.update(4, first_k(13))


@pytest.mark.parametrize("kwargs", [dict(window=1), dict(epsilon=-0.1), dict(epsilon=1.5)])
def test_detector_rejects_bad_settings(kwargs):
  with pytest.raises(ValueError, match="early_bird"):
    detection.Detector(**kwargs)


def _counting_family():
  """A Family whose one parameter counts steps (its train step is trivial to compile)."""
  def train_step(state, m, images, key):
    del m, images, key
    w = state.params["w"] + 1.0
    return state._replace(step=state.step + 1, params={"w": w}), {"loss": w}
  return steps.Family("count", ("a", "b"), {}, {}, None, train_step, None, None, None, None, 1)


def _count_group(calls):
  """``search``'s train_group for the counting family; records (tickets, until_step) per call."""
  runner = parallel.TicketRunner(_counting_family(), execution="sequential", steps_per_call=2,
                                 mesh=meshes.make_mesh(devices=jax.devices()[:1]))

  def train_group(indices, states, until_step):
    calls.append((list(indices), until_step))
    return runner.train(states, [None] * len(states), jnp.zeros((1, 1), jnp.uint8),
                        [jax.random.key(0)] * len(states), until_step=until_step)
  return train_group


def _count_state(start=0.0):
  return steps.TrainState(jnp.zeros((), jnp.int32), {"w": jnp.asarray(start)}, {}, {})


@pytest.mark.parametrize("interval, window, expected", [(1, 3, 11), (2, 3, 14), (2, 2, 12)])
def test_search_runs_chunks_until_drawn(interval, window, expected):
  # Mask after w steps: the first min(2w, 20) of 20 entries, so 0.1 changes per step until 10.
  mask_fn = lambda s: {"m": jnp.arange(20) < jnp.minimum(2 * s.params["w"], 20)}
  [result] = detection.search(_count_group([]), [_count_state()], mask_fn=mask_fn,
                              detectors=[detection.Detector(window=window, epsilon=0.1)],
                              interval=interval, max_steps=100)
  assert result.drawn and result.step == expected == int(result.state.step)
  assert [h["step"] for h in result.history] == list(range(interval, expected + 1, interval))


def test_search_without_draw_returns_newest_mask_at_max_steps():
  mask_fn = lambda s: {"m": jnp.arange(20) < 2 * s.params["w"]}
  [result] = detection.search(_count_group([]), [_count_state()], mask_fn=mask_fn,
                              detectors=[detection.Detector(window=3, epsilon=0.0)],
                              interval=3, max_steps=7)
  assert not result.drawn and result.step == 7
  assert int(np.sum(result.mask["m"])) == 14


def test_search_of_several_tickets_drops_each_at_its_draw():
  # Ticket 1 starts 6 "steps" ahead (w = 6): its masks stop changing 6 steps earlier.
  mask_fn = lambda s: {"m": jnp.arange(20) < jnp.minimum(2 * s.params["w"], 20)}
  calls = []
  results = detection.search(_count_group(calls), [_count_state(0.0), _count_state(6.0)],
                             mask_fn=mask_fn,
                             detectors=[detection.Detector(window=3, epsilon=0.1)
                                        for _ in range(2)], interval=1, max_steps=100)
  assert [r.step for r in results] == [11, 5] and all(r.drawn for r in results)
  assert [int(r.state.step) for r in results] == [11, 5]
  assert calls[:5] == [([0, 1], k) for k in range(1, 6)] and calls[5] == ([0], 6)
  assert results[0].seconds > results[1].seconds > 0


def _drifting_masks(state):
  """Masks of 41 prunable entries (and a non-prunable leaf) after w = params['w'] steps: the
  first min(2w, 20) of 20 and the first min(3w, 21) of 3x7 are kept; they settle at w = 10."""
  w = state.params["w"]
  return {"a": {"kernel": jnp.arange(20) < jnp.minimum(2 * w, 20), "bias": None},
          "b": jnp.arange(21).reshape(3, 7) < jnp.minimum(3 * w, 21)}


def _host_reference(checks, window, epsilon):
  """The former host-side check on host copies of the masks: ``float(masks.distance)`` of every
  older mask of the window to the newest. ``checks``: [(step, mask)]; -> (draw step, distances)."""
  drawn, distances = None, []
  for k, (step, mask) in enumerate(checks):
    distance = None
    if k + 1 >= window:
      distance = max(float(masks.distance(old, mask)) for _, old in checks[k + 1 - window:k])
      if distance <= epsilon + detection._ROUNDING and drawn is None:
        drawn = step
    distances.append(distance)
  return drawn, distances


def test_search_checks_on_the_device_equal_the_host_reference():
  # Ticket 1 starts 5 "steps" ahead: windows of 3 within 0.1 (4/41) at steps 9 and 4. Before,
  # 10/41 and 7/41: values that XLA's x * (1/41) for x / 41 rounds differently in float32.
  trained = {0: [], 1: []}
  group = _count_group([])

  def train_group(indices, states, until_step):
    out = group(indices, states, until_step)
    for i, state in zip(indices, out):
      trained[i].append((until_step, jax.device_get(state)))
    return out

  results = detection.search(train_group, [_count_state(0.0), _count_state(5.0)],
                             mask_fn=_drifting_masks,
                             detectors=[detection.Detector(window=3, epsilon=0.1)
                                        for _ in range(2)], interval=1, max_steps=100)
  assert [(r.drawn, r.step) for r in results] == [(True, 9), (True, 4)]
  for i, result in enumerate(results):
    checks = [(step, jax.device_get(_drifting_masks(state))) for step, state in trained[i]]
    drawn, distances = _host_reference(checks, window=3, epsilon=0.1)
    assert result.step == drawn
    assert [h["max_distance"] for h in result.history] == distances     # bit for bit
    assert [h["step"] for h in result.history] == [step for step, _ in checks]
    chex.assert_trees_all_equal(jax.device_get(result.mask), checks[-1][1])


def test_search_keeps_masks_on_the_device_and_fetches_one_scalar_per_ticket(monkeypatch):
  """Between two trainings the only transfer to the host is one ``jax.device_get`` of an int32
  scalar per active ticket (implicit transfers are refused by the guard on accelerators; XLA CPU
  does not enforce it); ``mask_fn`` is traced twice in all (shapes, then the jitted check)."""
  fetches, traces, calls, phase = [], [], [], ["start"]
  device_get = jax.device_get

  def counting_get(tree):
    if phase[0] == "check":
      fetches.append([np.shape(x) for x in jax.tree.leaves(tree)])
    return device_get(tree)

  def mask_fn(state):
    traces.append(state)
    return _drifting_masks(state)

  group = _count_group(calls)

  def train_group(indices, states, until_step):
    phase[0] = "train"
    with jax.transfer_guard("allow"):
      out = group(indices, states, until_step)
    phase[0] = "check"
    return out

  monkeypatch.setattr(jax, "device_get", counting_get)
  detectors = [detection.Detector(window=3, epsilon=0.1) for _ in range(2)]
  host_state = lambda w: steps.TrainState(np.int32(0), {"w": np.float32(w)}, {}, {})
  with jax.transfer_guard_device_to_host("disallow"):
    results = detection.search(train_group, [host_state(0.0), host_state(5.0)], mask_fn=mask_fn,
                               detectors=detectors, interval=1, max_steps=100)
  assert [r.step for r in results] == [9, 4]
  assert fetches == [[()] * len(indices) for indices, _ in calls] and len(calls) == 9
  assert len(traces) == 2
  for result, detector in zip(results, detectors):
    assert isinstance(result.mask["b"], jax.Array) and isinstance(detector.ring["b"], jax.Array)
    assert detector.ring["b"].shape == (3, 3, 7)


@pytest.mark.parametrize("field, value, message", [
    ("kind", "channels", "unknown early_bird.kind"), ("sparsity", 1.0, "early_bird.sparsity"),
    ("window", 1, "early_bird.window"), ("interval", 0, "early_bird.interval"),
    ("max_search_steps", 99, "exceeds train.steps")])
def test_validate_names_the_bad_field(field, value, message):
  config = configs.get_config("vae", "fashion_mnist", "smoke")
  config.early_bird[field] = value
  with pytest.raises(ValueError, match=message):
    validation.check(config, "early_bird")


# ------------------------------------------------------------------------ pruning pieces
def test_magnitude_masks_hit_the_sparsity():
  rng = np.random.RandomState(0)
  params = {"a": {"kernel": jnp.asarray(rng.normal(size=(10, 10)))},
            "b": {"kernel": jnp.asarray(rng.normal(size=(5, 4))), "bias": jnp.ones(4)}}
  m = detection.magnitude_masks(params, masks.init(params), 0.7)
  assert m["b"]["bias"] is None
  assert float(masks.sparsity(m)) == pytest.approx(0.7)
  kept, pruned = [], []
  for path, k in masks.leaves_with_paths(m):
    if k is not None:
      w = np.abs(np.asarray(params[path.split("/")[0]]["kernel"]))
      kept.append(w[np.asarray(k)])
      pruned.append(w[~np.asarray(k)])
  assert np.concatenate(kept).min() > np.concatenate(pruned).max()


def random_variables(fam, seed=1, kernel_std=0.1):
  """Random params and BatchNorm statistics shaped like ``fam``'s (no init compile needed)."""
  shapes = jax.eval_shape(fam.init, jax.random.key(0))
  rng = np.random.RandomState(seed)

  def draw(path, x):
    name = path[-1].key
    if name in ("scale", "var"):
      value = rng.uniform(0.5, 1.5, x.shape)
    elif name == "bias":                  # mostly active units after ReLU
      value = rng.uniform(0.0, 0.5, x.shape)
    else:
      value = rng.normal(0, kernel_std if name == "kernel" else 0.3, x.shape)
    return jnp.asarray(value, jnp.float32)

  return (jax.tree_util.tree_map_with_path(draw, shapes.params),
          jax.tree_util.tree_map_with_path(draw, shapes.batch_stats))


def test_channel_masks_use_one_global_threshold_and_keep_a_channel_per_layer():
  rng = np.random.RandomState(0)
  # G's bn1 (8 channels) holds the 8 smallest |γ| of all 40 BN channels: the global threshold at
  # this sparsity would empty it, so it keeps its single largest channel.
  scales = {"generator/bn0": 1.0 + rng.rand(16), "generator/bn1": 0.01 * np.arange(1, 9),
            "discriminator/body/bn1": -(1.0 + rng.rand(16))}   # |γ| counts, not γ
  fam = family("dcgan")
  params, stats = random_variables(fam)
  for path, values in scales.items():
    params_node = params
    for k in path.split("/"):
      params_node = params_node[k]
    params_node["scale"] = jnp.asarray(values, jnp.float32)
  groups = channels.family_groups(fam, params, fam.parts)
  cm = channels.channel_masks(params, stats, groups, 0.5)
  bn_groups = [g for g in groups if g.bn]
  n_bn = sum(g.size for g in bn_groups)
  all_scores = np.concatenate([np.abs(scales[g.bn]) for g in bn_groups])
  threshold = np.sort(all_scores)[round(0.5 * n_bn)]
  for g in bn_groups:
    expected = np.abs(scales[g.bn]) >= threshold
    if g.bn == "generator/bn1":
      expected = np.arange(8) == 7
    np.testing.assert_array_equal(np.asarray(cm[g.name]), expected, err_msg=g.name)
  # D's conv0 (no BN) keeps the kept fraction of bn1, at least one channel.
  d_bn1 = np.asarray(cm["discriminator/body/conv1"])
  assert int(np.sum(cm["discriminator/body/conv0"])) == max(1, round(d_bn1.mean() * 8))
  widths = channels.channel_widths(cm, groups)
  assert widths["generator"][1] == 1 and len(widths["discriminator"]) == 2


def test_channel_masks_per_part_prune_each_part_to_its_own_fraction():
  fam = family("dcgan")
  params, stats = random_variables(fam)
  groups = channels.family_groups(fam, params, fam.parts)
  cm = channels.channel_masks(params, stats, groups, {"generator": 0.25, "discriminator": 0.75})
  for part, fraction in (("generator", 0.25), ("discriminator", 0.75)):
    bn = [g for g in groups if g.bn and g.name.startswith(part)]
    pruned = sum(int(np.sum(~np.asarray(cm[g.name]))) for g in bn)
    assert pruned == round(fraction * sum(g.size for g in bn)), part
    kept_min = min(float(np.abs(params_at(params, g.bn)["scale"])[np.asarray(cm[g.name])].min())
                   for g in bn)
    pruned_max = max((float(np.abs(params_at(params, g.bn)["scale"])[~np.asarray(cm[g.name])]
                            .max()) for g in bn if not np.all(cm[g.name])), default=-1.0)
    assert kept_min >= pruned_max, part      # one threshold within each part
  with pytest.raises(ValueError, match="no sparsity for the pruned part"):
    channels.channel_masks(params, stats, groups, {"generator": 0.5})


def test_family_groups_refuse_a_family_without_channel_layout():
  fam = family("dcgan")
  params = jax.eval_shape(fam.init, jax.random.key(0)).params
  assert channels.family_groups(fam, params, ("discriminator",)) == (
      fam.channel_groups(params)[2:])
  with pytest.raises(ValueError, match="'dcgan' has no channel layout.*use unstructured"):
    channels.family_groups(fam._replace(channel_groups=None), params, fam.parts)
  with pytest.raises(ValueError, match=r"\['encoder'\] are not parts of dcgan"):
    channels.family_groups(fam, params, ("encoder",))


def test_part_sparsity_of_a_part_without_batchnorm_is_refused_before_any_work(tmp_path):
  config = configs.get_config("resnet_dcgan", "fashion_mnist", "smoke", binary="early_bird")
  config.early_bird.part_sparsity = "discriminator=0.5"      # the ResNet critic has no BN
  with pytest.raises(ValueError, match="names 'discriminator', which has no BatchNorm channels "
                                       "to score in resnet_dcgan"):
    early_bird.run(config, str(tmp_path / "eb"))
  assert not (tmp_path / "eb").exists()


def params_at(params, path):
  for key in path.split("/"):
    params = params[key]
  return params


def test_magnitude_masks_per_part_leave_other_parts_alone():
  rng = np.random.RandomState(0)
  params = {"g": {"kernel": jnp.asarray(rng.normal(size=(10, 10)))},
            "d": {"kernel": jnp.asarray(rng.normal(size=(10, 10)))}}
  m = detection.magnitude_masks(params, masks.init(params), {"g": 0.3})
  assert float(masks.sparsity(m["g"])) == pytest.approx(0.3)
  assert bool(np.all(m["d"]["kernel"]))


@pytest.mark.parametrize("text, expected", [
    ("", 0.7), ("generator=0.6", {"generator": 0.6, "discriminator": 0.7}),
    (" generator = 0.6 , discriminator=0.9", {"generator": 0.6, "discriminator": 0.9})])
def test_part_sparsity_parses_the_config(text, expected):
  config = configs.get_config("dcgan", "fashion_mnist", "smoke")
  config.early_bird.update(sparsity=0.7, part_sparsity=text)
  assert config_fields.part_sparsity(config.early_bird, ["generator", "discriminator"]) == expected


@pytest.mark.parametrize("text, message", [
    ("generator:0.6", "is not 'part=fraction'"), ("encoder=0.5", "not a pruned part"),
    ("generator=1.5", "must be in \\(0, 1\\)"), ("generator=x", "is not 'part=fraction'")])
def test_part_sparsity_names_the_bad_entry(text, message):
  config = configs.get_config("dcgan", "fashion_mnist", "smoke")
  config.early_bird.part_sparsity = text
  with pytest.raises(ValueError, match=message):
    validation.check(config, "early_bird")


@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_small_model_equals_masked_big_model_in_eval_mode(name):
  fam = family(name)
  params, stats = random_variables(fam)
  groups = channels.family_groups(fam, params, fam.parts)
  cm = channels.channel_masks(params, stats, groups, 0.6)
  assert 0.5 < channels.channel_sparsity(cm) < 0.7
  assert any(g.bn is None for g in groups)      # the discriminator/encoder's first conv
  big = channels.mask_channels(params, cm, groups)
  small_params, small_stats = channels.slice_channels(params, stats, cm, groups)
  small = family(name, widths=channels.channel_widths(cm, groups))
  chex.assert_trees_all_equal_shapes(
      jax.eval_shape(small.init, jax.random.key(0)).params, small_params)
  x = jnp.asarray(np.random.RandomState(2).uniform(-1, 1, (4, 16, 16, 1)), jnp.float32)
  if name == "dcgan":
    def forward(f, p, s):
      images = f.generate(p, s, jax.random.key(3), 4)
      logits = f.modules["discriminator"].apply(
          {"params": p["discriminator"], "batch_stats": s["discriminator"]}, x, train=False)
      return images, logits
  else:
    forward = lambda f, p, s: (f.reconstruct(p, s, x),)
  out_big = jax.jit(lambda p, s: forward(fam, p, s))(big, stats)
  out_small = jax.jit(lambda p, s: forward(small, p, s))(small_params, small_stats)
  out_unmasked = jax.jit(lambda p, s: forward(fam, p, s))(params, stats)
  for a, b, c in zip(out_small, out_big, out_unmasked):
    assert float(jnp.std(b)) > 0.02       # not a trivially constant output
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Without switching the pruned channels off the outputs differ: the test can fail.
    assert float(jnp.max(jnp.abs(c - b))) > 1e-2


def element_masks(params, cmasks, groups):
  """Weight masks switching the pruned channels off everywhere the small model drops them:
  producer kernel outputs, bias, BatchNorm γ and β, consumer kernel inputs."""
  out = jax.tree.map(lambda x: np.ones(x.shape, bool), params)
  for g in groups:
    drop = ~np.asarray(cmasks[g.name])
    for path, axis in [(f"{g.name}/kernel", -1), (f"{g.name}/bias", 0),
                       (f"{g.consumer}/kernel", -2)] + (
                           [(f"{g.bn}/scale", 0), (f"{g.bn}/bias", 0)] if g.bn else []):
      *parents, leaf = path.split("/")
      node = out
      for key in parents:
        node = node[key]
      if leaf in node:
        index = [slice(None)] * node[leaf].ndim
        index[axis] = drop
        node[leaf][tuple(index)] = False
  return jax.tree.map(jnp.asarray, out)


@pytest.mark.parametrize("name", ["dcgan", "vae"])
def test_small_model_trains_like_the_masked_big_model(name):
  """Sliced params, statistics and Adam state: a few train steps of the small model equal the
  masked big model's steps, sliced; with a fresh optimizer they would not."""
  fam = family(name)
  params, stats = random_variables(fam)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, stats,
                           steps.fresh_opt_state(fam, params))
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (16, 16, 16, 1)), jnp.uint8)
  dense = steps.dense_masks(fam, params, {p: True for p in fam.parts})
  big_steps = jax.jit(steps.multi_step(fam, 2))      # one program per model, compiled once
  state, _ = big_steps(state, dense, images, jax.random.key(1))
  groups = channels.family_groups(fam, state.params, fam.parts)
  cm = channels.channel_masks(state.params, state.batch_stats, groups, 0.5)
  emasks = steps.dense_masks(fam, params, {p: True for p in fam.parts})
  emasks = jax.tree.map(lambda d, e: None if d is None else e, emasks,
                        element_masks(state.params, cm, groups), is_leaf=lambda x: x is None)
  big = steps.TrainState(state.step, masks.apply(state.params, emasks), state.batch_stats,
                         steps.mask_opt_state(fam, state.opt_state, emasks))
  small_params, small_stats = channels.slice_channels(state.params, state.batch_stats, cm,
                                                      groups)
  small_fam = family(name, widths=channels.channel_widths(cm, groups))
  sliced_opt = channels.slice_opt_state(fam, state.opt_state, state.params, cm, groups)
  small = steps.TrainState(state.step, small_params, small_stats, sliced_opt)
  small_dense = steps.dense_masks(small_fam, small_params, {p: True for p in fam.parts})
  key = jax.random.key(2)
  small_steps = jax.jit(steps.multi_step(small_fam, 2))
  big, _ = big_steps(big, emasks, images, key)
  small_new, _ = small_steps(small, small_dense, images, key)
  expected = channels.slice_channels(big.params, big.batch_stats, cm, groups)
  chex.assert_trees_all_close((small_new.params, small_new.batch_stats), expected,
                              rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(
      small_new.opt_state, channels.slice_opt_state(fam, big.opt_state, big.params, cm, groups),
      rtol=5e-4, atol=1e-6)   # Adam moments of other-shaped convs: float32 sums reordered
  fresh = steps.TrainState(state.step, small_params, small_stats,
                           steps.fresh_opt_state(small_fam, small_params))
  fresh, _ = small_steps(fresh, small_dense, images, key)
  gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), fresh.params, expected[0])
  assert max(jax.tree.leaves(gap)) > 1e-4


@pytest.mark.parametrize("name", ["dcgan", "ae"])
def test_bn_l1_pushes_every_batchnorm_scale_down(name):
  """First Adam step moves each entry by -lr * sign(grad); a huge λ makes sign(grad) = sign(γ)."""
  fam = family(name, bn_l1=1e4)
  params, stats = random_variables(fam, kernel_std=0.02)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, stats,
                           steps.fresh_opt_state(fam, params))
  dense = steps.dense_masks(fam, state.params, {p: True for p in fam.parts})
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (16, 16, 16, 1)), jnp.uint8)
  new, _ = jax.jit(steps.multi_step(fam, 1))(state, dense, images, jax.random.key(1))
  flat_old = dict(masks.leaves_with_paths(state.params))
  flat_new = dict(masks.leaves_with_paths(new.params))
  scales = [p for p in flat_old if p.endswith("/scale")]
  assert {p.split("/")[0] for p in scales} == set(fam.parts)
  for p in scales:
    np.testing.assert_allclose(flat_new[p] - flat_old[p], -OPT["lr"], rtol=1e-3, err_msg=p)
  offsets = np.concatenate([np.sign(flat_new[p.replace("scale", "bias")]
                                    - flat_old[p.replace("scale", "bias")]) for p in scales])
  assert (offsets > 0).any() and (offsets < 0).any()    # β is not penalised


def test_bn_l1_rejects_unknown_parts_and_negative_weights():
  with pytest.raises(ValueError, match="not parts"):
    family("vae", bn_l1={"generator": 1e-4})
  with pytest.raises(ValueError, match=">= 0"):
    family("vae", bn_l1=-1.0)


# ---------------------------------------------------------------------------------- binary
@needs_fmnist
def test_binary_smoke_run_writes_reports(tmp_path):
  """Structured search on the AE (the cheapest family to compile); GAN/VAE pieces are above."""
  workdir = tmp_path / "eb"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "early_bird.py"),
         f"--config={ROOT}/experiments/configs/ae_fmnist.py:smoke", f"--workdir={workdir}",
         "--config.train.steps_per_call=1", "--config.early_bird.scratch_baseline=True",
         "--config.early_bird.imp_levels=1"]
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "JAX_THREEFRY_PARTITIONABLE": "0"})
  assert out.returncode == 0, out.stderr[-3000:]
  ran = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  assert run_outputs(workdir) == set(early_bird.planned_outputs(ran))
  for name in ("config.json", "results.csv", "summary.md", "samples_dense.png",
               "samples_ticket.png", "search_seed0/mask.npz", "search_seed0/search.json"):
    assert (workdir / name).exists(), name
  with open(workdir / "search_seed0" / "search.json") as f:
    search = json.load(f)
  with open(workdir / "ticket_seed0" / "metrics.json") as f:
    ticket = json.load(f)
  assert 0 < search["eb_step"] <= 6 and search["history"][-1]["step"] == search["eb_step"]
  assert ticket["start_step"] == search["eb_step"] and ticket["steps"] == 6 - search["eb_step"]
  assert 0.6 < ticket["sparsity"] < 0.8
  rows = {r["run"]: r for r in report.read_csv(workdir / "results.csv")}
  assert set(rows) == {"dense", "eb_search", "eb_ticket", "eb_total", "scratch", "imp"}
  total = rows["eb_total"]
  assert total["train_flops"] == pytest.approx(rows["eb_search"]["train_flops"]
                                               + rows["eb_ticket"]["train_flops"])
  assert total["flops_vs_dense"] == pytest.approx(total["train_flops"]
                                                  / rows["dense"]["train_flops"])
  assert rows["eb_ticket"]["step_flops"] < 0.5 * rows["dense"]["step_flops"]
  # The ticket's widths from a new init, trained for all steps; IMP: dense + 1 level.
  assert rows["scratch"]["steps"] == 6 and rows["scratch"]["widths"] == rows["eb_ticket"]["widths"]
  assert rows["scratch"]["step_flops"] == rows["eb_ticket"]["step_flops"]
  assert (workdir / "samples_scratch.png").exists() and (workdir / "imp" / "level_01").is_dir()
  imp = rows["imp"]
  assert imp["levels"] == 1 and imp["sparsity"] == pytest.approx(0.2, abs=0.01)
  assert imp["steps"] == 6 + (6 - 2)                # rewind to step 2 (smoke preset)
  assert imp["train_flops"] == pytest.approx(imp["steps"] * rows["dense"]["step_flops"])
  assert imp["metric_vs_dense"] == pytest.approx(imp["recon_mse"] / rows["dense"]["recon_mse"])
  summary = (workdir / "summary.md").read_text()
  assert "| eb_ticket |" in summary and "fewer" in summary and "Ticket drawn at step" in summary
  assert "new init" in summary and "IMP to level 1, sparsity" in summary


@needs_fmnist
def test_seeds_run_together_equal_each_seed_alone(tmp_path):
  """Two seeds through the ticket runner: seed 1's search, mask and ticket are those of seed 1
  run alone (bit-identical: one device, tickets one after another)."""
  def run(seeds, name):
    config = configs.get_config("ae", "fashion_mnist", "smoke")
    config.train.steps_per_call = 1
    config.tickets.seeds = seeds
    config.early_bird.update(dense_baseline=False, kind="unstructured", sparsity=0.5)
    return early_bird.run(config, str(tmp_path / name)), tmp_path / name

  both, both_dir = run((0, 1), "both")
  alone, alone_dir = run((1,), "alone")
  pick = lambda rows, seed: {r["run"]: r for r in rows if r["seed"] == seed}
  assert set(pick(both, 0)) == set(pick(both, 1)) == {"eb_search", "eb_ticket", "eb_total"}
  for run_name in ("eb_search", "eb_ticket"):
    a, b = pick(both, 1)[run_name], pick(alone, 1)[run_name]
    for key in ("steps", "sparsity", "recon_mse", "eb_step"):
      assert a.get(key) == b.get(key), (run_name, key)
  history = lambda d: json.loads((d / "search_seed1" / "search.json").read_text())["history"]
  assert history(both_dir) == history(alone_dir) and len(history(alone_dir)) >= 2
  chex.assert_trees_all_equal(masks.load(both_dir / "search_seed1" / "mask.npz"),
                              masks.load(alone_dir / "search_seed1" / "mask.npz"))
  assert float(masks.distance(masks.load(both_dir / "search_seed0" / "mask.npz"),
                              masks.load(both_dir / "search_seed1" / "mask.npz"))) > 0
  summary = (both_dir / "summary.md").read_text()
  assert "Mean ± std over seeds" in summary and "recon_mse_std" in summary

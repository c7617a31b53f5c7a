"""Linear mode connectivity of tickets: copies, end points, masks, BatchNorm, resume, instability.

One AE smoke search (levels 0 and 1, the ticket branch, one seed) and one stability run serve
every test.
"""
import functools
import os
import shutil
import types

import jax
import numpy as np
import pytest

from lth_jax import configs, evaluation, lottery, masks, report, runs, stability
from tests.conftest import built_once, needs_fmnist, run_outputs

METRIC = "recon_mse"


def small_config():
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  config.lottery.update(levels=1, branches=("ticket",))
  return config


@pytest.fixture(scope="module")
def done(tmp_path_factory):
  """The search and its stability run (read-only), built once per test run."""

  def build(root):
    lottery.run(small_config(), str(root / "search"))
    rows = stability.run(small_config(), str(root / "stability"), str(root / "search"))
    runs.write_json(str(root / "rows.json"), rows)

  root = built_once(tmp_path_factory, "stability", build)
  assert run_outputs(root / "stability") == set(stability.planned_outputs(small_config()))
  ctx = runs.Context(small_config(), str(tmp_path_factory.mktemp("check")))
  return types.SimpleNamespace(search=str(root / "search"), work=str(root / "stability"),
                               rows=runs.read_json(str(root / "rows.json")), ctx=ctx)


def run_dirs(d, level):
  ticket = os.path.join(d.search, f"level_{level:02d}", ("dense" if level == 0 else "ticket")
                        + "_seed0")
  return ticket, os.path.join(d.work, f"level_{level:02d}", "copy_seed0")


def states(d, level):
  ticket_dir, copy_dir = run_dirs(d, level)
  ticket = d.ctx.load_state(os.path.join(ticket_dir, "trained"))
  return (ticket, d.ctx.load_state(os.path.join(copy_dir, "trained")),
          masks.load(os.path.join(ticket_dir, "masks.npz"),
                     like=d.ctx.dense_masks(ticket.params)))


def pruned_entries_are_zero(params, m):
  leaves = zip(jax.tree.leaves(m, is_leaf=masks.is_none), jax.tree.leaves(params))
  return all(k is None or np.all(np.asarray(x)[~np.asarray(k)] == 0.0) for k, x in leaves)


def row_at(d, level, alpha):
  return next(r for r in d.rows if r["level"] == level and r["alpha"] == alpha)


@needs_fmnist
def test_rows_instability_and_csv(done):
  assert [(r["level"], r["seed"], r["alpha"]) for r in done.rows] == [
      (level, 0, a) for level in (0, 1) for a in stability.ALPHAS]
  assert {r["sparsity"] for r in done.rows if r["level"] == 0} == {0.0}
  assert all(abs(r["sparsity"] - 0.2) < 0.01 for r in done.rows if r["level"] == 1)
  for level in (0, 1):
    curve = [r for r in done.rows if r["level"] == level]
    values = [r[METRIC] for r in curve]
    assert all(np.isfinite(values))
    expected = max(values) - (values[0] + values[-1]) / 2
    assert all(r["instability"] == pytest.approx(expected, abs=1e-12) for r in curve)
    assert curve[0]["instability"] >= 0.0
  assert report.read_csv(os.path.join(done.work, "stability.csv")) == done.rows
  assert stability.instability({0.0: 1.0, 0.5: 3.0, 1.0: 2.0}) == 1.5


@needs_fmnist
def test_copies_differ_only_in_data_order_and_keep_the_mask(done):
  for level in (0, 1):
    ticket, copy, m = states(done, level)
    _, copy_dir = run_dirs(done, level)
    assert masks.distance(masks.load(os.path.join(copy_dir, "masks.npz"), like=m), m) == 0.0
    assert int(copy.step) == int(ticket.step) == small_config().train.steps
    differ = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ticket.params),
                                                        jax.tree.leaves(copy.params))]
    assert any(differ), level
    assert pruned_entries_are_zero(copy.params, m)
  assert not np.array_equal(jax.random.key_data(stability.copy_run_key(0)),
                            jax.random.key_data(runs.seed_keys(0)["run"]))


@needs_fmnist
def test_end_points_equal_their_separately_computed_metric(done):
  ctx, batch = done.ctx, small_config().train.batch_size
  for level in (0, 1):
    ticket, copy, _ = states(done, level)
    ticket_dir, copy_dir = run_dirs(done, level)
    # With the running statistics of training, the search's own evaluation is reproduced.
    own = runs.read_json(os.path.join(ticket_dir, "metrics.json"))[METRIC]
    assert ctx.evaluator(ctx.family, ticket)[METRIC] == pytest.approx(own, rel=1e-6)
    assert row_at(done, level, 0.0)[f"ticket_{METRIC}"] == own
    copy_own = runs.read_json(os.path.join(copy_dir, "metrics.json"))[METRIC]
    assert row_at(done, level, 1.0)[f"copy_{METRIC}"] == copy_own
    # With recomputed statistics (the curve's treatment), each end point is its own network's.
    for alpha, state in ((0.0, ticket), (1.0, copy)):
      stats = stability.recompute_batch_stats(ctx.family, state.params, state.batch_stats,
                                              ctx.train_split.images, stability.bn_key(0),
                                              batch_size=batch)
      value = ctx.evaluator(ctx.family, state._replace(batch_stats=stats))[METRIC]
      assert row_at(done, level, alpha)[METRIC] == pytest.approx(value, rel=1e-6), (level, alpha)


@needs_fmnist
def test_interpolated_params_keep_pruned_weights_at_zero(done):
  ticket, copy, m = states(done, 1)
  for alpha in stability.ALPHAS:
    assert pruned_entries_are_zero(
        stability.interpolate(ticket.params, copy.params, alpha, m), m), alpha
  ends = [stability.interpolate(ticket.params, copy.params, a, m) for a in (0.0, 1.0)]
  for end, state in zip(ends, (ticket, copy)):
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(end),
                                                     jax.tree.leaves(state.params)))


@needs_fmnist
def test_recomputed_statistics_are_a_fixed_point_of_their_batch(done):
  """One batch's recomputed statistics S: a train-mode pass on that batch from S gives S back
  (m·S + (1 − m)·s = S iff S = s), whatever the BatchNorm momentum m."""
  ctx = done.ctx
  ticket, _, _ = states(done, 1)
  key, batch = jax.random.key(3), small_config().train.batch_size
  one = stability.recompute_batch_stats(ctx.family, ticket.params, ticket.batch_stats,
                                        ctx.train_split.images, key, batch_size=batch,
                                        num_batches=1)
  one_pass = jax.jit(functools.partial(stability._train_mode_stats, ctx.family, batch))
  again = one_pass(ticket.params, one, ctx.train_split.images, jax.random.fold_in(key, 0))
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(again)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(one),
                                                   jax.tree.leaves(ticket.batch_stats)))


@needs_fmnist
def test_second_run_trains_and_evaluates_nothing(done, monkeypatch, tmp_path):
  work = str(shutil.copytree(done.work, tmp_path / "work"))
  copy_dir = os.path.join(work, "level_01", "copy_seed0")
  files = [os.path.join(copy_dir, "metrics.json"), os.path.join(copy_dir, "interpolation.json")]
  stamps = [os.stat(f).st_mtime_ns for f in files]

  def refuse(*args, **kwargs):
    raise AssertionError("a finished stability run trained or evaluated again")

  monkeypatch.setattr(runs.Context, "train", refuse)
  monkeypatch.setattr(evaluation.Evaluator, "__call__", refuse)
  assert stability.run(small_config(), work, done.search) == done.rows
  assert stability.run(None, work, done.search) == done.rows   # config read from the search
  # A level whose copies are trained and interpolated but not marked done: read back, not redone.
  os.remove(os.path.join(work, "level_01", "done.json"))
  assert stability.run(small_config(), work, done.search) == done.rows
  assert [os.stat(f).st_mtime_ns for f in files] == stamps
  assert os.path.exists(os.path.join(work, "level_01", "done.json"))


@needs_fmnist
def test_refuses_another_config_and_an_unfinished_search(done, tmp_path):
  changed = small_config()
  changed.train.steps = 8
  with pytest.raises(runs.WorkdirConflictError, match=r"differs in: train.steps"):
    stability.run(changed, str(tmp_path / "other"), done.search)
  with pytest.raises(FileNotFoundError, match="no finished level"):
    stability.run(small_config(), str(tmp_path / "work"), str(tmp_path / "no_search"))

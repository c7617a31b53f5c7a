"""Lottery search: level sparsities, rewinding, baselines, kill-and-resume, bad inputs, reports."""
import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import ml_collections
import numpy as np
import pytest

from lth_jax import branches, config_fields, configs, lottery, masks, pruning, steps, validation
from tests.conftest import checkpoint_saved, needs_fmnist, run_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_THREEFRY_PARTITIONABLE": "0"}


def kept_per_leaf(m):
  return {r.path: r.kept for r in masks.summary(m)}


@needs_fmnist
def test_dcgan_search_levels_and_baselines(tmp_path):
  config = configs.get_config("dcgan", "fashion_mnist", "smoke")
  config.lottery.branches = branches.names()          # the defaults and one_shot
  config.lottery.branch_levels = "snip,grasp,synflow=2"   # pruned at init: level 2 only
  workdir = str(tmp_path / "dcgan")
  rows = lottery.run(config, workdir)
  assert run_outputs(workdir) == set(lottery.planned_outputs(config))
  dense = masks.load(os.path.join(workdir, "level_00", "dense_seed0", "masks.npz"))
  sizes = {r.path: r.total for r in masks.summary(dense)}
  assert "generator/convt0/kernel" not in sizes and "discriminator/head/kernel" not in sizes
  for level in (1, 2):
    level_rows = [r for r in rows if r["level"] == level]
    assert {r["branch"] for r in level_rows} == set(branches.names()) - (
        {"snip", "grasp", "synflow"} if level == 1 else set())
    ticket = masks.load(os.path.join(workdir, f"level_{level:02d}", "ticket_seed0", "masks.npz"))
    total = sum(sizes.values())
    kept = int(masks.counts(ticket)[0])
    assert abs(kept - total * 0.8 ** level) <= level * len(sizes)
    for row in level_rows:  # every baseline has the ticket's global sparsity, to the weight
      other = masks.load(os.path.join(workdir, f"level_{level:02d}",
                                      f"{row['branch']}_seed0", "masks.npz"))
      assert int(masks.counts(other)[0]) == kept, row["branch"]
    one_shot = masks.load(os.path.join(workdir, f"level_{level:02d}", "one_shot_seed0",
                                       "masks.npz"))
    # Level 1: one round from the dense model either way; later, iterative differs.
    assert (float(masks.distance(one_shot, ticket)) == 0.0) == (level == 1)
    random_pruned = masks.load(os.path.join(workdir, f"level_{level:02d}",
                                            "random_pruning_seed0", "masks.npz"))
    assert kept_per_leaf(random_pruned) == kept_per_leaf(ticket)
    assert float(masks.distance(random_pruned, ticket)) > 0.0
  for name in ("results.csv", "metric_vs_sparsity.png", "summary.md", "samples_level2.png"):
    assert os.path.exists(os.path.join(workdir, name))
  # Finished stages keep their runs' outputs, not their in-stage checkpoints.
  for level in range(3):
    kept = os.listdir(os.path.join(workdir, f"level_{level:02d}"))
    assert "checkpoints_rewind" not in kept
    assert not os.listdir(os.path.join(workdir, f"level_{level:02d}", "checkpoints"))
  assert all(np.isfinite(r["fid_fmnist_clf"]) for r in rows)
  # Rebuilding the reports from the saved results gives the same table.
  with open(os.path.join(workdir, "summary.md")) as f:
    summary = f.read()
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "report.py"),
                        f"--workdir={workdir}"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert summary.strip() in out.stdout


def ae_config():
  """AE smoke preset, 2 seeds, ticket and random baselines, 2 levels."""
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  config.lottery.branches = ("ticket", "random_reinit", "random_pruning")
  config.tickets.seeds = (0, 1)
  return config


def check_ae_search(rows, workdir):
  """Two seeds' rows of every branch and level, the summary's ± and finite metrics (the VAE's
  search runs in test_transfer, and the zoo's smoke searches in test_zoo_*)."""
  assert len(rows) == 2 + 2 * 2 * 3
  with open(os.path.join(workdir, "summary.md")) as f:
    assert "±" in f.read()
  assert all(np.isfinite(r["recon_mse"]) for r in rows)


def test_rewind_restores_theta_k_exactly():
  fam = steps.make_family("dcgan", channels=1, image_size=32, width=8, z_dim=16,
                          optimizer=dict(lr=1e-3, b1=0.5, b2=0.999), batch_size=8)
  theta_k = fam.init(jax.random.key(0))
  dense = steps.dense_masks(fam, theta_k.params, {"generator": True, "discriminator": True})
  images = jax.numpy.zeros((16, 32, 32, 1), jax.numpy.uint8)
  theta_k, _ = jax.jit(steps.multi_step(fam, 2))(theta_k, dense, images, jax.random.key(1))
  ticket = pruning.magnitude(theta_k.params, dense, 0.5)
  state = branches.rewind(fam, theta_k, ticket)
  chex.assert_trees_all_equal(state.params, masks.apply(theta_k.params, ticket))
  chex.assert_trees_all_equal(state.batch_stats, theta_k.batch_stats)
  assert int(state.step) == int(theta_k.step) == 2
  mu = state.opt_state["generator"][0].mu["convt1"]["kernel"]
  assert np.all(np.asarray(mu)[~np.asarray(ticket["generator"]["convt1"]["kernel"])] == 0)
  fresh = branches.rewind(fam, theta_k, ticket, restore_optimizer=False)
  assert int(fresh.opt_state["generator"][0].count) == 0


@pytest.mark.parametrize("spec,expected", [("500it", 500), ("2ep", 20), (7, 7), ("0", 0)])
def test_parse_steps(spec, expected):
  assert config_fields.parse_steps(spec, steps_per_epoch=10) == expected


@pytest.mark.parametrize("field,value,message", [
    ("lottery.rate", 1.5, "lottery.rate must be in"),
    ("lottery.rate", 0.0, "lottery.rate must be in"),
    ("lottery.branches", ("ticket", "lasso"), "unknown lottery.branches"),
    ("lottery.branches", ("snip",), "must contain 'ticket'"),
    ("lottery.rewind_step", "1000it", "not before the end of training"),
    ("lottery.rewind_step", "soon", "not a step count"),
    ("tickets.execution", "warp", "unknown tickets.execution"),
])
def test_bad_config_values(field, value, message):
  config = configs.get_config("ae", "fashion_mnist", "smoke")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message):
    validation.check(config, "find_tickets")


def _binary(workdir, *overrides, config="ae_fmnist.py:smoke"):
  return [sys.executable, os.path.join(ROOT, "experiments", "find_tickets.py"),
          f"--config={ROOT}/experiments/configs/{config}", f"--workdir={workdir}", *overrides]


KILL_OVERRIDES = ("--config.lottery.branches=('ticket','random_pruning')",
                  "--config.train.steps=12", "--config.train.checkpoint_every=2",
                  "--config.train.steps_per_call=1")


@needs_fmnist
def test_kill_and_resume_is_bit_identical(tmp_path):
  reference = tmp_path / "reference"
  out = subprocess.run(_binary(reference, *KILL_OVERRIDES), capture_output=True, text=True,
                       timeout=600, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  killed = tmp_path / "killed"
  proc = subprocess.Popen(_binary(killed, *KILL_OVERRIDES), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=ENV)
  deadline = time.time() + 300
  target = killed / "level_01" / "checkpoints"  # mid-level: some in-level checkpoints exist
  while time.time() < deadline and not checkpoint_saved(target):
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "level_02" / "done.json").exists(), "the run finished before the kill"
  config = ml_collections.ConfigDict(json.loads((killed / "config.json").read_text()))
  records = [json.loads(p.read_text()) for p in target.glob("*.json")]   # what the group trains
  assert records == [{"runs": lottery.level_runs(config, 1), "until_step": config.train.steps}]
  out = subprocess.run(_binary(killed, *KILL_OVERRIDES), capture_output=True, text=True,
                       timeout=600, env=ENV)
  assert out.returncode == 0, out.stderr[-3000:]
  assert not list(killed.glob("level_*/checkpoints/*.json"))   # gone with the finished groups
  for level, branch in [(0, "dense"), (1, "ticket"), (1, "random_pruning"), (2, "ticket")]:
    name = os.path.join(f"level_{level:02d}", f"{branch}_seed0")
    a = masks.load(reference / name / "masks.npz")
    b = masks.load(killed / name / "masks.npz")
    chex.assert_trees_all_equal(a, b)
    with open(reference / name / "metrics.json") as f:
      ma = json.load(f)
    with open(killed / name / "metrics.json") as f:
      mb = json.load(f)
    for key in ("recon_mse", "sparsity", "steps"):
      assert ma[key] == mb[key], (name, key)


def test_branch_registry_order_and_a_new_branch():
  assert branches.names()[:6] == ("ticket", "random_reinit", "random_pruning", "snip", "grasp",
                                  "synflow")
  assert tuple(configs.get_config("ae").lottery.branches) == branches.names()[:6]
  with pytest.raises(ValueError, match="already registered"):
    branches.register("ticket")(lambda x: None)
  with pytest.raises(ValueError, match="unknown lottery branch 'lasso'"):
    branches.start("lasso", None)


@needs_fmnist
def test_extending_a_finished_search_trains_only_what_is_missing(tmp_path):
  small = ae_config()
  small.lottery.update(levels=1, branches=("ticket",))
  workdir = str(tmp_path / "extended")
  lottery.run(small, workdir)
  ticket_file = os.path.join(workdir, "level_01", "ticket_seed0", "metrics.json")
  stamp = os.stat(ticket_file).st_mtime_ns
  extended = lottery.run(ae_config(), workdir)
  assert os.stat(ticket_file).st_mtime_ns == stamp            # level 1's ticket not retrained
  fresh_dir = str(tmp_path / "fresh")
  fresh = lottery.run(ae_config(), fresh_dir)
  check_ae_search(fresh, fresh_dir)
  key = lambda r: (r["level"], r["branch"], r["seed"])
  assert sorted(map(key, extended)) == sorted(map(key, fresh))
  by_key = {key(r): r for r in fresh}
  for row in extended:
    assert row["recon_mse"] == by_key[key(row)]["recon_mse"], key(row)
  changed = ae_config()
  changed.train.steps = 8
  with pytest.raises(ValueError, match="differs in: train.steps"):
    lottery.run(changed, workdir)

"""The reproduction command: jobs, verdict rules, and a smoke run end to end that a second run
leaves untouched."""
import os
import subprocess
import sys
import time

import jax
import pytest

from lth_jax import config_fields, families, job_queue, preemption, reproduction
from lth_jax import reproduction_report, reproduction_status, runs, validation
from tests.conftest import needs_fmnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("scale", reproduction.SCALES)
def test_every_job_of_every_claim_is_a_valid_run(scale):
  jobs = reproduction.jobs_for(list(reproduction.CLAIMS), scale)
  assert len({j.name for j in jobs}) == len(jobs)
  for job in jobs:
    binary = "find_tickets" if job.binary == "stability" else job.binary
    validation.check(job.config, binary)
    if scale != "smoke" and job.binary != "early_bird":
      own = families.get(job.config.family).reproduction.seeds.get(scale)   # a zoo family's
      assert len(job.config.tickets.seeds) >= (len(own) if own else 3), job.name
  searches = {j.name: j for j in jobs}
  # Claim 1's searches carry claim 2's and claim 4's branches (one search, extended).
  assert set(searches["search_ae"].config.lottery.branches) == {
      *reproduction.CLAIM_BRANCHES, *reproduction.INIT_BRANCHES}
  assert {*reproduction.CLAIM_BRANCHES, "one_shot"} <= set(
      searches["search_vae"].config.lottery.branches)
  # SNIP/GraSP/SynFlow and one-shot at four levels spread over the range, up to the last level.
  for name, expected in (("search_ae", set(reproduction.INIT_BRANCHES)),
                         ("search_vae", {"one_shot"})):
    spread = config_fields.branch_levels(searches[name].config.lottery)
    levels = searches[name].config.lottery.levels
    assert expected <= set(spread), name
    assert all(len(v) == min(4, levels) and v[-1] == levels for v in spread.values()), name
  assert searches["search_vae_rewind0"].config.lottery.rewind_step == "0it"
  assert searches["search_vae"].config.lottery.rewind_step != "0it"       # late resetting
  assert dict(searches["search_dcgan_only_generator"].config.prune.parts) == {
      "generator": True, "discriminator": False}


@pytest.mark.parametrize("claim", list(reproduction.CLAIMS))
def test_each_claim_alone_runs_the_jobs_its_jobs_wait_for(claim):
  # A stability job beside a half-finished search that is not in its list would be marked done
  # with the search's levels so far: a claim's jobs include their sources.
  jobs = reproduction.jobs_for([claim], "cpu")
  names = [j.name for j in jobs]
  for job in jobs:
    if job.source:
      assert job.source in names and names.index(job.source) < names.index(job.name), job.name


def test_claim_subsets_run_only_their_branches():
  jobs = {j.name: j for j in reproduction.jobs_for([1], "cpu")}
  assert set(jobs) == {f"search_{f}" for f in reproduction.claim_families(1)}
  assert {"search_ae", "search_vae", "search_dcgan"} <= set(jobs)
  assert tuple(jobs["search_ae"].config.lottery.branches) == reproduction.CLAIM_BRANCHES
  # cpu: two of the paper's 20% levels per level, to the same sparsity (~89%, ~99%)
  assert jobs["search_dcgan"].config.lottery.levels == 5
  assert jobs["search_ae"].config.lottery.levels == 10
  assert jobs["search_ae"].config.lottery.rate == pytest.approx(0.36)


def test_verdicts_and_winning_levels():
  assert reproduction_report.verdict([True, True]) == "held"
  assert reproduction_report.verdict([True, False]) == "partly held"
  assert reproduction_report.verdict([False]) == "did not hold"
  assert reproduction_report.verdict([]) == "not run"
  m = "fid"

  def stats(mean, std=0.0, sparsity=0.0):
    return {"fid_mean": mean, "fid_std": std, "sparsity_mean": sparsity}

  table = {(0, "dense"): stats(10.0, 1.0),
           (1, "ticket"): stats(10.9, sparsity=0.2), (1, "random_reinit"): stats(12.0),
           (1, "random_pruning"): stats(11.0),
           (2, "ticket"): stats(11.5, sparsity=0.36), (2, "random_reinit"): stats(12.0),
           (2, "random_pruning"): stats(13.0),
           (3, "ticket"): stats(10.0, sparsity=0.488), (3, "random_reinit"): stats(9.0),
           (3, "random_pruning"): stats(13.0)}
  assert reproduction_report.winning_levels(table, m) == [
      (1, 0.2, True),       # within the dense spread, better than both random tickets
      (2, 0.36, False),     # outside the dense spread
      (3, 0.488, False)]    # a random ticket is better


@needs_fmnist
def test_smoke_run_end_to_end_and_a_second_run_trains_nothing(tmp_path):
  workdir, results = tmp_path / "runs", tmp_path / "results"
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "reproduce.py"), "--scale=smoke",
         "--claims=1", f"--workdir={workdir}", f"--results_dir={results}"]
  out = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.count("== search_ae (find_tickets)") == 1   # one worker ran it, one waited
  page = (results / "README.md").read_text()
  assert "| 1. Winning tickets by IMP with late resetting | **" in page
  assert "Highest winning sparsity" in page and "## Compute" in page
  assert (results / "claim1.csv").exists() and (results / "claim1_ae.png").exists()
  assert (results / "dense_ae.png").exists() and "![ae dense](dense_ae.png)" in page
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert again.returncode == 0, again.stderr[-3000:]
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
  assert after == before                  # no job started: nothing in the runs changed
  assert (results / "README.md").read_text() == page
  assert "| **no verdict yet" not in page
  status = subprocess.run(cmd + ["--status"], capture_output=True, text=True, timeout=300)
  assert status.returncode == 0, status.stderr[-3000:]
  planned = len(reproduction_status.planned_outputs(reproduction.jobs_for([1], "smoke")[0]))
  assert f"| search_ae | finished | {planned}/{planned} | - |" in status.stdout
  # An unfinished job (here: its done marker gone) leaves its claim without a verdict, its
  # tables still shown.
  (workdir / "search_ae" / "job_done.json").unlink()
  partial = reproduction_report.write(str(workdir), str(tmp_path / "partial"), [1], "smoke", "")
  assert "| 1. Winning tickets by IMP with late resetting | **no verdict yet (1 of 1 jobs " \
         "unfinished)** |" in partial
  assert f"Unfinished: search_ae ({planned} of {planned} runs done)." in partial
  assert "Highest winning sparsity" in partial


def test_the_page_names_the_feature_space_and_refuses_jobs_of_two(tmp_path):
  record = lambda sha: {"name": "fmnist_clf", "weights_sha256": sha, "test_accuracy": 0.9}
  runs.write_json(str(tmp_path / "search_vae" / runs.FEATURE_SPACE_FILE), record("aaa"))
  runs.write_json(str(tmp_path / "transfer_x" / "target" / runs.FEATURE_SPACE_FILE),
                  record("aaa"))
  assert reproduction_report.feature_spaces_used(str(tmp_path)) == (
      "FID/KID in feature space `fmnist_clf`, weights `aaa` (first 12 hex digits of the file's "
      "SHA-256), for every job.")
  runs.write_json(str(tmp_path / "search_sngan" / runs.FEATURE_SPACE_FILE), record("bbb"))
  results = tmp_path / "results"
  with pytest.raises(ValueError, match=r"feature space fmnist_clf with different weights "
                                       r"\(weights bbb: search_sngan; weights aaa: search_vae, "
                                       r"transfer_x/target\): their numbers do not compare"):
    reproduction_report.write(str(tmp_path), str(results), [1], "smoke", "")
  assert not results.exists()                   # nothing written


def test_job_clock_writes_while_running_and_accumulates(tmp_path):
  path = str(tmp_path / "job" / "job_time.json")
  with job_queue._job_clock(path, every_s=0.02):   # pylint: disable=protected-access
    first = runs.read_json(path)                        # written at once: the job runs
    deadline = time.time() + 10
    while runs.read_json(path) == first and time.time() < deadline:   # and while it runs
      sum(range(10_000))
    second = runs.read_json(path)
  assert second["wall_s"] > first["wall_s"]
  end = runs.read_json(path)
  with job_queue._job_clock(path, every_s=60):     # pylint: disable=protected-access
    time.sleep(0.05)
  total = runs.read_json(path)
  assert total["wall_s"] >= end["wall_s"] + 0.05 and total["cpu_s"] >= end["cpu_s"]
  assert total["devices"] == [jax.devices()[0].device_kind]   # where the job ran


def test_jobs_run_claim1_of_the_paper_families_first_then_by_the_claims_a_family_serves():
  assert set(reproduction.SCALE_WHY) == set(reproduction.SCALES)   # each scale says its cuts
  jobs = reproduction.jobs_for(list(reproduction.CLAIMS), "cpu")
  assert [j.name for j in jobs[:3]] == ["search_vae", "search_dcgan", "search_ae"]
  served = [len(families.get(j.config.family).reproduction.claims) for j in jobs[3:]]
  assert served == sorted(served, reverse=True)
  assert jobs[-1].config.family not in reproduction.claim_families(2)   # the zoo's last
  names = [j.name for j in jobs]
  assert names.index("search_dcgan") < names.index("stability_dcgan")
  zoo = [n for n in names if n.startswith("search_") and jobs[names.index(n)].config.family
         not in reproduction.claim_families(2)]
  assert zoo[0] == "search_wgan_gp" and zoo[-1] == "search_resnet_dcgan"   # cheapest first


def test_run_jobs_leaves_a_locked_job_to_its_process_and_waits_for_a_source(tmp_path,
                                                                           monkeypatch):
  import threading   # pylint: disable=g-import-not-at-top
  import ml_collections   # pylint: disable=g-import-not-at-top
  from lth_jax import lottery, stability   # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path)
  config = lambda i: ml_collections.ConfigDict({"family": "ae", "i": i})
  search, other = (job_queue.Job(n, "find_tickets", config(i))
                   for i, n in enumerate(("search", "other")))
  check = job_queue.Job("check", "stability", config(2), source="search")
  ran = []
  monkeypatch.setattr(lottery, "run", lambda cfg, path: ran.append(os.path.basename(path)))
  monkeypatch.setattr(stability, "run", lambda cfg, path, source: ran.append(
      (os.path.basename(path), os.path.basename(source))))
  lock = os.path.join(workdir, "search", "job.lock")
  with job_queue.file_lock(lock) as held:          # "another process" runs the search
    assert held
    with job_queue.file_lock(lock) as again:
      assert not again                                  # a second holder is refused
    assert not job_queue.run_job(search, workdir)
    worker = threading.Thread(target=job_queue.run_jobs,
                              args=([search, other, check], workdir, 0.02))
    worker.start()
    deadline = time.time() + 30
    while not ran and time.time() < deadline:
      time.sleep(0.01)
    time.sleep(0.2)
    assert ran == ["other"]                   # the search is locked, the check waits for it
    runs.write_json(os.path.join(workdir, "search", "job_done.json"),
                    runs.config_to_dict(search.config))
  worker.join(30)
  assert not worker.is_alive()
  assert ran == ["other", ("check", "search")]
  assert job_queue.job_finished(check, workdir) and job_queue.job_finished(other, workdir)


def test_run_jobs_goes_on_past_a_failed_job_and_drops_its_readers(tmp_path, monkeypatch):
  import ml_collections   # pylint: disable=g-import-not-at-top
  from lth_jax import lottery, stability   # pylint: disable=g-import-not-at-top
  config = lambda i: ml_collections.ConfigDict({"family": "ae", "i": i})
  bad, other = (job_queue.Job(n, "find_tickets", config(i))
                for i, n in enumerate(("bad", "other")))
  check = job_queue.Job("check", "stability", config(2), source="bad")
  ran, seen = [], []

  def search(cfg, path):
    if os.path.basename(path) == "bad":
      raise ValueError("no data")
    ran.append(os.path.basename(path))

  monkeypatch.setattr(lottery, "run", search)
  monkeypatch.setattr(stability, "run", lambda cfg, path, source: ran.append("check"))
  failed = job_queue.run_jobs([bad, check, other], str(tmp_path), 0.01, keep_going=(ValueError,),
                                 on_failure=lambda job, e: seen.append((job.name, str(e))))
  assert failed == ["bad", "check"] and seen == [("bad", "no data")] and ran == ["other"]
  assert not job_queue.job_finished(bad, str(tmp_path))       # tried again by the next run
  assert job_queue.job_finished(other, str(tmp_path))
  with pytest.raises(ValueError, match="no data"):               # not kept going: propagates
    job_queue.run_jobs([bad], str(tmp_path), 0.01)


def test_a_stop_requested_during_a_job_ends_run_jobs_before_the_next(tmp_path, monkeypatch):
  """A SIGTERM that arrives while a job is evaluating lets the job finish, then ends the worker
  (:class:`preemption.Preempted` is not one of ``keep_going``'s user errors)."""
  import ml_collections   # pylint: disable=g-import-not-at-top
  from lth_jax import lottery   # pylint: disable=g-import-not-at-top
  first, second = (job_queue.Job(n, "find_tickets", ml_collections.ConfigDict({"i": i}))
                   for i, n in enumerate(("first", "second")))
  ran = []

  def search(cfg, path):
    ran.append(os.path.basename(path))
    preemption.request("SIGTERM")

  monkeypatch.setattr(lottery, "run", search)
  try:
    with pytest.raises(preemption.Preempted, match="stopped by SIGTERM; run the same command"):
      job_queue.run_jobs([first, second], str(tmp_path), 0.01, keep_going=(ValueError,))
  finally:
    preemption.clear()
  assert ran == ["first"] and job_queue.job_finished(first, str(tmp_path))
  assert not job_queue.job_finished(second, str(tmp_path))


def test_claim1_repeats_its_table_in_kid_for_families_that_have_it():
  rows = [{"level": lv, "branch": b, "seed": s, "sparsity": 0.36 * (lv > 0),
           "fid_fmnist_clf": 100.0 - lv - s, "kid_fmnist_clf": kid + 0.1 * s}
          for s in (0, 1) for lv, b, kid in ((0, "dense", 20.0), (1, "ticket", 18.0),
                                             (1, "random_reinit", 21.0),
                                             (1, "random_pruning", 22.0))]
  page = reproduction_report._kid_check(rows)   # pylint: disable=protected-access
  assert "| 1 | 36.0 | 20.05 ± 0.071 | 18.05 ± 0.071 | 21.05 ± 0.071 | 22.05 ± 0.071 |" in page
  assert "Winning levels by KID: [1]." in page
  no_kid = [{k: v for k, v in r.items() if k != "kid_fmnist_clf"} for r in rows]
  assert reproduction_report._kid_check(no_kid) == ""   # pylint: disable=protected-access


def _touch(path, text="{}"):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def test_status_counts_runs_in_flight_copies_and_estimates_what_is_left(tmp_path):
  jobs = reproduction.jobs_for([1, 6, 7], "cpu")
  by_name = {j.name: j for j in jobs}
  search, stable = by_name["search_vae"], by_name["stability_vae"]
  first, second = by_name["early_bird_vae_0.3"], by_name["early_bird_vae_0.5"]
  seeds = [int(s) for s in search.config.tickets.seeds]
  levels = search.config.lottery.levels
  assert reproduction_status.planned_outputs(search)[:len(seeds) + 1] == [
      f"level_00/dense_seed{s}/metrics.json" for s in seeds] + [
          "level_01/ticket_seed0/metrics.json"]
  assert len(reproduction_status.planned_outputs(search)) == len(seeds) * (1 + 3 * levels)
  assert len(reproduction_status.planned_outputs(stable)) == len(seeds) * (1 + levels)
  now = time.time()
  found = {s.name: s for s in reproduction_status.statuses(jobs, str(tmp_path), now)}
  assert found["search_vae"].state == "not started" and found["search_vae"].done == 0
  assert found["stability_vae"].state == "waiting for search_vae"
  assert found[second.name].state == f"waiting for {first.name}"
  # The search: level 0 done, level 1's group in flight at half its steps.
  root = tmp_path / "search_vae"
  for s in seeds:
    _touch(root / "level_00" / f"dense_seed{s}" / "metrics.json")
  steps = search.config.train.steps
  (root / "level_01" / "checkpoints" / "abc123" / str(steps // 2)).mkdir(parents=True)
  _touch(root / job_queue.JOB_TIME, '{"wall_s": 7200.0, "cpu_s": 3600.0, "devices": []}')
  now = os.path.getmtime(root / job_queue.JOB_TIME)   # the clock was just written
  status = reproduction_status.job_status(search, str(tmp_path), by_name, set(), now)
  assert status.state == "running" and status.done == len(seeds)
  assert status.in_flight == f"level_01 at step {steps // 2}"
  assert status.trained == pytest.approx(len(seeds) + 3 * len(seeds) * 0.5)
  later = now + reproduction_status.ACTIVE_S + 1
  assert reproduction_status.job_status(search, str(tmp_path), by_name, set(), later).state \
      == "stopped"
  left = reproduction_status.cpu_left(reproduction_status.statuses(jobs, str(tmp_path), now))
  per_run = 3600.0 / status.trained
  assert left["search_vae"] == pytest.approx((status.planned - status.trained) * per_run)
  assert left["stability_vae"] == pytest.approx(status.planned / (1 + 3 * levels)
                                                * (1 + levels) * per_run)
  assert left["search_dcgan"] is None                    # no DCGAN run has trained yet
  # A finished stage's left-over checkpoint (newer) is not the group in flight.
  (root / "level_00" / "checkpoints" / "old" / str(steps)).mkdir(parents=True)
  again = reproduction_status.job_status(search, str(tmp_path), by_name, set(), now)
  assert again.in_flight == status.in_flight and again.trained == status.trained
  # An early-bird job trains its stages in its own directory: the group's record says which
  # runs are in flight (the dense runs, not the searches, tickets and scratch runs after them).
  eb_root = tmp_path / first.name
  runs.write_json(str(eb_root / "checkpoints" / "def456.json"),
                  {"runs": [f"dense_seed{s}" for s in seeds], "until_step": steps})
  (eb_root / "checkpoints" / "def456" / str(steps // 4)).mkdir(parents=True)
  _touch(eb_root / job_queue.JOB_TIME, '{"wall_s": 1.0, "cpu_s": 1.0, "devices": []}')
  eb = reproduction_status.job_status(first, str(tmp_path), by_name, set(), now)
  assert eb.in_flight == f"at step {steps // 4}"
  assert eb.trained == pytest.approx(len(seeds) / 4) and eb.done == 0
  # Early-bird: the later sparsities copy the first's dense runs, so they train fewer.
  planned = reproduction_status.planned_outputs(second)
  assert reproduction_status.copied(second, by_name) == {
      p for p in planned if p.startswith("dense_seed")} != set()
  assert reproduction_status.copied(first, by_name) == set()
  assert "job" in reproduction_status.table(jobs, str(tmp_path), now).splitlines()[0]
  assert reproduction_status.progress(search, str(tmp_path), jobs) == \
      f"{len(seeds)} of {status.planned} runs done, level_01 at step {steps // 2}"
  assert reproduction_status.progress(stable, str(tmp_path), jobs) == "not started"


def test_the_second_transfer_direction_trains_only_what_it_does_not_copy():
  jobs = reproduction.jobs_for([5], "cpu")
  first, second = jobs
  by_name = {j.name: j for j in jobs}
  seeds, levels = len(first.config.tickets.seeds), first.config.lottery.levels
  copies = reproduction_status.copied(second, by_name)
  # Its source search (ticket branch) is the first's target search; its target search's dense
  # and ticket runs are the first's source search: only the random tickets and the transferred
  # ones are its own.
  assert len(copies) == 2 * seeds * (1 + levels)
  assert len(reproduction_status.planned_outputs(second)) - len(copies) == 3 * seeds * levels


def test_a_grown_search_covers_the_smaller_configs_it_finished():
  small, grown = ({j.name: runs.config_to_dict(j.config)
                    for j in reproduction.jobs_for(claims, "cpu")}["search_vae"]
                   for claims in ([1], [1, 2, 4]))
  assert grown != small
  assert job_queue.covers(grown, small)          # claim 1's search is inside claims 1-4's
  assert not job_queue.covers(small, grown)      # the grown one still has branches to train
  fewer_levels = {**small, "lottery": {**small["lottery"],
                                       "levels": small["lottery"]["levels"] - 1}}
  assert job_queue.covers(small, fewer_levels) and not job_queue.covers(fewer_levels, small)
  other = {**small, "train": {**small["train"], "steps": small["train"]["steps"] + 1}}
  assert not job_queue.covers(other, small) and not job_queue.covers(small, other)
  cadence = {**small, "train": {**small["train"], "checkpoint_every": 7, "log_every": 7}}
  assert job_queue.covers(cadence, small) and job_queue.covers(small, cadence)


def test_early_bird_jobs_share_the_first_sparsitys_dense_runs(tmp_path, monkeypatch):
  from lth_jax import early_bird   # pylint: disable=g-import-not-at-top
  jobs = [j for j in reproduction.jobs_for([6], "cpu") if j.config.family == "dcgan"]
  first, *rest = jobs
  assert not first.source and not first.reuse and rest
  for job in rest:
    assert job.source == first.name
    assert set(job.reuse) == {(d, d) for d in ("dense_seed0", "dense_seed1", "dense_seed2",
                                               "samples_dense.png")}
  seen = []
  monkeypatch.setattr(early_bird, "run", lambda cfg, path: seen.append(sorted(os.listdir(path))))
  (tmp_path / first.name / "dense_seed0").mkdir(parents=True)
  (tmp_path / first.name / "dense_seed0" / "metrics.json").write_text("{}")
  (tmp_path / first.name / "samples_dense.png").write_bytes(b"png")
  assert job_queue.run_job(rest[0], str(tmp_path))
  assert "dense_seed0" in seen[0] and "samples_dense.png" in seen[0]
  assert (tmp_path / rest[0].name / "dense_seed0" / "metrics.json").read_text() == "{}"


def test_transfer_jobs_train_both_sides_at_the_longer_budget():
  from lth_jax import transfer   # pylint: disable=g-import-not-at-top
  for job in reproduction.jobs_for([5], "cpu"):
    source, target = transfer.derive_configs(job.config)[:2]
    longest = max(reproduction.base_config(f, "cpu").train.steps
                  for f in (source.family, target.family))
    assert source.train.steps == target.train.steps == longest
    assert source.lottery.rewind_step == f"{round(0.02 * longest)}it"


@pytest.mark.parametrize("scale", reproduction.SCALES)
def test_the_second_transfer_direction_copies_searches_of_its_own_configs(scale):
  """vae_to_gan trains the β-VAE's ticket search and the DCGAN's search with the random tickets;
  gan_to_vae copies them as its source and target: they must be exactly its own searches but
  for the branches (the target search then adds the random tickets)."""
  from lth_jax import transfer   # pylint: disable=g-import-not-at-top
  first, second = reproduction.jobs_for([5], scale)
  assert not first.reuse and second.source == first.name
  assert dict(second.reuse) == {"target": "source", "source": "target"}
  a_source, a_target = transfer.derive_configs(first.config)
  b_source, b_target = transfer.derive_configs(second.config)
  for there, here in ((a_target, b_source), (a_source, b_target)):
    assert sorted(runs._diff_keys(runs.config_to_dict(there),   # pylint: disable=protected-access
                                  runs.config_to_dict(here))) == ["lottery.branches"]
  assert tuple(b_target.lottery.branches) == reproduction.CLAIM_BRANCHES


@pytest.mark.parametrize("unstable_winner, expected", [(False, "held"), (True, "did not hold")])
def test_claim7_holds_when_the_winning_levels_are_the_stable_ones(tmp_path, monkeypatch,
                                                                  unstable_winner, expected):
  from lth_jax import report   # pylint: disable=g-import-not-at-top
  rows = [{"level": lv, "branch": b, "seed": s, "sparsity": 0.36 * lv, "recon_mse": m + 0.01 * s}
          for s in (0, 1) for lv, b, m in (
              (0, "dense", 1.0), (1, "ticket", 0.9), (1, "random_reinit", 1.2),
              (1, "random_pruning", 1.3), (2, "ticket", 1.5), (2, "random_reinit", 1.4),
              (2, "random_pruning", 1.6))]
  monkeypatch.setattr(reproduction_report, "search_rows",
                      lambda workdir, name: ((rows, "recon_mse") if name == "search_ae"
                                             else ([], "")))
  barrier = {1: 0.5 if unstable_winner else 0.1, 2: 0.3}
  points = [{"level": lv, "seed": s, "alpha": a, "instability": barrier[lv] + 0.01 * s}
            for lv in (1, 2) for s in (0, 1) for a in (0.0, 0.5)]
  (tmp_path / "stability_ae").mkdir()
  report.write_csv(points, str(tmp_path / "stability_ae" / "stability.csv"))
  section = reproduction_report.claim7(str(tmp_path), str(tmp_path))
  assert section.verdict == expected
  assert "| 1 | " in section.body and "| True |" in section.body and "| False |" in section.body


def test_claim4_shows_iterative_against_one_shot_before_the_halves_searches_ran(tmp_path,
                                                                                  monkeypatch):
  """The one-shot comparison is in the search itself: it is shown (rows, table) while the
  only-one-half searches have not run, and level 1 (the same mask) is not compared."""
  rows = [{"level": lv, "branch": b, "seed": s, "sparsity": 0.36 * lv, "fid": m + 0.1 * s}
          for s in (0, 1) for lv, b, m in (
              (0, "dense", 10.0), (1, "ticket", 9.0), (1, "one_shot", 9.0),
              (2, "ticket", 8.0), (2, "one_shot", 8.5), (2, "random_reinit", 11.0))]
  monkeypatch.setattr(reproduction_report, "search_rows",
                      lambda workdir, name: ((rows, "fid") if name == "search_vae" else ([], "")))
  section = reproduction_report.claim4(str(tmp_path), str(tmp_path))
  assert section.verdict == "held"            # one compared level (2), where the ticket wins
  assert "iterative (ticket) vs one-shot" in section.body
  assert {r["branch"] for r in section.rows} == {"dense", "ticket", "one_shot"}
  page = reproduction_report.write(str(tmp_path), str(tmp_path / "page"), [4], "cpu", "")
  claim = page.split("## 4. ", 1)[1]
  assert "no verdict yet" in claim and "Nothing has run yet" not in claim   # the halves: later
  assert "iterative (ticket) vs one-shot" in claim

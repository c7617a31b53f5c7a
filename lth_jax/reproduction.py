"""The paper's claims as one resumable run: which searches to train, at which scale.

Each claim (:data:`CLAIMS`) names the jobs it needs (:class:`lth_jax.job_queue.Job`: one run
of a driver, ``find_tickets`` = :func:`lth_jax.lottery.run`, ``transfer``, ``early_bird``,
``stability``, in its own workdir ``<workdir>/<job name>``). Claims share jobs: claim 1's search
of a family is extended with SNIP/GraSP/SynFlow by claim 2 and with the one-shot branch by
claim 4 (a search's ``lottery.branches`` may grow; the union over the requested claims is run).
Every driver resumes and skips finished stages; a finished job is not started at all, so a
second run of the same command trains nothing. :func:`lth_jax.job_queue.run_jobs` runs them,
beside other processes on the same workdir (``reproduce.py --workers``). Jobs run in
:func:`jobs_for`'s order: claim 1's searches of the paper's three families (AE, β-VAE, DCGAN),
then the families most claims rest on first, and among equals the shorter chain of
trainings (steps x levels) first.

The families are the registered ones with a ``families.Reproduction`` (their IMP levels and
config changes per scale, and the claims they take part in; :func:`claim_families`).

Scales (:data:`SCALES`): ``smoke`` (CI: smoke presets, 2 seeds, 1 level, claim 1/2/7 on the AE
only, one early-bird sparsity), ``cpu`` (this repository's 2-core reference: narrow models,
≥ 3 seeds unless a family's ``Reproduction.seeds`` names others, the paper's final sparsities
in half the levels) and
``gpu`` (the paper's widths, 5 seeds). Everything trains on Fashion-MNIST (offline); what is
scaled down from the paper is written in ``docs/results/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import ml_collections

from lth_jax import configs
from lth_jax import families as families_lib
from lth_jax import job_queue

SCALES = ("smoke", "cpu", "gpu")
CLAIM_BRANCHES = ("ticket", "random_reinit", "random_pruning")
INIT_BRANCHES = ("snip", "grasp", "synflow")
EB_SPARSITIES = (0.3, 0.5, 0.6, 0.75)

# Per scale: preset, seeds, rewind (2% of training), early-bird sparsities, the families of
# claims 1, 2 and 7 (None: every reproduced family) and ``merge_levels``: k of the paper's IMP
# levels (20% each) done as one (1 - 0.8**k pruned per level, ceil(L / k) levels), so 'cpu'
# trains every other sparsity of the paper's grid (36%, 59%, ... 98.8% for the AE's 20 levels),
# half the trainings, and ``checkpoint_every`` (None: the preset's): on 2 CPU cores 1000 steps
# of a level's ~20 tickets take most of an hour, which a stopped session would lose. IMP levels
# and config changes per family are the families' (``Reproduction``); 'cpu' sizes: the narrowest
# models whose dense samples look like clothes (BUILD_NOTES "Reproduction" sizing facts).
SCALE_SETTINGS = {
    "smoke": dict(preset="smoke", seeds=(0, 1), transfer_levels=1, rewind="2it",
                  families=("ae",), eb_sparsities=(0.5,), merge_levels=1,
                  checkpoint_every=None),
    "cpu": dict(preset="default", seeds=(0, 1, 2), transfer_levels=10, rewind="2%",
                families=None, eb_sparsities=EB_SPARSITIES, merge_levels=2,
                checkpoint_every=250),
    "gpu": dict(preset="paper", seeds=(0, 1, 2, 3, 4), transfer_levels=10, rewind="2%",
                families=None, eb_sparsities=EB_SPARSITIES, merge_levels=1,
                checkpoint_every=None),
}
PAPER_RATE = 0.2   # the paper's IMP rate: 20% of the remaining weights per level
# Why each scale is cut from the paper as it is (printed on the results page).
SCALE_WHY = {
    "smoke": "CI's end-to-end check of the machinery: the numbers mean nothing.",
    "cpu": "Sized for a 2-core CPU. Fashion-MNIST because it is offline and small, and "
           "its classifier gives FID/KID a feature space without downloads. Width 16 (the AE, "
           "β-VAE and DCGAN) and the fewest steps whose dense samples look like clothes (the "
           "DCGAN needs 4000; 2000 at width 16 gave FID 106 and barely clothes). Two of the "
           "paper's 20% levels per level (36%): the paper's final sparsities in half the "
           "trainings, through every other point of its grid. SNIP/GraSP/SynFlow and one-shot "
           "at four levels spread over the range, not at every level. Three seeds for the "
           "paper's three families and the linear AE (under a minute per training); one for the "
           "rest of the zoo, whose default presets train 5-15 minutes each.",
    "gpu": "The paper's widths (the families' `paper` presets) and IMP rate, on Fashion-MNIST, "
           "5 seeds.",
}


def claim_families(claim: int) -> tuple[str, ...]:
  """The registered families whose ``Reproduction.claims`` include ``claim``, in registry order."""
  return tuple(name for name in families_lib.names()
               if (r := families_lib.get(name).reproduction) is not None and claim in r.claims)


def base_config(family: str, scale: str) -> ml_collections.ConfigDict:
  """The family's config at ``scale`` (all sections; each job keeps its binary's)."""
  settings = SCALE_SETTINGS[scale]
  plan = families_lib.get(family).reproduction
  config = configs.get_config(family, "fashion_mnist", settings["preset"])
  config.tickets.seeds = tuple(plan.seeds.get(scale, settings["seeds"]))
  config.lottery.rate = 1 - (1 - PAPER_RATE) ** settings["merge_levels"]
  config.lottery.levels = scaled_levels(plan.levels[scale], scale)
  config.update_from_flattened_dict(dict(plan.overrides.get(scale, {})))
  if settings["checkpoint_every"]:
    config.train.checkpoint_every = settings["checkpoint_every"]
  config.lottery.rewind_step = _rewind(settings["rewind"], config.train.steps)  # late resetting
  return config


def scaled_levels(paper_levels: int, scale: str) -> int:
  """The IMP levels at ``scale`` that reach the sparsity of ``paper_levels`` levels of 20%."""
  return math.ceil(paper_levels / SCALE_SETTINGS[scale]["merge_levels"])


def _rewind(spec: str, steps: int) -> str:
  """'2%' of ``steps`` as a step count ('<n>it'), or ``spec`` itself."""
  if spec.endswith("%"):
    return f"{max(1, round(steps * float(spec[:-1]) / 100))}it"
  return spec


def _search(family: str, scale: str, branches: tuple[str, ...],
            changes: dict | None = None) -> ml_collections.ConfigDict:
  """The family's ``find_tickets`` config at ``scale`` with ``branches`` and dotted ``changes``."""
  config = base_config(family, scale)
  config.lottery.branches = branches
  config.update_from_flattened_dict(changes or {})
  return configs.for_binary(config, "find_tickets")


# ----------------------------------------------------------------------------- the claims
def _families(claim: int, scale: str) -> tuple[str, ...]:
  """Claim 1, 2 or 7's families at ``scale`` (the scale may name fewer)."""
  only = SCALE_SETTINGS[scale]["families"]
  return tuple(f for f in claim_families(claim) if only is None or f in only)


def _claim1(scale):
  return [job_queue.Job(f"search_{f}", "find_tickets", _search(f, scale, CLAIM_BRANCHES))
          for f in _families(1, scale)]


def _spread(family: str, scale: str, branches: tuple[str, ...]) -> dict:
  """``lottery.branch_levels`` training ``branches`` at four levels spread over the family's
  range (e.g. 3, 6, 9, 12 of 12): baselines that need no previous level are compared there."""
  levels = scaled_levels(families_lib.get(family).reproduction.levels[scale], scale)
  spread = sorted({max(1, round(levels * i / 4)) for i in range(1, 5)})
  return {"lottery.branch_levels": f"{','.join(branches)}={','.join(map(str, spread))}"}


def _claim2(scale):
  return [job_queue.Job(f"search_{f}", "find_tickets", _search(f, scale, CLAIM_BRANCHES + INIT_BRANCHES,
                                                      _spread(f, scale, INIT_BRANCHES)))
          for f in _families(2, scale)]


def _claim3(scale):
  return [job_queue.Job(f"search_{f}", "find_tickets", _search(f, scale, CLAIM_BRANCHES))
          for f in claim_families(3)] + [
      job_queue.Job(f"search_{f}_rewind0", "find_tickets",
          _search(f, scale, ("ticket",), {"lottery.rewind_step": "0it"}))
      for f in claim_families(3)]


def _claim4(scale):
  jobs = [job_queue.Job(f"search_{f}", "find_tickets", _search(f, scale, CLAIM_BRANCHES + ("one_shot",),
                                                      _spread(f, scale, ("one_shot",))))
          for f in claim_families(4)]
  for family in claim_families(4):
    for part in configs.get_config(family).prune.parts:
      parts = {p: p == part for p in configs.get_config(family).prune.parts}
      jobs.append(job_queue.Job(f"search_{family}_only_{part}", "find_tickets",
                      _search(family, scale, ("ticket",), {"prune.parts": parts})))
  return jobs


def _claim5(scale):
  """One transfer job per direction between claim-5 families, both directions of a pair on one
  recipe, so that each family's searches train once. The recipe is the first direction's
  source family's (the β-VAE's: its z_dim, which the authors' decoder and generator share, and
  batch size) with the longer of the two step counts (the transfer trains the target with the
  source's budget, and a DCGAN target at the β-VAE's 2000 cpu-scale steps is too weak a GAN).
  The second direction copies the first's finished searches: its source search is the first's
  target search (which also trained the random tickets), its target search the first's source
  search, to which it adds the random tickets."""
  jobs, first_of = [], {}     # first_of: pair of families -> the pair's first job
  for direction, (source, target) in configs.TRANSFER_DIRECTIONS.items():
    if source not in claim_families(5) or target not in claim_families(5):
      continue
    first = first_of.get(frozenset((source, target)))
    recipe = base_config(first.config.family if first else source, scale)
    config = base_config(source, scale)
    config.model.z_dim = recipe.model.z_dim
    config.train.batch_size = recipe.train.batch_size
    config.train.steps = max(config.train.steps, base_config(target, scale).train.steps)
    config.lottery.rewind_step = _rewind(SCALE_SETTINGS[scale]["rewind"], config.train.steps)
    config.lottery.levels = scaled_levels(SCALE_SETTINGS[scale]["transfer_levels"], scale)
    config.lottery.branches = CLAIM_BRANCHES
    config.transfer.direction = direction
    job = job_queue.Job(f"transfer_{direction}", "transfer", configs.for_binary(config, "transfer"))
    if first:
      job.source, job.reuse = first.name, (("target", "source"), ("source", "target"))
    else:
      first_of[frozenset((source, target))] = job
    jobs.append(job)
  return jobs


def _claim6(scale):
  """One early-bird job per family and channel sparsity; the dense baselines (the same runs at
  every sparsity) are trained by the first sparsity's job and copied by the others."""
  jobs = []
  for family in claim_families(6):
    first = ""
    for sparsity in SCALE_SETTINGS[scale]["eb_sparsities"]:
      config = base_config(family, scale)
      config.early_bird.update(sparsity=sparsity, scratch_baseline=True, dense_baseline=True)
      name = f"early_bird_{family}_{sparsity:g}"
      dense = tuple((d, d) for d in [f"dense_seed{s}" for s in config.tickets.seeds]
                    + ["samples_dense.png"])
      jobs.append(job_queue.Job(name, "early_bird", configs.for_binary(config, "early_bird"),
                      source=first, reuse=dense if first else ()))
      first = first or name
  return jobs


def _claim7(scale):
  """Each family's claim-1 search, then the stability of its tickets (which waits for it: a
  stability job run beside a half-finished search would finish with its levels so far)."""
  return [job_queue.Job(f"search_{f}", "find_tickets", _search(f, scale, CLAIM_BRANCHES))
          for f in _families(7, scale)] + [
      job_queue.Job(f"stability_{f}", "stability", _search(f, scale, CLAIM_BRANCHES),
          source=f"search_{f}") for f in _families(7, scale)]


CLAIMS: dict[int, tuple[str, Callable[[str], list[job_queue.Job]]]] = {
    1: ("Winning tickets by IMP with late resetting", _claim1),
    2: ("Tickets beat pruning at initialisation", _claim2),
    3: ("Late resetting matters", _claim3),
    4: ("Pruning both halves beats one; iterative beats one-shot", _claim4),
    5: ("Tickets transfer between the VAE and the GAN", _claim5),
    6: ("Early-bird tickets", _claim6),
    7: ("Stability: linear mode connectivity of tickets", _claim7),
}


def jobs_for(claims: list[int], scale: str) -> list[job_queue.Job]:
  """The jobs of ``claims`` in run order, shared searches merged (their branches and their
  ``lottery.branch_levels`` groups united)."""
  merged: dict[str, job_queue.Job] = {}
  for claim in claims:
    for job in CLAIMS[claim][1](scale):
      if job.name in merged and job.binary == "find_tickets":
        lottery = merged[job.name].config.lottery
        extra = tuple(b for b in job.config.lottery.branches if b not in lottery.branches)
        lottery.branches = tuple(lottery.branches) + extra
        groups = [g for g in (lottery.branch_levels, job.config.lottery.branch_levels) if g]
        lottery.branch_levels = ";".join(dict.fromkeys(";".join(groups).split(";"))) if groups \
            else ""
      else:
        merged.setdefault(job.name, job)
  order = {"find_tickets": 0, "transfer": 1, "early_bird": 2, "stability": 3}
  headline = {f"search_{f}" for f in claim_families(2)}   # claim 1 of the paper's 3 families

  def key(job: job_queue.Job) -> tuple[int, int, int, int]:
    # Claim 1's searches of the paper's three families (the question the run answers), then
    # the families most claims rest on, then the shorter chain of trainings (steps x levels).
    c = job.config
    cost = c.train.steps * (c.lottery.levels if "lottery" in c else 1)
    return (job.name not in headline,
            -len(families_lib.get(c.family).reproduction.claims), order[job.binary], cost)
  return sorted(merged.values(), key=key)

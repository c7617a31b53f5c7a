"""Bad invocations of every binary: one line naming the problem, exit 2, no traceback, and an
existing workdir left byte-identical.

Each case runs ``experiments/<binary>.py`` with its arguments as ``python <binary> <args>`` would,
in a process of its own; the processes are forked from one server process (this file run as a
script) that imported the library once, so the 34 cases do not each pay ~3 CPU-s of imports.
"""
import hashlib
import json
import os
import runpy
import subprocess
import sys
import traceback

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}

NO_WORKDIR = "<no --workdir>"
# binary -> (args, text the output must contain). {workdir}: a copy of a fake workdir, added as
# --workdir unless the args give one or NO_WORKDIR; {tmp}: the test's tmp_path (bad config files).
CASES = {
    "train": [
        (["--config=ae_fmnist.py:smoke", "--config.train.batch_size=0"],
         "train.batch_size must be >= 1, got 0"),
        (["--config=no_such.py"], "no_such.py"),
        (["--config={tmp}/bad_syntax.py"], "syntax error in {tmp}/bad_syntax.py line 2"),
        (["--config=dcgan_fmnist.py:nope"], "unknown preset 'nope'"),
        (["--config=ae_fmnist.py:smoke", "--config.train.nope=1"], "train.nope is not a config"),
        (["--config=ae_fmnist.py:smoke", "--config.train.steps=abc"], "--config.train.steps=abc"),
        (["--config=ae_fmnist.py:smoke", NO_WORKDIR], "missing required flag --workdir"),
        (["--config=ae_fmnist.py:smoke", "--workdir="], "--workdir is empty"),
        (["--config=ae_fmnist.py:smoke", "--config.lottery.levels=3"],
         "lottery.levels is not read by train"),
        (["--config=dcgan_cifar10.py:smoke"], "needs eval.inception_weights"),
        (["--config=vae_fmnist.py:smoke", "--config.data.limit=64",
          "--config.eval.cache_dir={tmp}/cache"], "data.limit=64 leaves 64 training images"),
    ],
    "find_tickets": [
        (["--config=ae_fmnist.py:smoke", "--config.train.steps=-5"],
         "train.steps must be >= 1, got -5"),
        (["--config=ae_fmnist.py:smoke", "--config.early_bird.sparsity=0.5"],
         "early_bird.sparsity is not read by find_tickets"),
        (["--config=ae_fmnist.py:smoke", "--config.lottery.rate=1.5"], "lottery.rate must be in"),
        (["--config=ae_fmnist.py:smoke", "--config.tickets.seeds=0,0"],
         "tickets.seeds has repeats"),
        (["--config=ae_fmnist.py:smoke", "--config.family=nope"], "unknown model family 'nope'"),
        (["--config=ae_fmnist.py:smoke", "--config.data.name=svhn"], "svhn"),
        (["--config=ae_fmnist.py:smoke", "stray"], "unexpected argument(s) ['stray']"),
        (["--config={tmp}/no_get_config.py"], "defines no get_config()"),
        (["--config=dcgan_fmnist.py:smoke",
          "--config.prune.exclude=generator/convt0,discriminator/head"],
         "prune.exclude entry 'generator/convt0,discriminator/head' matches no layer of dcgan"),
    ],
    "early_bird": [
        (["--config=ae_fmnist.py:smoke", "--config.early_bird.window=1"],
         "early_bird.window must be >= 2"),
        (["--config=ae_fmnist.py:smoke", "--config.early_bird.part_sparsity=generator=0.5"],
         "early_bird.part_sparsity names 'generator'"),
        (["--config=ae_fmnist.py:smoke", "--config.transfer.direction=gan_to_vae"],
         "transfer.direction is not read by early_bird"),
    ],
    "transfer": [
        (["--config=ae_fmnist.py:smoke"], "transfer.direction='vae_to_gan' needs a vae config"),
        (["--config=vae_fmnist.py:smoke", "--config.early_bird.sparsity=0.5"],
         "early_bird.sparsity is not read by transfer"),
        (["--config.transfer.init_from=source"], "missing required flag --config"),
    ],
    "report": [
        (["--workdir={tmp}/missing"], "--workdir='{tmp}/missing' is not a directory"),
        (["--workdir={workdir}"], "no finished level (level_*/done.json) in '{workdir}'"),
        (["--workdir={tmp}/finished", "--metric=nope"], "--metric='nope' is not a numeric column"),
        ([NO_WORKDIR], "missing required flag --workdir"),
    ],
    "reproduce": [
        (["--scale=smoke", "--claims=1,9"], "unknown claim(s) [9]"),
        (["--scale=smoke", "--workers=0"], "--workers must be >= 1, got 0"),
        (["--scale=smoke", "--claims=1", "--jobs=search_ae,search_nope"],
         "--jobs: ['search_nope'] are not jobs of claims [1] at scale 'smoke'; those are: "
         "search_ae"),
        (["--scale=smoke", "--jobs=stability_ae"],
         "--jobs: ['stability_ae'] need ['search_ae'] finished first"),
        (["--scale=smoke", "--status", "--workdir={tmp}/missing"],
         "--status: no workdir '{tmp}/missing' (nothing has run there)"),
    ],
}


def _digest(directory) -> dict[str, str]:
  """{relative path: sha256} of every file and directory under ``directory``."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), directory) + "/"] = "dir"
    for name in files:
      with open(os.path.join(root, name), "rb") as f:
        out[os.path.relpath(os.path.join(root, name), directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def _fake_workdir(path) -> None:
  """A workdir with a config.json and a run's files (no finished level)."""
  os.makedirs(path / "level_00" / "checkpoints")
  with open(path / "config.json", "w") as f:
    json.dump({"family": "ae", "train": {"steps": 6}}, f)
  (path / "metrics.jsonl").write_text('{"step": 2, "loss": 0.5}\n')
  (path / "level_00" / "checkpoints" / "2").write_bytes(bytes(range(256)))


def _argv(binary, args, tmp_path, workdir):
  fill = lambda s: s.format(tmp=tmp_path, workdir=workdir)
  argv = [fill(a).replace("--config=", "--config=" + CONFIGS + "/", 1)
          if a.startswith("--config=") and "{tmp}" not in a else fill(a) for a in args]
  if binary != "report" and not any(a.startswith("--workdir") or a == NO_WORKDIR for a in argv):
    argv.append(f"--workdir={workdir}")
  return [a for a in argv if a != NO_WORKDIR]


def serve(cases_path: str) -> None:
  """Runs every case of ``cases_path`` (JSON: [{script, argv, cwd, out}]) in a forked child, as
  the interpreter would run the script: its exit status and output (stdout and stderr, with a
  traceback for an uncaught exception) go to ``out`` and ``out.status``."""
  # Imported once, before the forks. pylint: disable=g-import-not-at-top,unused-import
  from lth_jax import early_bird, experiment_main, lottery, report  # noqa: F401
  from lth_jax import reproduction, training, transfer  # noqa: F401
  with open(cases_path) as f:
    cases = json.load(f)
  for case in cases:
    pid = os.fork()
    if pid == 0:
      code = 1
      try:
        os.chdir(case["cwd"])
        fd = os.open(case["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [case["script"], *case["argv"]]
        try:
          runpy.run_path(case["script"], run_name="__main__")
          code = 0
        except SystemExit as e:
          code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
          if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        except BaseException:  # pylint: disable=broad-except  # as the interpreter reports it
          traceback.print_exc()
      finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access
    _, status = os.waitpid(pid, 0)
    with open(case["out"] + ".status", "w") as f:
      f.write(str(os.waitstatus_to_exitcode(status)))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """{binary: [(args, expected, exit status, output, workdir, digest before, tmp_path)]}, every
  case run by one server process."""
  tmp_path = tmp_path_factory.mktemp("cli")
  (tmp_path / "bad_syntax.py").write_text("def get_config():\n  return {\n")
  (tmp_path / "no_get_config.py").write_text("CONFIG = {}\n")
  finished = tmp_path / "finished"
  os.makedirs(finished / "level_00")
  (finished / "config.json").write_text(json.dumps({"family": "ae"}))
  (finished / "level_00" / "done.json").write_text(json.dumps(
      [{"level": 0, "branch": "dense", "seed": 0, "sparsity": 0.0, "recon_mse": 0.5}]))
  finished_before = _digest(finished)
  cases, plan = [], []
  for binary, binary_cases in CASES.items():
    for args, expected in binary_cases:
      workdir = tmp_path / f"work_{len(cases)}"
      _fake_workdir(workdir)
      cases.append({"script": os.path.join(ROOT, "experiments", f"{binary}.py"),
                    "argv": _argv(binary, args, tmp_path, workdir), "cwd": str(tmp_path),
                    "out": str(tmp_path / f"case_{len(cases)}.txt")})
      plan.append((binary, args, expected, workdir, _digest(workdir)))
  with open(tmp_path / "cases.json", "w") as f:
    json.dump(cases, f)
  server = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path / "cases.json")],
                          capture_output=True, text=True, timeout=600, env=ENV,
                          cwd=ROOT)
  assert server.returncode == 0, server.stdout[-2000:] + server.stderr[-2000:]
  out = {binary: [] for binary in CASES}
  for case, (binary, args, expected, workdir, before) in zip(cases, plan):
    with open(case["out"]) as f:
      output = f.read()
    with open(case["out"] + ".status") as f:
      status = int(f.read())
    out[binary].append((args, expected.format(tmp=tmp_path, workdir=workdir), status, output,
                        workdir, before))
  out["finished unchanged"] = _digest(finished) == finished_before
  out["missing not created"] = not os.path.exists(tmp_path / "missing")
  return out


@pytest.mark.parametrize("binary", list(CASES))
def test_bad_invocations_are_refused_before_any_work(binary, results):
  failures = []
  for args, expected, status, output, workdir, before in results[binary]:
    problems = []
    if status != 2:
      problems.append(f"exit {status}")
    if "Traceback" in output:
      problems.append("a traceback")
    if expected not in output:
      problems.append(f"no {expected!r}")
    if _digest(workdir) != before:
      problems.append("the workdir changed")
    if problems:
      failures.append(f"{binary} {' '.join(args)}: {', '.join(problems)}\n{output[-1500:]}")
  assert not failures, "\n\n".join(failures)
  assert results["finished unchanged"] and results["missing not created"]


def test_at_least_twenty_cases_over_every_binary():
  assert sum(len(c) for c in CASES.values()) >= 20
  assert set(CASES) == {"train", "find_tickets", "early_bird", "transfer", "report", "reproduce"}


if __name__ == "__main__":
  serve(sys.argv[1])

"""A binary stopped by SIGTERM saves the step it reached and exits 143 with one line.

The runner's part (stop after the call in flight, checkpoint, resume bit-identical) is tested
in test_parallel.py; here the signal handlers and a real binary.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from lth_jax import checkpointing, preemption
from tests.conftest import needs_fmnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def handlers():
  """Installs the handlers for one test and puts the previous ones back."""
  before = {n: signal.getsignal(n) for n in (signal.SIGTERM, signal.SIGINT)}
  assert preemption.handle_signals()
  yield
  preemption.clear()
  for number, handler in before.items():
    signal.signal(number, handler)


def test_first_signal_requests_a_stop_and_a_second_ctrl_c_interrupts(handlers):
  assert preemption.requested() is None
  preemption.check()                                  # nothing asked: no stop
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.01)                                    # the handler runs between bytecodes
  assert preemption.requested() == "SIGTERM"
  os.kill(os.getpid(), signal.SIGTERM)                # a repeated SIGTERM changes nothing
  assert preemption.requested() == "SIGTERM"
  with pytest.raises(preemption.Preempted) as stop:
    preemption.check()
  assert (stop.value.step, stop.value.exit_code) == (None, 143)
  with pytest.raises(KeyboardInterrupt):              # Ctrl-C after a stop was asked: at once
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
  assert preemption.Preempted("SIGINT").exit_code == 130
  assert preemption.Preempted("a test").exit_code == 1
  assert not preemption.handle_signals(process_count=2)   # multi-process: not installed


@needs_fmnist
def test_sigterm_stops_a_binary_at_the_step_it_reached_with_a_checkpoint(tmp_path):
  """No cadence checkpoint (``checkpoint_every=0``) and a run far from its end: the only
  checkpoint is the one the stop writes, at the step the message names."""
  workdir = tmp_path / "stopped"
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
       f"--config={ROOT}/experiments/configs/ae_fmnist.py:smoke", f"--workdir={workdir}",
       "--config.train.steps=1000000", "--config.train.checkpoint_every=0",
       "--config.train.log_every=1"],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert "SIGTERM: stopping after the training call in flight, saved" in stderr  # when it came
  last = stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"stopped by SIGTERM \(saved at step (\d+)\); run the same command again "
                       r"to resume", last)
  assert match, stderr[-3000:]
  step = int(match.group(1))
  logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
  assert 1 <= max(logged) <= step < 1000000
  with checkpointing.Manager(pathlib.Path(workdir, "checkpoints")) as manager:
    assert manager.all_steps() == [step]

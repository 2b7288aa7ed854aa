"""Multi-host training for real: 2 processes x 2 simulated CPU devices joined by jax.distributed
(JAX's coordinator service and gloo collectives across processes), started by
`mobilenet_jax.launch` on 127.0.0.1.

The module's runs (one fixture; every wait bounded, every child process group killed at the end):
- `reference`: `python -m mobilenet_jax.launch --processes=2 --devices_per_process=2 -- ...`,
  uninterrupted, recording which examples each process reads;
- `single`: the same job as one process with 4 devices, fed the same global batches;
- one 2-process run started four times: process 1 SIGKILLed after a committed checkpoint (process
  0 must notice its dead peer); restarted and SIGTERMed (both processes); restarted and both
  SIGKILLed after a new committed checkpoint; restarted to the end.
The random kill moments come from a printed seed (`KILL_SEED=<seed>` replays them).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from mobilenet_jax import launch, train
from mobilenet_jax.data import digits

import fast_compile
import job_runs
from job_runs import committed_steps, resumed_from, steps_run, without_timing

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
PROCESSES, DEVICES_PER_PROCESS = 2, 2
NUM_STEPS, CHECKPOINT_EVERY, STEP_DELAY = 14, 2, 0.3
HEARTBEAT_S = 10
# A dead peer: JAX's coordination service declares it dead after HEARTBEAT_S without heartbeats
# and stops the others; the margin covers its polling and a loaded 2-core machine.
DEAD_PEER_BOUND_S = HEARTBEAT_S + 30
EVAL_BATCH = 64  # 360 test digits are not a multiple of it: each process pads its last batch
OVERRIDES = {**job_runs.JOB_OVERRIDES, "eval_batch_size": EVAL_BATCH, "num_train_steps": NUM_STEPS,
             "checkpoint_every_steps": CHECKPOINT_EVERY}


def _flags(workdir, data_dir, **changes):
  overrides = {**OVERRIDES, "dataset.data_dir": data_dir, **changes}
  return [f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def _env(cache, **faults):
  """The children's environment: fast compilation, a shared compilation cache (process 0 writes
  it, JAX never lets the other processes do so), tests/ importable (`-m reliability_run`)."""
  env = fast_compile.child_env(
      JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]))
  env.update({f"RELIABILITY_{k.upper()}": str(v) for k, v in faults.items()})
  return env


class Start:
  """One start of the 2-process job: its processes, their output files, when it began."""

  def __init__(self, name, tmp, workdir, data_dir, cache, **faults):
    self.name, self.workdir = name, workdir
    self.logs = [str(tmp / f"{name}.{i}.log") for i in range(PROCESSES)]
    files = [open(path, "w") for path in self.logs]
    self.processes = launch.start(
        _flags(workdir, data_dir), processes=PROCESSES, devices_per_process=DEVICES_PER_PROCESS,
        heartbeat_timeout_s=HEARTBEAT_S, main_module="reliability_run", env=_env(cache, **faults),
        output=lambda i: files[i], cwd=ROOT)
    for f in files:
      f.close()
    self.started = time.monotonic()
    self.delay = self.signalled = self.rc = None
    self.ended, self.committed = {}, []

  def output(self, i=0):
    with open(self.logs[i]) as f:
      return f.read()

  def outputs(self):
    return "\n".join(f"--- process {i}:\n{self.output(i)[-3000:]}" for i in range(PROCESSES))

  def wait_until(self, condition, what):
    job_runs.wait_until(condition, self.processes, what, output=self.outputs)

  def signal_at_random_moment(self, ready, max_delay, signum, rng, which=range(PROCESSES)):
    """Sends `signum` to processes `which` at a random moment after `ready()` holds."""
    self.wait_until(ready, "the moment to send the signal")
    self.delay = rng.uniform(0.0, max_delay)
    time.sleep(self.delay)
    self.signalled = time.monotonic()
    for i in which:
      self.processes[i].send_signal(signum)

  def wait(self, timeout_s=400):
    """Waits for every process (killing all after `timeout_s`); records when each ended."""
    deadline = time.monotonic() + timeout_s
    for i, p in enumerate(self.processes):
      try:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        launch.kill(self.processes)
        p.wait()
      self.ended[i] = time.monotonic()
    self.rc = [p.returncode for p in self.processes]
    self.committed = committed_steps(self.workdir)
    return self

  def train_from(self):
    """{process: the step its train input started from} (printed by tests/reliability_run.py)."""
    found = {}
    for i in range(PROCESSES):
      for step, process in re.findall(r"^TRAIN_FROM (\d+) PROCESS (\d+)$", self.output(i), re.M):
        found[int(process)] = int(step)
    return found

  def describe(self):
    return (f"{self.name}: rc {self.rc}, signal after {self.delay}s, checkpoints "
            f"{job_runs.listing(self.workdir)}\n{self.outputs()}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  data_dir, cache, shares = str(tmp / "tfds"), str(tmp / "xla_cache"), str(tmp / "shares")
  os.makedirs(shares)
  ref_dir, single_dir, chain_dir = str(tmp / "reference"), str(tmp / "single"), str(tmp / "chain")
  seed, rng = job_runs.kill_rng("test_multihost")
  info = {"seed": seed, "reference_dir": ref_dir, "single_dir": single_dir, "chain_dir": chain_dir,
          "shares": shares}
  children = []

  def run(command, env, name):
    with open(tmp / f"{name}.log", "w") as log:
      process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)
    children.append(process)
    return process

  def finish(process, name):
    try:
      process.wait(timeout=400)
    finally:
      launch.kill([process])
    info[name] = {"rc": process.returncode, "output": (tmp / f"{name}.log").read_text()}

  started = time.monotonic()
  try:
    # The command a user runs (its flags after --), as a subprocess.
    reference = run([sys.executable, "-m", "mobilenet_jax.launch", f"--processes={PROCESSES}",
                     f"--devices_per_process={DEVICES_PER_PROCESS}",
                     f"--heartbeat_timeout_s={HEARTBEAT_S}", "--main_module=reliability_run",
                     "--", *_flags(ref_dir, data_dir, tensorboard=True)],
                    _env(cache, shares_dir=shares), "reference")
    single_env = _env(str(tmp / "xla_cache_single"), emulate_processes=PROCESSES)
    single_env["JAX_NUM_CPU_DEVICES"] = str(PROCESSES * DEVICES_PER_PROCESS)
    single = run([sys.executable, "-m", "reliability_run",
                  *_flags(single_dir, data_dir, checkpoint_every_steps=0)], single_env, "single")
    # The chain starts once the reference has compiled its steps (and cached them).
    job_runs.wait_until(lambda: os.path.exists(os.path.join(ref_dir, train.METRICS_FILE)),
                        [reference], "the reference's first step",
                        output=lambda: (tmp / "reference.log").read_text())
    finishers = [threading.Thread(target=finish, args=(reference, "reference")),
                 threading.Thread(target=finish, args=(single, "single"))]
    for t in finishers:
      t.start()

    def chain_start(name, **faults):
      start = Start(name, tmp, chain_dir, data_dir, cache, **faults)
      children.extend(start.processes)
      return start

    # 1. Process 1 SIGKILLed after the first committed checkpoint: process 0 must stop.
    first = chain_start("kill_one", step_delay=STEP_DELAY)
    first.signal_at_random_moment(lambda: committed_steps(chain_dir), STEP_DELAY, signal.SIGKILL,
                                  rng, which=[1])
    info["kill_one"] = first.wait()
    # 2. Restart (both resume), then SIGTERM to both at a random moment after its first step.
    ready = str(tmp / "ready")
    second = chain_start("sigterm", step_delay=STEP_DELAY, ready_file=ready)
    second.signal_at_random_moment(lambda: os.path.exists(ready), STEP_DELAY, signal.SIGTERM, rng)
    info["sigterm"] = second.wait()
    # 3. Restart, then SIGKILL to both once a new checkpoint is committed.
    resumed = committed_steps(chain_dir)[-1]
    third = chain_start("kill_both", step_delay=STEP_DELAY)
    third.signal_at_random_moment(lambda: committed_steps(chain_dir)[-1] > resumed, STEP_DELAY,
                                  signal.SIGKILL, rng)
    info["kill_both"] = third.wait()
    # 4. Restart to the end.
    info["final"] = chain_start("final").wait()
    for t in finishers:
      t.join()
  finally:
    launch.kill(children)
  info["wall_s"] = time.monotonic() - started
  print(f"test_multihost: the runs took {info['wall_s']:.0f}s")
  return info


def _losses(records):
  return [r["train_loss"] for r in records if "train_loss" in r]


def test_launch_runs_the_job_as_two_processes_writing_one_set_of_files(runs):
  reference = runs["reference"]
  assert reference["rc"] == 0, reference["output"][-5000:]
  workdir = runs["reference_dir"]
  assert committed_steps(workdir)[-1] == NUM_STEPS
  records = train.read_metrics(workdir)  # written by process 0 only: each step once
  assert [r["step"] for r in records] == list(range(1, NUM_STEPS + 1)) + [NUM_STEPS]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["batch_size"] == 32
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents"), events
  # Progress lines come from process 0 only; both processes trained from step 0.
  assert not re.search(r"^\[process 1\] step \d", reference["output"], re.M)
  assert steps_run(reference["output"]) == list(range(1, NUM_STEPS + 1))
  assert sorted(re.findall(r"TRAIN_FROM 0 PROCESS (\d)", reference["output"])) == ["0", "1"]


def test_first_losses_equal_one_process_with_the_same_devices_and_batches(runs):
  """Same 4 devices, global batch, seed and global batches (tests/reliability_run.py feeds the one
  process what the two hosts feed): the first two losses agree to 1e-5 (relative).

  Loss 1 checks the global batch and the forward pass (BatchNorm over the global batch across
  processes), loss 2 the update from the gradient averaged across processes. Only the first two:
  the runs sum across devices in another order (gloo's ring between processes, XLA's all-reduce
  within one), and this network amplifies float32 rounding from step to step (BatchNorm over 8
  images per device at 1x1-2x2 maps), so from step 3 on the losses drift apart (measured, and
  printed below: 4.6e-7 relative at step 2, 4.3e-4 at step 3).
  """
  assert runs["single"]["rc"] == 0, runs["single"]["output"][-5000:]
  two = _losses(train.read_metrics(runs["reference_dir"]))
  one = _losses(train.read_metrics(runs["single_dir"]))
  print("2 processes:", two, "\n1 process:  ", one)
  assert len(two) == len(one) == NUM_STEPS
  np.testing.assert_allclose(two[:2], one[:2], rtol=1e-5)


def test_each_process_reads_a_disjoint_share_and_eval_scores_every_example_once(runs):
  arrays = digits.digits_arrays()
  for split, count in (("train", digits.NUM_TRAIN), ("test", digits.NUM_TEST)):
    shares = []
    for i in range(PROCESSES):
      with open(os.path.join(runs["shares"], f"{split}.{i}-of-{PROCESSES}.json")) as f:
        share = json.load(f)
      assert share["jax_process_index"] == i  # read by that process, from jax.distributed
      shares.append(share["ids"])
    assert not set(shares[0]) & set(shares[1]), split
    assert sorted(shares[0] + shares[1]) == sorted(arrays[split][2].tolist()), split
    assert abs(len(shares[0]) - len(shares[1])) <= 1 and len(shares[0]) + len(shares[1]) == count
  (evaluation,) = [r for r in train.read_metrics(runs["reference_dir"]) if "eval_top1" in r]
  assert digits.NUM_TEST % EVAL_BATCH and evaluation["eval_examples"] == digits.NUM_TEST
  assert evaluation["ema_eval_examples"] == digits.NUM_TEST


def test_dead_peer_stops_the_other_process_within_the_bound(runs):
  """Process 1 SIGKILLed: process 0 exits non-zero on its own, saying another task died."""
  start = runs["kill_one"]
  assert start.rc[1] == -signal.SIGKILL and start.rc[0] not in (0, -signal.SIGKILL), \
      start.describe()
  noticed_s = start.ended[0] - start.signalled
  assert noticed_s < DEAD_PEER_BOUND_S, start.describe()
  assert re.search(r"another task died|tasks are unhealthy|Connection closed by peer",
                   start.output(0)), start.describe()
  print(f"process 0 stopped {noticed_s:.1f}s after process 1 was killed")


def test_restart_after_a_dead_peer_resumes_on_both_processes(runs):
  killed, restarted = runs["kill_one"], runs["sigterm"]
  assert killed.committed and killed.committed[-1] >= CHECKPOINT_EVERY, killed.describe()
  assert restarted.train_from() == {i: killed.committed[-1] for i in range(PROCESSES)}, \
      restarted.describe()


def test_sigterm_to_both_saves_the_same_step_and_both_exit_zero(runs):
  start = runs["sigterm"]
  assert start.rc == [0] * PROCESSES and "preempted" in start.output(0), start.describe()
  last_step = steps_run(start.output(0))[-1]
  assert start.committed[-1] == last_step < NUM_STEPS, start.describe()
  # One checkpoint of that step (Orbax's multi-process save), from which both processes resume.
  assert runs["kill_both"].train_from() == {i: last_step for i in range(PROCESSES)}, \
      runs["kill_both"].describe()


def test_sigkill_to_both_after_a_commit_resumes_from_it_and_ends_equal_to_the_uninterrupted_run(
    runs):
  killed, final = runs["kill_both"], runs["final"]
  assert killed.rc == [-signal.SIGKILL] * PROCESSES, killed.describe()
  assert killed.committed[-1] > runs["sigterm"].committed[-1], killed.describe()
  assert final.rc == [0] * PROCESSES, final.describe()
  assert final.train_from() == {i: killed.committed[-1] for i in range(PROCESSES)}, \
      final.describe()
  assert resumed_from(final.output(0)) == killed.committed[-1]
  job_runs.assert_same_state(runs["reference_dir"], runs["chain_dir"], NUM_STEPS)
  # metrics.jsonl reads as one run, equal (timings aside) to the uninterrupted one's.
  assert without_timing(train.read_metrics(runs["chain_dir"])) == without_timing(
      train.read_metrics(runs["reference_dir"]))


def test_launcher_kills_the_processes_left_after_a_failure():
  """Its fallback when a process fails and another does not stop on its own."""
  procs = [subprocess.Popen(["sh", "-c", "sleep 0.2; exit 3"], start_new_session=True),
           subprocess.Popen(["sleep", "60"], start_new_session=True)]
  lines = []
  started = time.monotonic()
  try:
    codes, first_failed = launch.wait(procs, stop_after_failure_s=1.0, log=lines.append)
  finally:
    launch.kill(procs)
  assert codes == [3, -signal.SIGKILL] and first_failed == 0, lines
  assert time.monotonic() - started < 30
  assert lines[0] == "launch: process 0 exited with status 3" and "killing them" in lines[1]


def test_launcher_without_main_flags_says_what_to_pass():
  result = subprocess.run([sys.executable, "-m", "mobilenet_jax.launch", "--processes=2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and "--workdir" in result.stderr, result.stderr


def test_main_wants_the_three_peer_flags_together():
  result = subprocess.run([sys.executable, "-m", "mobilenet_jax.main", "--workdir=unused",
                           "--num_processes=2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode != 0 and "--coordinator_address" in result.stderr, result.stderr

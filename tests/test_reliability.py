"""Long runs survive kills: SIGKILL at a random moment (after a committed checkpoint) and in the
middle of a checkpoint save, SIGTERM (preemption), a full disk and NaN gradients (clear errors,
only complete and finite checkpoints), then the same command finishes the run with the same final
state, bit for bit, and the same metrics.jsonl as an uninterrupted run. Checkpoints of another
model are refused.

Every run is the real command line in a subprocess (`python -m mobilenet_jax.main`, or
tests/reliability_run.py: the same job with delays or a self-kill injected from environment
variables). The subprocesses share a persistent XLA compilation cache, so only the first two
(run concurrently) compile.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from mobilenet_jax import train

import fast_compile
import job_runs
from job_runs import (committed_steps, file_digests, read_state, resumed_from, steps_run,
                      without_timing)

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
NUM_STEPS, CHECKPOINT_EVERY, STEP_DELAY = 18, 3, 0.15
COPIED_STEP = NUM_STEPS - CHECKPOINT_EVERY  # the latest checkpoint of the faulty restarts' copy
OVERRIDES = {**job_runs.JOB_OVERRIDES, "eval_batch_size": 360, "num_train_steps": NUM_STEPS,
             "checkpoint_every_steps": CHECKPOINT_EVERY}


def _command(workdir, script=None):
  start = [os.path.join(TESTS, "reliability_run.py")] if script else ["-m", "mobilenet_jax.main"]
  return [sys.executable, *start, f"--workdir={workdir}",
          *(f"--config.{key}={value}" for key, value in OVERRIDES.items())]


def _start(workdir, cache, script=False, **faults):
  # JAX puts XLA's GPU autotuning cache inside the compilation cache's folder and so keys every
  # entry on that folder's path (`jax_persistent_cache_enable_xla_caches`): without it, the
  # full-disk restart's copy of the cache would miss and compile everything again.
  env = fast_compile.child_env(JAX_COMPILATION_CACHE_DIR=cache,
                               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                               JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES="none")
  env.update({f"RELIABILITY_{k.upper()}": str(v) for k, v in faults.items()})
  process = subprocess.Popen(_command(workdir, script), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  process.started = time.monotonic()
  return process


def _wait_for(path, process):
  job_runs.wait_until(lambda: os.path.exists(path), [process], f"{path} was written")


def _signal_at_random_moment(process, ready, max_delay, signum, rng):
  """Sends `signum` at a uniformly random moment after `ready()` holds; returns the delay."""
  job_runs.wait_until(ready, [process], "the moment to send the signal")
  delay = rng.uniform(0.0, max_delay)
  time.sleep(delay)
  process.send_signal(signum)
  return delay


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run; the same run started four times: killed at a random moment after its
  first committed checkpoint, killed in the middle of a save, preempted, finished; and,
  concurrently, two restarts of a copy of the uninterrupted run from its COPIED_STEP checkpoint:
  out of disk space, then hit by NaN gradients. The random moments come from a printed seed
  (`KILL_SEED=<seed>` replays them)."""
  tmp = tmp_path_factory.mktemp("reliability")
  cache, a, b, c, d = (str(tmp / n) for n in ("xla_cache", "uninterrupted", "interrupted", "faulty",
                                                "locked"))
  seed, rng = job_runs.kill_rng("test_reliability")
  info = {"uninterrupted": a, "interrupted": b, "faulty": c, "locked": d, "seed": seed}

  def record(name, process, workdir, delay=None):
    output = process.communicate(timeout=400)[0]
    committed = committed_steps(workdir)
    info[name] = {
        "rc": process.returncode, "output": output, "delay": delay, "seed": seed,
        "wall_s": time.monotonic() - process.started, "committed": committed,
        "listing": job_runs.listing(workdir),
        "metrics": train.read_metrics(workdir) if os.path.exists(
            os.path.join(workdir, train.METRICS_FILE)) else [],
        "finite": {step: all(np.isfinite(x).all()
                             for x in jax.tree.leaves(read_state(workdir, step)))
                   for step in committed}}

  def faulty_restarts():
    record("reference", reference, a)
    shutil.copytree(a, c, ignore=shutil.ignore_patterns(str(NUM_STEPS)))  # latest: COPIED_STEP
    # Its own copy of the compilation cache: JAX would write truncated entries into it.
    full_cache = shutil.copytree(cache, str(tmp / "xla_cache_full"))
    record("disk_full", _start(c, full_cache, script=True, file_size_limit=256 * 1024), c)
    record("nan", _start(c, cache, script=True, nan_batch=2), c)
    # A second job started on a workdir while a job trains there; then the first is SIGKILLed.
    ready = str(tmp / "ready_locked")
    first = _start(d, cache, script=True, step_delay=3, ready_file=ready)
    try:
      _wait_for(ready, first)
      second = _start(d, cache)
      info["second_job"] = {"rc": None, "output": second.communicate(timeout=400)[0], "delay": None,
                            "seed": seed, "listing": job_runs.listing(d)}
      info["second_job"]["rc"] = second.returncode
    finally:
      first.kill()
      first.communicate()
    info["first_job_pid"] = first.pid

  reference = _start(a, cache)
  second_chain = threading.Thread(target=faulty_restarts)
  try:
    # The other starts begin once the reference has compiled its train step (and cached it).
    _wait_for(os.path.join(a, train.METRICS_FILE), reference)
    # SIGKILL at a random moment of the loop (a save may be in flight) once a checkpoint is
    # committed, so that the next start has something to resume from, early enough that a few
    # steps remain for the next starts.
    process = _start(b, cache, script=True, step_delay=STEP_DELAY)
    delay = _signal_at_random_moment(process, lambda: committed_steps(b), 2 * STEP_DELAY,
                                     signal.SIGKILL, rng)
    second_chain.start()
    record("sigkill", process, b, delay)
    # SIGKILL when its first checkpoint is written but not yet committed.
    record("sigkill_mid_save", _start(b, cache, script=True, kill_at_commit=1), b)
    # SIGTERM (preemption) at a random moment.
    ready = str(tmp / "ready3")
    process = _start(b, cache, script=True, step_delay=STEP_DELAY, ready_file=ready)
    record("sigterm", process, b, _signal_at_random_moment(process, lambda: os.path.exists(ready),
                                                           2 * STEP_DELAY, signal.SIGTERM, rng))
    # The same command again finishes the run, though a kill cut metrics.jsonl's last line short.
    with open(os.path.join(b, train.METRICS_FILE), "a") as f:
      f.write('{"step": 99, "train_lo')
    record("final", _start(b, cache), b)
    # And once more: the run is finished.
    record("rerun", _start(b, cache), b)
  finally:
    if second_chain.ident:
      second_chain.join()
    else:
      reference.kill()
  return info


def _describe(start):
  return (f"random seed {start['seed']}, signal after {start['delay']}s: rc {start['rc']}, "
          f"checkpoints {start['listing']}\n{start['output'][-3000:]}")


def _resumed_from(start):
  return resumed_from(start["output"])


def _latest(start):
  return start["committed"][-1] if start["committed"] else 0


def test_uninterrupted_run_finishes(runs):
  assert runs["reference"]["rc"] == 0, runs["reference"]["output"][-3000:]
  assert committed_steps(runs["uninterrupted"])[-1] == NUM_STEPS
  # The first step's line says what of it was the train step's tracing and compilation, all
  # counted from the moment the compilation began: the whole is at least the sum of its parts.
  line = re.search(r"first step done ([0-9.]+)s after its compilation began: traced in ([0-9.]+)s, "
                   r"compiled \(or loaded from the compilation cache\) in ([0-9.]+)s",
                   runs["reference"]["output"])
  assert line, runs["reference"]["output"][-3000:]
  total, traced, compiled = (float(x) for x in line.groups())
  assert traced > 0 and compiled > 0 and total >= traced + compiled - 0.15


def test_random_sigkill_then_resume_continues_from_latest_complete_checkpoint(runs):
  """Killed at a random moment after its first checkpoint was committed: the next start resumes
  from the latest committed one, never from the beginning."""
  killed = runs["sigkill"]
  assert killed["rc"] == -signal.SIGKILL, _describe(killed)
  assert _latest(killed) >= CHECKPOINT_EVERY, _describe(killed)
  assert _resumed_from(runs["sigkill_mid_save"]) == _latest(killed), _describe(
      runs["sigkill_mid_save"])


def test_sigkill_during_a_save_never_exposes_the_half_written_checkpoint(runs):
  killed = runs["sigkill_mid_save"]
  assert killed["rc"] == -signal.SIGKILL, _describe(killed)
  step = int(killed["output"].split("KILLED_BEFORE_COMMIT ")[1].split()[0])
  # Its files were written under a temporary name: not a step; the next start resumes from the
  # checkpoint before it.
  assert any(n.startswith(f"{step}.") for n in killed["listing"]), _describe(killed)
  assert step not in killed["committed"] and step > _latest(killed)
  assert _resumed_from(runs["sigterm"]) == _latest(killed), _describe(runs["sigterm"])


def test_sigterm_saves_the_current_step_and_exits_zero(runs):
  preempted = runs["sigterm"]
  assert preempted["rc"] == 0 and "preempted" in preempted["output"], _describe(preempted)
  last_step = steps_run(preempted["output"])[-1]
  assert _latest(preempted) == last_step < NUM_STEPS, _describe(preempted)
  # metrics.jsonl reads as one run up to that step: no records left by the killed starts.
  steps = [r["step"] for r in preempted["metrics"]]
  assert steps == list(range(1, last_step + 1))


def test_full_disk_is_a_clear_error_and_keeps_the_latest_complete_checkpoint(runs):
  """Restarted from COPIED_STEP with no room for checkpoint files: the save of the last fails.
  The error is printed whole on one line, near the end, not broken up or followed by tracebacks of
  the failed save's other writes (one per array, from Orbax's threads and at exit)."""
  full = runs["disk_full"]
  assert full["rc"] not in (0, -signal.SIGKILL), _describe(full)
  lines = full["output"].rstrip().splitlines()
  error = [i for i, line in enumerate(lines) if re.fullmatch(
      rf"OSError: could not write the checkpoint of step {NUM_STEPS} to .*: .*\(is the disk full "
      r"or the workdir read-only\?\); the previous complete checkpoint stays the latest: free "
      "some space or make the workdir writable, then run the same command again to resume from it",
      line)]
  assert error, _describe(full)
  after = lines[error[-1] + 1:]
  assert len(after) <= 2 and not any("Traceback" in line for line in after), _describe(full)
  assert "Event loop is closed" not in full["output"], _describe(full)
  assert full["committed"] == [COPIED_STEP], _describe(full)
  assert _resumed_from(runs["nan"]) == COPIED_STEP, _describe(runs["nan"])


def test_non_finite_gradients_stop_naming_the_step_without_a_nan_checkpoint(runs):
  """Restarted from COPIED_STEP with NaN images in its second batch (step COPIED_STEP + 2)."""
  failed = runs["nan"]
  assert failed["rc"] not in (0, -signal.SIGKILL), _describe(failed)
  assert (f"non-finite loss, gradients or update at step {COPIED_STEP + 2}" in failed["output"]
          ), _describe(failed)
  assert failed["committed"] == [COPIED_STEP], _describe(failed)
  assert failed["finite"] == {COPIED_STEP: True}, _describe(failed)
  assert [r["step"] for r in failed["metrics"]] == list(range(1, COPIED_STEP + 2))
  assert all(np.isfinite(v) for r in failed["metrics"] for v in r.values()
             if isinstance(v, float))


def test_a_last_metrics_line_cut_short_is_dropped_with_a_warning_on_resume(runs):
  """The final start found `{"step": 99, "train_lo` (no newline) at the end of metrics.jsonl."""
  final = runs["final"]
  assert final["rc"] == 0, _describe(final)
  assert re.search(r"metrics.jsonl: dropped its last line, cut short by an interrupted write",
                   final["output"]), _describe(final)
  assert all(r["step"] <= NUM_STEPS for r in final["metrics"])


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
  (tmp_path / train.METRICS_FILE).write_text('{"step": 1}\n{"step": 2, "tr\n{"step": 3}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record .*delete or "
                     "repair that line"):
    train.read_metrics(str(tmp_path))


def test_second_job_on_a_busy_workdir_is_refused_in_one_line(runs):
  second = runs["second_job"]
  assert second["rc"] == 1, _describe(second)
  lines = second["output"].strip().splitlines()
  assert lines[-1] == (f"error: another job (pid {runs['first_job_pid']}) is running in workdir "
                       f"{runs['locked']}: wait for it to end or stop it, or pass another "
                       "--workdir"), _describe(second)
  assert not any("Traceback" in line for line in lines), _describe(second)


def test_a_job_killed_with_sigkill_leaves_no_lock_that_blocks_the_next_start(runs):
  """Each start of the interrupted run follows a SIGKILLed one on the same workdir."""
  for name in ("sigkill_mid_save", "sigterm"):
    assert "another job" not in runs[name]["output"], _describe(runs[name])
    assert _resumed_from(runs[name]) is not None, _describe(runs[name])


def test_rerunning_a_finished_run_says_so_and_adds_no_record(runs):
  rerun = runs["rerun"]
  assert rerun["rc"] == 0 and "is finished" in rerun["output"], _describe(rerun)
  assert rerun["metrics"] == runs["final"]["metrics"]
  assert steps_run(rerun["output"]) == []


def test_resumed_run_ends_bit_for_bit_equal_to_the_uninterrupted_one(runs):
  final = runs["final"]
  assert final["rc"] == 0 and _latest(final) == NUM_STEPS, _describe(final)
  assert _resumed_from(final) == _latest(runs["sigterm"]), _describe(final)
  job_runs.assert_same_state(runs["uninterrupted"], runs["interrupted"], NUM_STEPS)


def test_same_seed_gives_identical_metrics(runs):
  """Every field of metrics.jsonl except the timing ones (train.TIMING_KEYS) is equal, exactly,
  between the uninterrupted run and the run that was started four times."""
  expected = train.read_metrics(runs["uninterrupted"])
  found = train.read_metrics(runs["interrupted"])
  assert [r["step"] for r in expected] == list(range(1, NUM_STEPS + 1)) + [NUM_STEPS]
  assert without_timing(found) == without_timing(expected)
  assert {"train_loss", "grad_norm", "learning_rate"} <= set(expected[0])
  assert {"eval_loss", "eval_top1", "ema_eval_top1"} <= set(expected[-1])


def _differing_variables(want, have):
  """{'params/blocks_1/...': (shape in `want`, shape in `have`)} for every variable path whose
  shape differs between two (model name, width) networks of this module's job (shape inference)."""
  import mobilenet_jax
  from mobilenet_jax.train.checkpointing import shapes_by_path

  def shapes(name, width):
    model = mobilenet_jax.create_model(name, width_multiplier=width, num_classes=10)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                  jax.numpy.zeros((1, 32, 32, 3)), train=False))
    return shapes_by_path(variables)

  a, b = shapes(*want), shapes(*have)
  return {p: (a.get(p), b.get(p)) for p in set(a) | set(b) if a.get(p) != b.get(p)}


def _config(**changes):
  config = train.base_config()
  config.update_from_flattened_dict({**OVERRIDES, **changes})
  return config


@pytest.fixture(scope="module")
def refused(runs):
  """Runs of other models started on the uninterrupted run's workdir; its files before and after."""
  workdir = runs["uninterrupted"]
  before = file_digests(workdir)
  errors = []
  for changes in ({"model.width_multiplier": 0.5}, {"model.name": "mobilenet_v2"}):
    with pytest.raises(ValueError) as error:
      train.train_and_evaluate(_config(**changes), workdir)
    errors.append(str(error.value))
  return {"errors": errors, "before": before, "after": file_digests(workdir)}


def test_checkpoint_of_another_model_in_the_workdir_is_refused_untouched(refused):
  wider, other = refused["errors"]
  # The path each error names is one where the two networks really differ, with both shapes.
  for error, config_model in ((wider, ("mobilenet_v3_small_minimal", 0.5)),
                              (other, ("mobilenet_v2", 0.35))):
    differ = _differing_variables(config_model, ("mobilenet_v3_small_minimal", 0.35))
    differ = {p.split("/", 1)[1]: shapes for p, shapes in differ.items()}  # without the collection
    named = [(p, shapes) for p, shapes in differ.items() if f" {p}: expected shape" in error]
    assert len(named) == 1, error
    path, (expected, found) = named[0]
    assert f"{path}: expected shape {expected}, found {found}" in error, error
  assert "mobilenet_v3_small_minimal" in other
  untouched = lambda snapshot: {k: v for k, v in snapshot.items() if k != "config.json"}
  assert untouched(refused["after"]) == untouched(refused["before"])  # checkpoints, metrics


def test_refused_run_leaves_the_workdir_config_json_untouched(refused):
  assert refused["after"]["config.json"] == refused["before"]["config.json"]


def test_init_from_another_architecture_names_the_first_mismatch(runs, tmp_path):
  from mobilenet_jax import pretrained

  state = read_state(runs["uninterrupted"], NUM_STEPS)
  source = str(tmp_path / "pretrained")
  pretrained.save_pretrained(source, "mobilenet_v3_small_minimal",
                             {"width_multiplier": 0.35, "num_classes": 10},
                             {"params": state["params"], "batch_stats": state["batch_stats"]})
  before = file_digests(source)
  config = _config(**{"model.name": "mobilenet_v2", "init_from": source})
  differ = _differing_variables(("mobilenet_v2", 0.35), ("mobilenet_v3_small_minimal", 0.35))
  path = min(p for p in differ if p.startswith("params/"))   # parameters first, in sorted order
  expected, found = differ[path]
  with pytest.raises(ValueError, match=re.escape(
      f"does not fit this config's model: {path}: expected shape {expected}, found {found}")):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert file_digests(source) == before
  assert committed_steps(str(tmp_path / "run")) == []


def test_resuming_with_a_changed_resolution_is_refused_naming_it(runs):
  """The workdir's run trained at 32 px: its checkpoint would load at 64 px (same shapes) and
  train on images it was not trained on."""
  from mobilenet_jax.train.resumption import ConfigChangedError

  workdir = runs["uninterrupted"]
  before = file_digests(workdir)
  with pytest.raises(ConfigChangedError, match=r"trained with another config \(resolution 32 -> "
                     r"64\).*another --workdir.*config.json"):
    train.train_and_evaluate(_config(resolution=64), workdir)
  assert file_digests(workdir) == before


def test_harmless_config_change_on_a_finished_run_is_allowed_and_adds_no_record(runs):
  workdir = runs["uninterrupted"]
  before = file_digests(workdir)
  result = train.train_and_evaluate(_config(log_every_steps=5), workdir)
  assert result["step"] == NUM_STEPS and "eval_top1" in result
  assert file_digests(workdir) == before

"""What the kill-and-restart tests read from a training job's workdir and output.

Shared by tests/test_reliability.py (one process) and tests/test_multihost.py (two processes).
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import time
from typing import Callable, Sequence

SEED_ENV = "KILL_SEED"  # set it to replay the random kill moments of a failed run

# The job both files kill and restart (each adds its steps, checkpoint interval and eval batch).
# Momentum, a cosine schedule, dropout and an EMA: each one breaks an inexact resume.
JOB_OVERRIDES = {
    "model.name": "mobilenet_v3_small_minimal", "model.width_multiplier": 0.35,
    # XLA's own layers, as on GPUs and TPUs: they trace and compile faster than the XLA:CPU
    # kernels.
    "model.compute": "xla",
    "model.bn_momentum": 0.9, "model.dropout_rate": 0.2, "dataset.name": "digits",
    "resolution": 32, "batch_size": 32, "optimizer.name": "sgd", "optimizer.momentum": 0.9,
    "schedule.name": "cosine", "schedule.learning_rate": 0.05, "schedule.base_batch_size": 0,
    "schedule.warmup_epochs": 0.0, "ema_decay": 0.9, "log_every_steps": 1, "eval_every_steps": 0,
    "keep_checkpoints": 2, "tensorboard": False, "progress_bar": "off",
}


def kill_rng(test_name: str) -> tuple[int, random.Random]:
  """The random generator of the kill moments and its seed (printed: pytest shows it on failure)."""
  seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
  print(f"{test_name}: random kill moments from {SEED_ENV}={seed}")
  return seed, random.Random(seed)


def committed_steps(workdir: str) -> list[int]:
  """Steps Orbax made visible: `checkpoints/<step>` (in-progress saves carry a tmp suffix)."""
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(
      directory) else []


def listing(workdir: str) -> list[str]:
  directory = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def read_state(workdir: str, step: int):
  """The saved TrainState of `step`, on this process's first device (whatever devices and
  processes saved it)."""
  import jax
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata.tree)
  return checkpointer.restore(path, target)


def assert_same_state(expected_workdir: str, found_workdir: str, step: int) -> None:
  """The checkpoints of `step` hold the same TrainState bit for bit (params, momentum, EMA, rng)."""
  import jax
  import numpy as np

  expected, found = read_state(expected_workdir, step), read_state(found_workdir, step)
  paths = jax.tree_util.tree_flatten_with_path(expected)[0]
  assert len(paths) == len(jax.tree.leaves(found)) and len(paths) > 50
  for (path, want), have in zip(paths, jax.tree.leaves(found)):
    np.testing.assert_array_equal(np.asarray(have), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))


def without_timing(records: list[dict]) -> list[dict]:
  from mobilenet_jax import train

  return [{k: v for k, v in r.items() if k not in train.TIMING_KEYS} for r in records]


def steps_run(output: str) -> list[int]:
  """The steps of the "step k/N" progress lines of a run's output (one per step here)."""
  return [int(l.split()[1].split("/")[0]) for l in output.splitlines()
          if l.startswith("step ") and "/" in l.split()[1]]


def resumed_from(output: str):
  """The step a start resumed from: the one before its first progress line (None: no step ran)."""
  steps = steps_run(output)
  return steps[0] - 1 if steps else None


def wait_until(condition: Callable[[], bool], processes: Sequence[subprocess.Popen], what: str,
               timeout_s: float = 300, output: Callable[[], str] = lambda: "") -> None:
  """Polls `condition`; fails if a process ended first or after `timeout_s`."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    ended = [p.returncode for p in processes if p.poll() is not None]
    assert not ended, f"a process ended (rc {ended}) before {what}\n{output()[-3000:]}"
    assert time.monotonic() < deadline, f"no {what} after {timeout_s}s\n{output()[-3000:]}"
    time.sleep(0.05)


def file_digests(directory):
  """{relative path: sha256} of every file below `directory` (sub-folders included)."""
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        digests[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return digests

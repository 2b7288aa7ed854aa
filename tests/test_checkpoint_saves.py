"""Checkpoints of a replicated state: written without compiling anything, read back equal.

Orbax's default on CPU and TPU cuts every replicated array into one slice per replica, each slice by
a program compiled for that array's shape (seconds on every process's first save); the trainer's
`Checkpointer` writes each replicated array whole from its first replica instead, and writes no
sharding file (the restore's target places the arrays; without a target they come back as numpy).
And the noise a failed save leaves behind is dropped, nothing else (a full disk's whole run:
tests/test_reliability.py).
"""

import os
import subprocess
import sys

import fast_compile

TESTS = os.path.dirname(os.path.abspath(__file__))

# Runs on 2 simulated devices (a process of its own: the device count is fixed at JAX's start).
SCRIPT = r"""
import os, sys
import jax, numpy as np
from mobilenet_jax.train.checkpointing import Checkpointer
from mobilenet_jax.train.state import TrainState

compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: compiles.append(event) if "backend_compile" in event else None)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
rng = np.random.default_rng(0)
params = {f"layer_{i}": {"kernel": rng.normal(size=(3, 3, 1, 8 + i)).astype(np.float32),
                         "bias": rng.normal(size=(8 + i,)).astype(np.float32)} for i in range(30)}
state = TrainState(step=np.int32(7), params=params, batch_stats={}, opt_state=(), ema_params=None,
                   ema_batch_stats=None, rng=np.zeros(2, np.uint32))
state = jax.device_put(state, replicated)
assert len(jax.devices()) == 2 and jax.tree.leaves(state)[0].sharding.is_fully_replicated
checkpointer = Checkpointer(sys.argv[1], keep=2)
before = len(compiles)
checkpointer.save(1, state)
checkpointer.wait()
saved_with = len(compiles) - before
restored = checkpointer.restore(1, state)
checkpointer.close()
jax.tree.map(np.testing.assert_array_equal, restored, state)
assert all(x.sharding == replicated for x in jax.tree.leaves(restored))
import orbax.checkpoint as ocp
untargeted = ocp.StandardCheckpointer().restore(checkpointer.directory + "/1/state")
assert isinstance(untargeted["params"]["layer_3"]["kernel"], np.ndarray)
np.testing.assert_array_equal(untargeted["params"]["layer_3"]["kernel"], params["layer_3"]["kernel"])
written = [f for _, _, files in os.walk(checkpointer.directory) for f in files]
print("SHARDING_FILES", sum(f == "_sharding" for f in written))
print("COMPILES_DURING_SAVE", saved_with)
"""


def test_saving_a_replicated_state_compiles_nothing_and_restores_it(tmp_path):
  env = fast_compile.child_env(XLA_FLAGS=fast_compile.xla_flags(
      "--xla_force_host_platform_device_count=2"), JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=os.path.dirname(TESTS))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  # Orbax's default (a slice program per array shape and replica) compiled 62 programs here.
  assert "COMPILES_DURING_SAVE 0" in result.stdout, result.stdout[-3000:]
  # Orbax's default also writes a `_sharding` file per checkpoint (a third of a save's CPU time).
  assert "SHARDING_FILES 0" in result.stdout, result.stdout[-3000:]


def test_a_failed_saves_aftermath_is_quiet_and_nothing_else_is(tmp_path, caplog):
  """The Checkpointer drops exactly the noise Orbax leaves after a failed save (docs/tests.md, Full
  disk): callbacks into its closed event loop and TensorStore's never-retrieved write errors. Other
  unraisable errors and other never-retrieved errors still reach their hook and log; `close` after
  saves that did not fail puts both back as they were."""
  import asyncio
  import logging

  from mobilenet_jax.train.checkpointing import Checkpointer

  seen = []
  previous = sys.unraisablehook
  collect = sys.unraisablehook = lambda unraisable: seen.append(str(unraisable.exc_value))
  # Filters left by an earlier failed save in this process (they stay: see `close`) are set aside.
  asyncio_logger = logging.getLogger("asyncio")
  earlier_filters = asyncio_logger.filters[:]
  asyncio_logger.filters.clear()
  try:
    checkpointer = Checkpointer(str(tmp_path / "run"))
    closed_loop = asyncio.new_event_loop()
    closed_loop.close()

    class CallsIntoTheClosedLoop:   # as TensorStore does when a write ends after the loop closed
      def __del__(self):
        closed_loop.call_soon_threadsafe(print)

    class RaisesTheSameMessage:
      def __del__(self):
        raise RuntimeError("Event loop is closed")

    CallsIntoTheClosedLoop()
    RaisesTheSameMessage()
    assert seen == ["Event loop is closed"]   # only the second one: not from call_soon_threadsafe
    failed_write = ValueError("OUT_OF_RANGE: Error writing ... [os_error_code='28']")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      for error in (failed_write, OSError("connection reset"), ValueError("another error")):
        asyncio_logger.error("Future exception was never retrieved",
                             exc_info=(type(error), error, None))
    assert [r.exc_info[1] for r in caplog.records if r.name == "asyncio"][0] is not failed_write
    assert len([r for r in caplog.records if r.name == "asyncio"]) == 2
    checkpointer.close()
    assert sys.unraisablehook is collect and not asyncio_logger.filters
    CallsIntoTheClosedLoop()
    assert seen == ["Event loop is closed"] * 2   # after close, nothing is dropped
  finally:
    sys.unraisablehook = previous
    asyncio_logger.filters[:] = earlier_filters

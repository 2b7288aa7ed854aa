"""A thin wrapper of Orbax's `CheckpointManager`: periodic, async, keep-N, preemption-aware.

`workdir/checkpoints/<step>/` holds `state` (the whole TrainState) and `meta` (model name and
options, JSON). A step becomes visible to `latest_step()` only once Orbax has committed it, so an
interrupted or failed save never becomes "latest" (Orbax writes a step to a temporary folder and
renames it once complete). All processes call every method (Orbax is multi-process safe, and saves
gated on process 0 hang on pods).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from typing import Any, Callable, Optional

import jax

CHECKPOINT_DIR = "checkpoints"


def shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'classifier/kernel': (1280, 1000), ...} for any tree of arrays or array metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape) for path, leaf in leaves}


def first_mismatch(expected: dict[str, tuple], found: dict[str, tuple]) -> Optional[str]:
  """A sentence naming the first parameter path whose presence or shape differs, or None."""
  for path in sorted(set(expected) | set(found)):
    if path not in found:
      return f"{path}: expected shape {expected[path]}, missing"
    if path not in expected:
      return f"{path}: unexpected parameter of shape {found[path]}"
    if expected[path] != found[path]:
      return f"{path}: expected shape {expected[path]}, found {found[path]}"
  return None


def _is_tensorstore_write_failure(error: Optional[BaseException]) -> bool:
  """TensorStore's ValueError for a failed file write, which carries the OS error
  (`[os_error_code='28']`: ENOSPC; 27: EFBIG; 30: EROFS; 13: EACCES)."""
  return isinstance(error, ValueError) and "os_error_code" in str(error)


def _is_write_failure(error: Exception) -> bool:
  """An OSError, or TensorStore's error for a failed file write."""
  return isinstance(error, OSError) or _is_tensorstore_write_failure(error)


def _quiet_failed_save_aftermath() -> Callable[[], None]:
  """Keeps the aftermath of a failed save (a full disk) from burying its one clear error; returns
  the function that removes the filters again.

  Orbax awaits a save's array writes with `asyncio.gather` on an event loop of its own: the first
  failed write ends the gather and closes the loop while the other writes run on. Each of those
  then calls back into the closed loop ("Event loop is closed", raised into the void), and each of
  their abandoned futures logs "exception was never retrieved" when collected: a traceback per
  array, hundreds, printed around and after the error the Checkpointer raises for that save.
  """
  previous_hook = sys.unraisablehook

  def unraisable_hook(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"
            and any(frame.f_code.co_name == "call_soon_threadsafe"
                    for frame, _ in traceback.walk_tb(unraisable.exc_traceback))):
      previous_hook(unraisable)

  def keep_record(record: logging.LogRecord) -> bool:  # TensorStore's failed writes only
    error = record.exc_info[1] if record.exc_info else None
    return not (_is_tensorstore_write_failure(error)
                and "exception was never retrieved" in record.getMessage())

  asyncio_logger = logging.getLogger("asyncio")
  sys.unraisablehook = unraisable_hook
  asyncio_logger.addFilter(keep_record)

  def remove() -> None:
    if sys.unraisablehook is unraisable_hook:
      sys.unraisablehook = previous_hook
    asyncio_logger.removeFilter(keep_record)

  return remove


def _single_writer_registry(ocp) -> Any:
  """Orbax's standard type handlers, with each replicated jax.Array written whole by the device
  holding its replica 0.

  Orbax's default on CPU and TPU (its GPU default is this one) splits a replicated array into one
  slice per replica, each cut by a program of its own: a new compilation for every array shape on
  the first save of every process (a MobileNetV3-Small training state holds about 400 small
  replicated arrays, so its first save would mostly compile). A MobileNet's state is
  tens of megabytes, which one writer handles.

  Nor is each array's sharding written (Orbax's `_sharding` file): `restore` places the state as its
  target says, and a restore without a target (`ocp.StandardCheckpointer().restore(path)`) gives
  numpy arrays instead of arrays on the devices of the run that saved them. Writing it costs a
  third of a save's CPU time (400 small arrays: 1.1 -> 0.8 CPU-s per save).
  """
  handlers = ocp.type_handlers
  array_handler = handlers.ArrayHandler(use_replica_parallel=False, enable_write_sharding_file=False)
  return handlers.create_type_handler_registry(
      *((ty, handlers.get_type_handler(ty)) for ty in handlers.supported_types()),
      (jax.Array, array_handler))


class Checkpointer:
  """Saves and restores TrainStates under `workdir/checkpoints` (see the module docstring)."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               meta: Optional[dict[str, Any]] = None):
    import orbax.checkpoint as ocp  # lazy: only training needs orbax

    self._ocp = ocp
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    self.meta = meta or {}
    # The step directory is created before `save` returns, not in the background: where that fails
    # (a read-only or full workdir), Orbax's other background writers would otherwise wait for its
    # signal until their 300 s timeout, and the process could not exit before.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
    try:
      self.manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.PyTreeCheckpointHandler(
                             type_handler_registry=_single_writer_registry(ocp)),
                         "meta": ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise OSError(f"cannot create the checkpoint directory {self.directory}: {e}; pass a "
                    "writable --workdir") from e
    self.preempted = False
    self._write_failed = False
    self._unquiet = _quiet_failed_save_aftermath()
    self._in_flight: Optional[int] = None   # the step of the last (async) save started
    self._previous_handler = None
    # Several processes: SIGTERM stays with JAX's preemption notifier (jax.distributed), which
    # agrees on one step with every process; a Python handler here would replace it, and each
    # process would then stop at the step it happened to be in when its own signal came.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.preempted = True  # the loop saves at the end of the current step and exits cleanly

  def reached_preemption(self, step: int) -> bool:
    """SIGTERM received (one process), or the step all processes agreed to stop at after a SIGTERM
    to any of them (JAX's preemption sync point: the fastest one's step + 1). Call every step."""
    if jax.process_count() > 1:
      return self.manager.reached_preemption(step)
    return self.preempted

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def _write_error(self, error: Exception, what: str) -> OSError:
    """The clear error for a failed write (raised once: later waits of the same save stay quiet)."""
    self._write_failed = True
    # Its traceback holds the frames of that save's unfinished writes, kept alive until the
    # interpreter exits, where closing each one prints a traceback (hundreds) after this error.
    error.with_traceback(None)
    # And the writes it never started warn at exit ("coroutine ... was never awaited").
    warnings.filterwarnings("ignore", r"coroutine '.*write_fragment' was never awaited",
                            RuntimeWarning)
    return OSError(f"could not write {what} to {self.directory}: {error} (is the disk full or the "
                   "workdir read-only?); the previous complete checkpoint stays the latest: free "
                   "some space or make the workdir writable, then run the same command again to "
                   "resume from it")

  def save(self, step: int, state: Any) -> None:
    """Starts an (async) save of `state` at `step`; errors say where and why.

    A failure of the previous async save surfaces here and is reported with that save's step
    (Orbax waits for it before starting the next one).
    """
    ocp = self._ocp
    self.wait()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(self.meta)), force=True)
    except (OSError, ValueError) as e:
      if not _is_write_failure(e):
        raise
      raise self._write_error(e, f"the checkpoint of step {step}") from e
    self._in_flight = step

  def wait(self) -> None:
    """Waits for the save in flight; its failure is a clear error naming its step."""
    step, self._in_flight = self._in_flight, None
    try:
      self.manager.wait_until_finished()
    except (OSError, ValueError) as e:
      if not _is_write_failure(e):
        raise
      raise self._write_error(e, "a checkpoint" if step is None else
                              f"the checkpoint of step {step}") from e

  def check_compatible(self, step: int, target: Any) -> None:
    """Raises ValueError naming the first mismatching parameter when the checkpoint of `step` was
    written by another architecture or width than `target` (a TrainState of arrays or shapes)."""
    ocp = self._ocp
    stored = self.manager.item_metadata(step)["state"]
    stored = getattr(stored, "tree", stored)
    meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    mismatch = first_mismatch(shapes_by_path(target.params), shapes_by_path(stored["params"]))
    if mismatch:
      raise ValueError(
          f"the checkpoint {self.directory}/{step} was written by another model "
          f"({meta.get('model')} {meta.get('options')}) than this config's ({self.meta.get('model')} "
          f"{self.meta.get('options')}): {mismatch}. Use another --workdir, or delete that one.")

  def restore(self, step: int, target: Any) -> Any:
    """The state saved at `step`, placed like `target` (a TrainState of arrays or
    `jax.ShapeDtypeStruct`s with shardings)."""
    ocp = self._ocp
    self.check_compatible(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))))["state"]

  def close(self) -> None:
    try:
      if not self._write_failed:
        self.wait()
    finally:
      if self._previous_handler is not None:
        signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None
      if not self._write_failed:  # else the filters stay: that save's writes may end later still
        self._unquiet()
      try:
        self.manager.close()
      except (OSError, ValueError):
        if not self._write_failed:  # else: the failed save, already reported
          raise

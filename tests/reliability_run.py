"""`python -m mobilenet_jax.main` with faults injected from environment variables (reliability tests).

    RELIABILITY_STEP_DELAY=0.2 python tests/reliability_run.py --workdir=... --config.x=...

Same flags, same numerics as the real command; the variables only change *when* things happen:
- RELIABILITY_STEP_DELAY=<seconds>: sleep before handing out each train batch, so that a test can
  send a signal at a random moment of a run that would otherwise finish too fast to hit.
- RELIABILITY_KILL_AT_COMMIT=1: SIGKILL this process when Orbax is about to commit the first
  checkpoint it writes (all data files written to the temporary directory, the atomic rename to
  `checkpoints/<step>` not done yet): the worst moment of a save to be killed.
- RELIABILITY_READY_FILE=<path>: created once the first train step is done (then the job is
  compiled and inside its loop), so a test can start its random delay from there.
- RELIABILITY_FILE_SIZE_LIMIT=<bytes>: a full disk: writes past this size fail (EFBIG, like
  ENOSPC on a full disk; `RLIMIT_FSIZE` binds root too and needs no mount).
- RELIABILITY_NAN_BATCH=<n>: the n-th train batch of this start (1-based) has NaN images, so its
  loss and gradients are NaN.
- RELIABILITY_SHARES_DIR=<dir>: each time the pipeline reads a host's share of a split, write the
  `sklearn_index` of every example of that share to `<dir>/<split>.<process>-of-<count>.json`,
  with the `jax.process_index()` of the process that read it (multi-host tests).
- Always: `TRAIN_FROM <step> PROCESS <i>` is printed when process i starts its train input at
  `step` (the step it resumed from; 0: a fresh start).
- RELIABILITY_EMULATE_PROCESSES=<n>: one process feeds the global batch that n hosts would feed:
  each train batch is host 0's local batch, then host 1's, ... (the order of the global array
  `jax.make_array_from_process_local_data` builds from the hosts' batches).

Multi-host runs start it as a module (`python -m reliability_run`, tests/ on PYTHONPATH) through
`mobilenet_jax.launch`; it accepts every flag of `mobilenet_jax.main`.
"""

import os
import resource
import signal
import sys
import time


def _emulated_hosts(create, num_hosts: int):
  """`create_train_iterator` of one process that yields the global batch of `num_hosts` hosts."""
  import numpy as np

  def iterator(config, *, local_batch_size, **kwargs):
    hosts = [create(config, local_batch_size=local_batch_size // num_hosts, process_index=i,
                    process_count=num_hosts, **kwargs) for i in range(num_hosts)]
    for batches in zip(*hosts):
      yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  return iterator


def _wrap_batches(delay: float, ready_file: str, nan_batch: int, emulate: int) -> None:
  import jax
  import numpy as np

  from mobilenet_jax import data

  create = data.create_train_iterator
  if emulate:
    create = _emulated_hosts(create, emulate)

  def iterator(*args, **kwargs):
    print(f"TRAIN_FROM {kwargs.get('start_step', 0)} PROCESS {jax.process_index()}", flush=True)
    for n, batch in enumerate(create(*args, **kwargs), 1):
      # The loop asks for batch 2 after step 1 ran (and compiled); process 0 tells the test.
      if n == 2 and ready_file and jax.process_index() == 0:
        open(ready_file, "w").close()
      if n == nan_batch:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      time.sleep(delay)
      yield batch

  data.create_train_iterator = iterator


def _record_shares(directory: str) -> None:
  import json

  import jax
  import tensorflow_datasets as tfds

  from mobilenet_jax.data import sources

  read = sources.TfdsSource.read

  def recording_read(self, split, process_index, process_count):
    share = self.builder.as_dataset(split=self._host_split(split, process_index, process_count))
    ids = [int(ex["sklearn_index"]) for ex in tfds.as_numpy(share)]
    name = os.path.join(directory, f"{split}.{process_index}-of-{process_count}.json")
    with open(name, "w") as f:
      json.dump({"ids": ids, "jax_process_index": jax.process_index()}, f)
    return read(self, split, process_index, process_count)

  sources.TfdsSource.read = recording_read


def _kill_at_first_commit() -> None:
  from orbax.checkpoint._src.path import atomicity

  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    finalize = cls.finalize

    async def killing_finalize(self, *args, _finalize=finalize, **kwargs):
      final = self.get_final()
      if final.parent.name == "checkpoints":  # the step directory (not one of its items)
        sys.stdout.write(f"KILLED_BEFORE_COMMIT {final.name}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
      return await _finalize(self, *args, **kwargs)

    cls.finalize = killing_finalize


def main() -> None:
  limit = int(os.environ.get("RELIABILITY_FILE_SIZE_LIMIT", "0"))
  if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the first refused write kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
  delay = float(os.environ.get("RELIABILITY_STEP_DELAY", "0"))
  ready_file = os.environ.get("RELIABILITY_READY_FILE", "")
  nan_batch = int(os.environ.get("RELIABILITY_NAN_BATCH", "0"))
  emulate = int(os.environ.get("RELIABILITY_EMULATE_PROCESSES", "0"))
  _wrap_batches(delay, ready_file, nan_batch, emulate)
  if os.environ.get("RELIABILITY_SHARES_DIR"):
    _record_shares(os.environ["RELIABILITY_SHARES_DIR"])
  if os.environ.get("RELIABILITY_KILL_AT_COMMIT"):
    _kill_at_first_commit()
  from absl import app

  from mobilenet_jax import main as cli

  app.run(cli.main)


if __name__ == "__main__":
  main()

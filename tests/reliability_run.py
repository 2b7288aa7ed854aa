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
"""

import os
import resource
import signal
import sys
import time


def _wrap_batches(delay: float, ready_file: str, nan_batch: int) -> None:
  import numpy as np

  from mobilenet_jax import data

  create = data.create_train_iterator

  def iterator(*args, **kwargs):
    for n, batch in enumerate(create(*args, **kwargs), 1):
      if n == 2 and ready_file:  # the loop asks for batch 2 after step 1 ran (and compiled)
        open(ready_file, "w").close()
      if n == nan_batch:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      time.sleep(delay)
      yield batch

  data.create_train_iterator = iterator


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
  if delay or ready_file or nan_batch:
    _wrap_batches(delay, ready_file, nan_batch)
  if os.environ.get("RELIABILITY_KILL_AT_COMMIT"):
    _kill_at_first_commit()
  from absl import app

  from mobilenet_jax import main as cli

  app.run(cli.main)


if __name__ == "__main__":
  main()

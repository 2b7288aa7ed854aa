"""The training job on the command line.

    python -m mobilenet_jax.main --workdir=runs/default            # configs/default.py (digits)
    python -m mobilenet_jax.main --config=mobilenet_v3_large:width=0.75,resolution=192 \
        --workdir=runs/v3l --config.batch_size=512

`--config` takes a config file's path or a shipped recipe's name (`configs/` of the repository,
installed as `mobilenet_jax.configs`: found from any directory; `mobilenet_jax.config_files`).

Kept short on purpose (flax examples/imagenet style): everything lives in `mobilenet_jax.train`,
importable from notebooks without flags. Running the same command again resumes the run.

Multi-host: `--config.distributed=True` finds the other processes from the environment (Cloud TPU,
Slurm, Open MPI); elsewhere pass `--coordinator_address`, `--num_processes` and `--process_id` to
every process (`python -m mobilenet_jax.launch` does so for N processes on one machine). See
docs/multihost.md.
"""

from __future__ import annotations

import os
import sys

from mobilenet_jax import extras

if __name__ == "__main__":
  extras.require("python -m mobilenet_jax.main", "train")

from absl import app, flags, logging  # noqa: E402

from mobilenet_jax.config_files import define_config_flag  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and TensorBoard.")
try:  # ml_collections applies the --config.KEY=VALUE overrides of sys.argv here
  define_config_flag("config", default="default")
except AttributeError:  # an unknown KEY; ml_collections names only its last part
  from mobilenet_jax.train.config import unknown_override

  if unknown_override(sys.argv) is None:
    raise
  sys.exit(f"FATAL Flags parsing error: {unknown_override(sys.argv)}")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0's "
                    "coordinator (jax.distributed.initialize); None: found from the environment.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes of the job.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
flags.DEFINE_integer("heartbeat_timeout_s", 100, "Multi-host: a process silent this long is "
                     "dead and the others stop with an error (JAX's coordination service).",
                     lower_bound=1)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  peers = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if any(v is not None for v in peers) and None in peers:
    raise app.UsageError("pass --coordinator_address, --num_processes and --process_id together, "
                         "or none of them (then --config.distributed=True finds them on Cloud "
                         "TPU, Slurm and Open MPI)")
  if not FLAGS["verbosity"].present:  # Orbax logs every save at INFO; -v 0 shows them again
    logging.set_verbosity(logging.WARNING)
  # TensorFlow (input pipeline only) must not take the accelerators away from JAX.
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
  except ImportError:
    pass
  from mobilenet_jax.train import sharding, train_and_evaluate  # after flag parsing: fast --help
  from mobilenet_jax.train.resumption import ConfigChangedError
  from mobilenet_jax.train.workdir_lock import WorkdirBusyError

  if any(v is not None for v in peers) or sharding.distributed_requested(FLAGS.config.distributed):
    sharding.initialize_distributed(*peers, heartbeat_timeout_s=FLAGS.heartbeat_timeout_s)
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (WorkdirBusyError, ConfigChangedError) as e:  # the workdir holds another run: one line
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)

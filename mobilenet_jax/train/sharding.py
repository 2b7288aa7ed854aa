"""Data parallelism with `jax.jit` over a 1-D mesh of every device (no pmap, no replicate).

The state is replicated (`P()`), the batch is sharded on the mesh axis `data` (`P('data')`), and each
host contributes its own share of the global batch through `jax.make_array_from_process_local_data`
(JAX docs, "Distributed data loading").
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Set this to 1 (or `config.distributed=True`) to run `jax.distributed.initialize()` on multi-host
# systems (TPU pods, Slurm, ...). It is never called otherwise: on a single CPU host it would fail.
DISTRIBUTED_ENV = "MOBILENET_JAX_DISTRIBUTED"
# JAX's default: a process silent for this long is dead, and every other process stops.
HEARTBEAT_TIMEOUT_S = 100
# How long a process waits for the others at a barrier (XLA's CPU collectives wait as long).
BARRIER_TIMEOUT_S = 30 * 60
_barrier_ids = itertools.count()  # every process passes the same barriers in the same order


def distributed_requested(config_flag: bool = False) -> bool:
  return bool(config_flag) or os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None,
                           heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
  """Joins this process to the job: `jax.distributed.initialize` (coordinator, collectives).

  Values left None are found from the environment (Cloud TPU, Slurm, Open MPI); processes started
  by hand (`mobilenet_jax.launch`) pass all three. When a process stops sending heartbeats (it died)
  for `heartbeat_timeout_s`, JAX's coordination service stops every other one ("another task died")
  instead of leaving it waiting in a collective. Must run before any JAX computation.
  """
  explicit = None not in (coordinator_address, num_processes, process_id)
  jax.distributed.initialize(
      coordinator_address, num_processes, process_id,
      cluster_detection_method="deactivate" if explicit else None,
      heartbeat_timeout_seconds=heartbeat_timeout_s,
      coordinator_bind_address=loopback_bind_address(coordinator_address))


def loopback_bind_address(coordinator_address: str | None) -> str | None:
  """The coordinator's own address when it is a loopback one (127.0.0.1:PORT, localhost, [::1]),
  else None (JAX's default: every interface, which the other hosts of a pod need).

  Process 0's coordination service is unauthenticated: a job whose processes all run on this
  machine must not be reachable from the network (JAX binds `[::]:PORT` unless told otherwise).
  """
  if not coordinator_address or ":" not in coordinator_address:
    return None
  host = coordinator_address.rsplit(":", 1)[0].strip("[]")
  if host == "localhost":
    return coordinator_address.replace("localhost", "127.0.0.1", 1)
  try:
    return coordinator_address if ipaddress.ip_address(host).is_loopback else None
  except ValueError:  # a host name
    return None


def maybe_initialize_distributed(config_flag: bool = False) -> None:
  """`initialize_distributed()` from the environment when asked to (flag or env var) and not done
  yet (JAX docs, multi_process.md): all arguments are found on Cloud TPU, Slurm and Open MPI."""
  if distributed_requested(config_flag) and not jax.distributed.is_initialized():
    initialize_distributed()


def wait_for_all_processes(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
  """A barrier of the coordination service (no device collective) for every process.

  JAX's CPU collectives (gloo) connect the processes at their first collective and give up after
  30 s, so the processes first meet here, however long one of them took to compile or start.
  """
  if jax.process_count() == 1:
    return
  from orbax.checkpoint import multihost  # the maintained wrapper of JAX's distributed client

  multihost.get_barrier_sync_fn()(key=f"mobilenet_jax/{name}/{next(_barrier_ids)}",
                                  timeout_ms=timeout_s * 1000)


def same_on_every_process(value: int, what: str) -> int:
  """`value` (an int each process computed on its own) after checking that all processes agree."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  values = np.asarray(multihost_utils.process_allgather(np.int64(value))).tolist()
  if len(set(values)) > 1:
    raise RuntimeError(f"the processes disagree on {what}: {values} (process 0, 1, ...). Every "
                       "host must see the same workdir: use storage all hosts share (a bucket "
                       "or a network file system), not a local disk.")
  return value


def create_mesh() -> Mesh:
  """A 1-D mesh over all devices of all hosts, axis `data` (Auto axis type: XLA picks collectives)."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Stitches each host's local batch into one global array sharded on `data`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      batch)


def to_host(tree: Any) -> Any:
  """Replicated device values -> numpy, reading this host's own copy (no global gather)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_shards[0].data
    return np.asarray(jax.device_get(x))
  return jax.tree.map(fetch, tree)

"""Data parallelism with `jax.jit` over a 1-D mesh of every device (no pmap, no replicate).

The state is replicated (`P()`), the batch is sharded on the mesh axis `data` (`P('data')`), and each
host contributes its own share of the global batch through `jax.make_array_from_process_local_data`
(JAX docs, "Distributed data loading"; ANCHORS-training.md section 4).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
# Set this to 1 (or `config.distributed=True`) to run `jax.distributed.initialize()` on multi-host
# systems (TPU pods, Slurm, ...). It is never called otherwise: on a single CPU host it would fail.
DISTRIBUTED_ENV = "MOBILENET_JAX_DISTRIBUTED"


def distributed_requested(config_flag: bool = False) -> bool:
  return bool(config_flag) or os.environ.get(DISTRIBUTED_ENV, "").lower() in ("1", "true", "yes")


def maybe_initialize_distributed(config_flag: bool = False) -> None:
  """`jax.distributed.initialize()` when asked to (flag or env var) and not done yet.

  Must run before any JAX computation (JAX docs, multi_process.md); all arguments are found from the
  environment on Cloud TPU, Slurm and Open MPI.
  """
  if distributed_requested(config_flag) and not jax.distributed.is_initialized():
    jax.distributed.initialize()


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

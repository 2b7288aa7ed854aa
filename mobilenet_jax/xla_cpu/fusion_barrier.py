"""A fusion boundary for XLA:CPU: compute a tensor once, into its own buffer, before its consumers.

XLA fuses a cheap elementwise producer (the k*k multiply-adds of a depthwise or stem convolution,
a BatchNorm gradient) into *each* of its consumers, so a tensor read by several passes is recomputed
in every one of them. `lax.optimization_barrier` does not stop that on CPU (XLA removes it before
fusion); a conditional does, because XLA never fuses across one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def materialized(tree: Any, witness: Array) -> Any:
  """`tree` unchanged, but computed into buffers of its own; on a single CPU device only.

  The conditional's predicate reads `witness` (any scalar known only at run time, e.g. a weight) so
  XLA cannot resolve it while compiling; both branches return the operands exactly (negating twice
  is exact, NaN included), so the value of the predicate does not matter. Elsewhere it is a no-op:
  on GPU/TPU a conditional costs a device-host synchronisation and fusion does not duplicate this
  way; and with several devices, XLA's SPMD partitioner gave wrong gradients when the fused
  BatchNorm's batch-sharded activations passed through such a conditional (8 simulated CPU devices;
  tests/test_train.py compares a job on 8 devices with one on 1).
  """
  if jax.default_backend() != "cpu" or jax.device_count() != 1:
    return tree
  identity = lambda operands: operands
  # JAX drops a conditional whose two branches are the same function; these differ only in form.
  negated_twice = lambda operands: jax.tree.map(lambda t: -(-t), operands)
  return jax.lax.cond(jnp.isfinite(witness), identity, negated_twice, tree)

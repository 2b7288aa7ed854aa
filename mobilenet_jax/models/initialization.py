"""`init_variables`: a network's initial variables from one quickly compiled program.

An eager `model.init` runs each of its several hundred operations on its own (each compiled
separately), and even `jax.jit(model.init)` spends seconds on a CPU compiling one random draw per
parameter with XLA's full optimisation pipeline, for a program that runs once. Compiled with XLA's
backend optimisations off, the same program gives the same values, and compiles several times
faster (`python experiments/startup_costs.py --studies init`).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

# XLA's cheap settings (what `jax_disable_most_optimizations` sets) for programs that run once;
# the values are unchanged.
RUN_ONCE_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0,
                             "xla_llvm_disable_expensive_passes": True}


def init_variables(model: nn.Module, resolution: int = 224, seed: int = 0, *,
                   key: Optional[jax.Array] = None, channels: int = 3) -> dict[str, Any]:
  """`model.init(jax.random.key(seed), images, train=False)` for images of `resolution`, the same
  values, as one program compiled for speed of compilation. Returns `{'params', 'batch_stats'}`
  (and any other collection the model creates).

  `key` replaces `seed` (any JAX key, e.g. one split from a larger program's).
  """
  key = jax.random.key(seed) if key is None else key
  shape = (1, resolution, resolution, channels)
  init = jax.jit(lambda key: model.init(key, jnp.zeros(shape, jnp.float32), train=False))
  return init.lower(key).compile(RUN_ONCE_COMPILER_OPTIONS)(key)

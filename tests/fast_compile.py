"""How the tests make XLA compile fast on CPU; used by conftest.py and by the tests' child processes.

The tests run tiny networks, where compiling costs far more than running: most of XLA's optimisation
passes are skipped (`JAX_DISABLE_MOST_OPTIMIZATIONS`, as flax's examples do in their tests) and
XLA:CPU's older loop emitters replace its MLIR fusion emitters, which compile an unoptimised
training step sooner (`python experiments/startup_costs.py --studies fusion_emitters` measures it).
Results are the same operations with the same float32 semantics; the rounding may differ in the
last bits.
"""

from __future__ import annotations

import os

XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)


def xla_flags(*extra: str) -> str:
  """XLA_FLAGS with the tests' flags after `extra` (e.g. a simulated device count)."""
  return " ".join(f for f in (*extra, *XLA_FLAGS) if f)


def child_env(**extra: str) -> dict[str, str]:
  """A child process's environment: this one's, without its XLA_FLAGS (a simulated device count
  is the child's own choice), with the fast-compile settings and `extra`.

  `TF_USE_LEGACY_KERAS=1`: `import tensorflow` loads all of Keras 3 (for `tf.keras`)
  unless told to use Keras 2 (`tf_keras`), which is not installed, so it loads none; the training
  job uses tf.data only.
  """
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(XLA_FLAGS=xla_flags(), JAX_DISABLE_MOST_OPTIMIZATIONS="1", TF_CPP_MIN_LOG_LEVEL="2",
             TF_USE_LEGACY_KERAS="1")
  env.update(extra)
  return env

"""Test-session setup shared by every test module."""

import os

# Keras references run on the JAX backend (never TensorFlow's).
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Importing TensorFlow before torchvision crashes the process (two copies of the same native
# libraries); torch/torchvision first is safe. Load them first when they are installed.
try:  # pragma: no cover - depends on the test environment
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

# Tests run tiny inputs, where XLA's compile time dominates: skip most of its optimisation passes
# (as flax's examples do in their tests). Numerics are unchanged up to float rounding.
import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

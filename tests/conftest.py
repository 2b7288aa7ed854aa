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

# Tests run tiny inputs, where XLA's compile time dominates (fast_compile.py says how it is cut).
# Numerics are unchanged up to float rounding. XLA_FLAGS is read when JAX starts its CPU backend.
import fast_compile  # noqa: E402

os.environ["XLA_FLAGS"] = fast_compile.xla_flags(os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

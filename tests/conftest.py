"""Test-session setup shared by every test module."""

import atexit
import os
import shutil
import tempfile

# Keras references run on the JAX backend (never TensorFlow's).
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The jobs' compilation cache (mobilenet_jax.compilation_cache, under $XDG_CACHE_HOME) goes to a
# folder of this session, shared by its worker processes and children, not the user's ~/.cache.
if not os.environ.get("MOBILENET_JAX_TEST_CACHE"):  # the first process of the session makes it
  os.environ["MOBILENET_JAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="mobilenet_jax_tests_")
  atexit.register(shutil.rmtree, os.environ["MOBILENET_JAX_TEST_CACHE"], ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = os.environ["MOBILENET_JAX_TEST_CACHE"]

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

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
# In the environment, so that the tests' child processes (jobs, CLIs, the notebook's kernel) and
# xdist's workers compile the same way.
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


# Datasets the tests prepare (the embedded digits, for every training test) go to a directory of
# this run, never to the user's ~/tensorflow_datasets or $TFDS_DATA_DIR: results must not depend on
# what an earlier run or another version left there. The controller makes it before the xdist
# workers and the tests' subprocesses start (they inherit the environment) and removes it at the end.
_TEST_DATA_DIR = "MOBILENET_JAX_TESTS_TFDS_DIR"


def pytest_configure(config):
  if os.environ.get(_TEST_DATA_DIR):  # an xdist worker: the controller's directory
    return
  config.tests_tfds_dir = tempfile.mkdtemp(prefix="mobilenet_jax_tests_tfds_")
  os.environ["TFDS_DATA_DIR"] = os.environ[_TEST_DATA_DIR] = config.tests_tfds_dir


def pytest_unconfigure(config):
  directory = getattr(config, "tests_tfds_dir", None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)
    os.environ.pop(_TEST_DATA_DIR, None)


# The longest files start first: xdist (`--dist loadfile --no-loadscope-reorder`, pyproject.toml)
# hands out files in collection order, and a long file started last would run alone at the end
# while the other worker idles. Wall seconds of a whole run on the 2-core machine, longest first
# (`python -m pytest -p cpu_costs`); the other files follow in their usual order.
LONGEST_FIRST = ("test_multihost.py", "test_ablation_notebook.py", "test_reliability.py",
                 "test_train.py", "test_models.py", "test_export.py", "test_real_weights.py",
                 "test_convert.py", "test_param_counts.py", "test_export_real.py")


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))

"""The optional dependencies (pyproject.toml's extras) a command needs, and the line installing them.

A command checks its extras before importing them, so a missing package is one line that names the
`pip install` to run (as pip's own errors do), not a traceback ending in `No module named ...`.
"""

from __future__ import annotations

import importlib.util
import sys

# extra -> {distribution, as pyproject.toml lists it: the module it provides}
EXTRAS = {
    "train": {"optax": "optax", "chex": "chex", "orbax-checkpoint": "orbax.checkpoint",
              "ml-collections": "ml_collections", "absl-py": "absl", "tensorflow-cpu": "tensorflow",
              "tensorflow-datasets": "tensorflow_datasets",
              "importlib_resources": "importlib_resources", "scikit-learn": "sklearn",
              "safetensors": "safetensors", "tflite": "tflite", "tensorboard": "tensorboard"},
    "litert": {"ai-edge-litert": "ai_edge_litert"},
    "export": {"tensorflow-cpu": "tensorflow", "ai-edge-litert": "ai_edge_litert",
               "jax2onnx": "jax2onnx", "onnx": "onnx", "onnx-ir": "onnx_ir",
               "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"},
}


def install_command(*extras: str) -> str:
  """The README's install line for these extras, run in the repository."""
  return f'pip install -e ".[{",".join(extras)}]"'


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:   # a missing parent package of a dotted name
    return False


def missing(*extras: str) -> list[str]:
  """The distributions of these extras whose module cannot be imported."""
  wanted = {dist: module for extra in extras for dist, module in EXTRAS[extra].items()}
  return [dist for dist, module in wanted.items() if not _importable(module)]


def require(command: str, *extras: str) -> None:
  """Exits with one line naming what is missing and the install command, unless all is there."""
  absent = missing(*extras)
  if absent:
    names = " and ".join(f"{e!r}" for e in extras)
    raise SystemExit(f"{command} needs the {names} extra{'s' if len(extras) > 1 else ''} "
                     f"(missing: {', '.join(absent)}): in the mobilenet_jax repository run "
                     f"{install_command(*extras)}")


def require_when_run(package: str, *extras: str) -> None:
  """`require` for `python -m PACKAGE`, called first in the package's `__init__`: Python imports the
  package before its `__main__`, with `sys.argv[0] == "-m"` while it does (the `-m` option's documented
  behaviour), so the check runs before the package imports its extras; an import from code is untouched."""
  if sys.argv[:1] == ["-m"]:
    require(f"python -m {package}", *extras)

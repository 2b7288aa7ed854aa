"""Reading downloaded weight files: PyTorch state dicts, Keras applications weights, and any
source's file as a `Conversion` (`convert_source`)."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from typing import Any, Optional

SOURCES = ("keras", "torchvision", "timm", "tflite")
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
KERAS_SUFFIXES = (".h5", ".weights.h5", ".keras")
# Our source names -> (keras.applications constructor, minimalistic); "mobilenet" is Keras' V1.
KERAS_APPLICATIONS = {
    "mobilenet": ("MobileNet", None),
    "mobilenet_v1": ("MobileNet", None),
    "mobilenet_v2": ("MobileNetV2", None),
    "mobilenet_v3_large": ("MobileNetV3Large", False),
    "mobilenet_v3_small": ("MobileNetV3Small", False),
    "mobilenet_v3_large_minimal": ("MobileNetV3Large", True),
    "mobilenet_v3_small_minimal": ("MobileNetV3Small", True),
}


def _require_file(path: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"weights file {path} does not exist")


def _float_weights(state: dict[str, Any], path: str) -> dict[str, Any]:
  """`state`, refused when a weight is not a float tensor (only BatchNorm's step counter
  `num_batches_tracked` is an integer in a MobileNet's state dict)."""
  for name, value in state.items():
    dtype = str(getattr(value, "dtype", type(value).__name__))
    if not name.endswith("num_batches_tracked") and "float" not in dtype:
      raise ValueError(f"{path}: {name} is {dtype}, not a float tensor; the file is not a float "
                       "MobileNet state dict")
  return state


def load_state_dict(path: str) -> dict[str, Any]:
  """A PyTorch state dict from `.safetensors` (read with numpy, no torch needed: timm's hub format)
  or `.pth`/`.pt`/`.bin` (torch.load with weights_only=True; a checkpoint dict holding a
  'state_dict' entry, as timm's training script writes, gives that entry)."""
  _require_file(path)
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
      return _float_weights(dict(load_file(path)), path)
    except SafetensorError as e:
      raise ValueError(f"{path} is not a readable .safetensors file ({e}); it may be truncated: "
                       "download it again") from None
  if path.endswith(TORCH_SUFFIXES):
    import pickle

    import torch
    try:
      loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
      # torch's own message suggests weights_only=False, which would run the file's code.
      raise ValueError(f"{path} is not a plain state dict (it holds Python objects other than "
                       "tensors) and cannot be loaded safely; save model.state_dict() instead, "
                       "or use its .safetensors file") from None
    except (RuntimeError, EOFError) as e:
      raise ValueError(f"{path} is not a readable PyTorch file ({str(e).splitlines()[0]}); it "
                       "may be truncated: download it again") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
      loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
      raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return _float_weights(dict(loaded), path)
  raise ValueError(f"{path}: unknown weights format; expected .safetensors or one of "
                   f"{TORCH_SUFFIXES}")


def load_keras_application(name: str, path: str, alpha: float = 1.0, include_top: bool = True,
                           classes: int = 1000, minimalistic: bool = False) -> Any:
  """Builds `keras.applications.<name>` (weights=None, Keras on the JAX backend unless another is
  configured) with these options and loads `path` (.h5, .weights.h5 or .keras) into it."""
  if name not in KERAS_APPLICATIONS:
    raise ValueError(f"unknown Keras application {name!r}; choose one of "
                     f"{', '.join(KERAS_APPLICATIONS)}")
  _require_file(path)
  if not path.endswith(KERAS_SUFFIXES):
    raise ValueError(f"{path}: Keras weights are {', '.join(KERAS_SUFFIXES)} files")
  os.environ.setdefault("KERAS_BACKEND", "jax")
  import keras

  constructor, minimal = KERAS_APPLICATIONS[name]
  options: dict[str, Any] = dict(weights=None, alpha=alpha, include_top=include_top,
                                 classes=classes)
  if minimal is not None:
    options["minimalistic"] = minimal or minimalistic
  elif minimalistic:
    raise ValueError(f"--minimalistic applies to MobileNetV3 only, not {name}")
  model = getattr(keras.applications, constructor)(**options)
  try:
    with warnings.catch_warnings():   # one warning per layer that does not fit: the error says it
      warnings.simplefilter("ignore")
      model.load_weights(path)
  except (OSError, zipfile.BadZipFile) as e:   # h5py, or a .keras zip: truncated or damaged
    raise ValueError(f"{path} is not a readable Keras weights file ({str(e).splitlines()[0]}); it "
                     "may be truncated: download it again") from None
  except ValueError as e:
    raise ValueError(f"{path} does not fit keras.applications.{constructor}({options}): "
                     f"{_first_mismatch(str(e))}. Check --alpha, --minimalistic, --include_top and "
                     "--classes against the file (Keras names them, e.g. ..._0.75_..._no_top...)"
                     ) from None
  return model



def convert_source(source: str, path: "str | os.PathLike[str]", *, drop_background: bool = True, alpha: float = 1.0,
                   minimalistic: bool = False, include_top: Optional[bool] = None,
                   classes: int = 1000):
  """The `Conversion` of the weight file `path` read as `source`: "keras:NAME", "torchvision:NAME",
  "timm:NAME" or "tflite". `alpha`, `minimalistic`, `include_top` (None: false when the file name
  contains 'no_top') and `classes` build the Keras application to load a Keras file into."""
  path = os.fspath(path)
  kind, _, name = source.partition(":")
  if kind not in SOURCES or bool(name) != (kind != "tflite"):
    raise ValueError(f"--source must be one of {', '.join(s + ':NAME' for s in SOURCES[:-1])} or "
                     f"tflite, got {source!r}")
  if kind == "tflite":
    from mobilenet_jax.convert.tflite_source import convert_tflite
    _require_file(path)
    return convert_tflite(path, drop_background)
  if kind == "keras":
    from mobilenet_jax.convert.keras_source import convert_keras
    if include_top is None:
      include_top = "no_top" not in os.path.basename(path)
    keras_model = load_keras_application(name, path, alpha, include_top, classes, minimalistic)
    return convert_keras(keras_model, drop_background)
  from mobilenet_jax.convert.torch_source import TORCHVISION_ARCHS, convert_torch
  if kind == "torchvision" and name not in TORCHVISION_ARCHS:
    raise ValueError(f"unknown torchvision arch {name!r}; choose one of {TORCHVISION_ARCHS}")
  if kind == "timm" and name in TORCHVISION_ARCHS:
    raise ValueError(f"{name} is a torchvision name; use --source=torchvision:{name}")
  return convert_torch(load_state_dict(path), name, drop_background)

def _first_mismatch(message: str) -> str:
  """Keras' load error in one line: how many layers failed, and the first shape that differs."""
  count = re.search(r"A total of (\d+) objects could not be loaded", message)
  shapes = re.search(r"variable\.shape=(\([\d, ]*\)), Received: value\.shape=(\([\d, ]*\))"
                     r".*?path=([\w/]+)", message, re.S)
  if not shapes:
    return message.splitlines()[0] if message else "Keras could not load it"
  layers = f"{count.group(1)} layers do not fit, e.g. " if count else ""
  return f"{layers}{shapes.group(3)} is {shapes.group(1)} here, {shapes.group(2)} in the file"


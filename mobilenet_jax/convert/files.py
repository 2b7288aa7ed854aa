"""Reading downloaded weight files: PyTorch state dicts and Keras applications weights."""

from __future__ import annotations

import os
from typing import Any

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


def load_state_dict(path: str) -> dict[str, Any]:
  """A PyTorch state dict from `.safetensors` (read with numpy, no torch needed: timm's hub format)
  or `.pth`/`.pt`/`.bin` (torch.load with weights_only=True; a checkpoint dict holding a
  'state_dict' entry, as timm's training script writes, gives that entry)."""
  _require_file(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file
    return dict(load_file(path))
  if path.endswith(TORCH_SUFFIXES):
    import torch
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
      loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
      raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)
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
    model.load_weights(path)
  except ValueError as e:
    raise ValueError(f"{path} does not fit keras.applications.{constructor}({options}): {e}\n"
                     "Check --alpha, --minimalistic, --include_top and --classes against the "
                     "file (Keras names them, e.g. ..._0.75_..._no_top...)") from e
  return model

